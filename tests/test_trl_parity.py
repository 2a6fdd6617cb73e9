"""lmforge.align's losses and gradients == TRL's (trl 1.16) on a tiny random Llama and a 4-pair batch.

TRL's side runs through its trainers on the HF model (`DPOTrainer.compute_loss`, the experimental
`CPOTrainer` / `ORPOTrainer.get_batch_loss_metrics`, `KTOTrainer.compute_loss`); ours through our
loader's copy of the same weights (`load_hf_checkpoint`), `sequence_logps` and `lmforge.align.losses`.
"""

from __future__ import annotations

import copy
import random
import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from lmforge.align import losses as L
from lmforge.align.reference import sequence_logps
from lmforge.data.pairs import EncodedRecord, collate_pairs, collate_rows, collate_unpaired

VOCAB, BETA, TOL = 64, 0.3, 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(HF LlamaForCausalLM, our GPT of the same weights, an HF reference model that differs from it and
    our copy of that, a word-level HF tokenizer)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tm

    from lmforge.convert.hf import load_hf_checkpoint
    from lmforge.model import GPT

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2,
                                   pad_token_id=0, tie_word_embeddings=False)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf_ref = copy.deepcopy(hf).eval()
    with torch.no_grad():  # a reference that differs from the policy: every log-ratio term matters
        for p in hf_ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    mine = []
    for m in (hf, hf_ref):
        path = tmp_path_factory.mktemp("hf")
        m.save_pretrained(path)
        config, sd = load_hf_checkpoint(path)
        mine.append(GPT.from_state_dict(config, sd).float())
    ours, ours_ref = mine[0], mine[1].eval()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tk = Tokenizer(tm.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                               eos_token="</s>")
    return hf, ours, hf_ref, ours_ref, tok


def _pairs(seed: int = 0, n: int = 4) -> list[EncodedRecord]:
    r = random.Random(seed)

    def ids(k: int) -> list[int]:
        return [r.randrange(3, VOCAB) for _ in range(k)]

    return [EncodedRecord(ids(r.randint(2, 6)), [ids(r.randint(1, 5)), ids(r.randint(1, 5))]) for _ in range(n)]


def _args(cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, per_device_train_batch_size=4, **kw)


def _dataset(text: bool = True, unpaired: bool = False):
    if unpaired:
        rows = [{"prompt": "w3 w4", "completion": "w5", "label": bool(i % 2)} for i in range(4)]
    else:
        rows = [{"prompt": "w3 w4", "chosen": "w5", "rejected": "w6"} for _ in range(4)]
    return datasets.Dataset.from_list(rows)


HF_NAMES = {"model.": "", "input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}


def _grads(model: torch.nn.Module, hf: bool) -> dict[str, torch.Tensor]:
    def ours(name: str) -> str:
        for a, b in HF_NAMES.items():
            name = name.replace(a, b) if hf else name
        return name

    out = {ours(n): p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _assert_same(ours_loss, ours_model, theirs_loss, theirs_model):
    torch.testing.assert_close(ours_loss.detach(), theirs_loss.detach().float(), rtol=0, atol=TOL)
    ours_loss.backward()
    theirs_loss.backward()
    g_ours, g_theirs = _grads(ours_model, False), _grads(theirs_model, True)
    assert set(g_ours) == set(g_theirs) and len(g_ours) > 10
    for k in g_ours:
        torch.testing.assert_close(g_ours[k], g_theirs[k], rtol=1e-4, atol=TOL, msg=k)


def _ours(model, batch):
    return sequence_logps(model, batch["ids"], batch["targets"])


def _dpo_trainer(hf, hf_ref, tok, tmp_path, loss_type):
    from trl import DPOConfig, DPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPOTrainer(model=hf, ref_model=hf_ref, processing_class=tok, train_dataset=_dataset(),
                          args=_args(DPOConfig, tmp_path, beta=BETA, loss_type=[loss_type]))


def _trl_pair_inputs(pairs: list[EncodedRecord], swap: bool = False) -> dict:
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    a, b = (1, 0) if swap else (0, 1)
    return DataCollatorForPreference(pad_token_id=0)(
        [{"prompt_ids": p.prompt, "chosen_ids": p.completions[a], "rejected_ids": p.completions[b]} for p in pairs])


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_sigmoid_with_label_smoothing_matches_trl(models, tmp_path, eps):
    """cDPO is the DPO loss's expectation under labels flipped with probability ε; TRL 1.16's "sigmoid"
    loss has no ε, so its side is (1 - ε) x its loss on the pairs + ε x its loss on the swapped pairs."""
    hf, ours, hf_ref, ref, tok = models
    trainer = _dpo_trainer(hf, hf_ref, tok, tmp_path, "sigmoid")
    pairs = _pairs(1)
    batch = collate_pairs(pairs, 0)
    lp, _ = _ours(ours, batch)
    with torch.no_grad():
        rlp, _ = _ours(ref, batch)
    loss = L.dpo_loss(lp[:4], lp[4:], rlp[:4], rlp[4:], BETA, eps).mean()
    theirs = (1 - eps) * trainer.compute_loss(trainer.model, _trl_pair_inputs(pairs))
    if eps:
        theirs = theirs + eps * trainer.compute_loss(trainer.model, _trl_pair_inputs(pairs, swap=True))
    _assert_same(loss, ours, theirs, trainer.model)


def test_ipo_matches_trl(models, tmp_path):
    hf, ours, hf_ref, ref, tok = models
    trainer = _dpo_trainer(hf, hf_ref, tok, tmp_path, "ipo")
    pairs = _pairs(2)
    batch = collate_pairs(pairs, 0)
    lp, n = _ours(ours, batch)
    with torch.no_grad():
        rlp, _ = _ours(ref, batch)
    loss = L.ipo_loss(lp[:4] / n[:4], lp[4:] / n[4:], rlp[:4] / n[:4], rlp[4:] / n[4:], BETA).mean()
    _assert_same(loss, ours, trainer.compute_loss(trainer.model, _trl_pair_inputs(pairs)), trainer.model)


def _trl_cpo_batch(pairs: list[EncodedRecord]) -> dict:
    """The experimental CPO/ORPO trainers' tokenized batch: prompt masked with -100 in the labels."""
    out = {}
    for side, k in (("chosen", 0), ("rejected", 1)):
        seqs = [p.prompt + p.completions[k] for p in pairs]
        T = max(map(len, seqs))
        ids = torch.zeros((len(pairs), T), dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (p, s) in enumerate(zip(pairs, seqs)):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
            labels[i, len(p.prompt):len(s)] = torch.tensor(p.completions[k])
        out.update({f"{side}_input_ids": ids, f"{side}_attention_mask": mask, f"{side}_labels": labels})
    return out


def test_simpo_matches_trl(models, tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    hf, ours, _, _, tok = models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = CPOTrainer(model=hf, processing_class=tok, train_dataset=_dataset(),
                             args=_args(CPOConfig, tmp_path, beta=BETA, loss_type="simpo", simpo_gamma=0.7,
                                        cpo_alpha=0.0))
    pairs = _pairs(3)
    lp, n = _ours(ours, collate_pairs(pairs, 0))
    loss = L.simpo_loss(lp[:4] / n[:4], lp[4:] / n[4:], BETA, 0.7).mean()
    theirs, _ = trainer.get_batch_loss_metrics(trainer.model, _trl_cpo_batch(pairs))
    _assert_same(loss, ours, theirs, trainer.model)


def test_orpo_matches_trl(models, tmp_path):
    """TRL's ORPO takes its SFT term over the whole chosen sequence (prompt included), so ours is fed that
    NLL here (the recipe's own is over the completion tokens only)."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    hf, ours, _, _, tok = models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = ORPOTrainer(model=hf, processing_class=tok, train_dataset=_dataset(),
                              args=_args(ORPOConfig, tmp_path, beta=BETA))
    pairs = _pairs(4)
    lp, n = _ours(ours, collate_pairs(pairs, 0))
    whole = collate_rows([(p.prompt[:1], p.prompt[1:] + p.completions[0]) for p in pairs], 0)
    wlp, wn = _ours(ours, whole)
    loss = L.orpo_loss(lp[:4] / n[:4], lp[4:] / n[4:], -wlp.sum() / wn.sum(), BETA).mean()
    theirs, _ = trainer.get_batch_loss_metrics(trainer.model, _trl_cpo_batch(pairs))
    _assert_same(loss, ours, theirs, trainer.model)


def test_kto_matches_trl(models, tmp_path):
    from trl import KTOConfig, KTOTrainer
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    from lmforge.data.pairs import kl_partners

    hf, ours, hf_ref, ref, tok = models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = KTOTrainer(model=hf, ref_model=hf_ref, processing_class=tok,
                             train_dataset=_dataset(unpaired=True),
                             args=_args(KTOConfig, tmp_path, beta=BETA, desirable_weight=1.0,
                                        undesirable_weight=1.5, train_sampling_strategy="sequential"))
    recs = [EncodedRecord(p.prompt, p.completions[:1], bool(i % 2)) for i, p in enumerate(_pairs(5))]
    kl = kl_partners(recs)
    batch = collate_unpaired(recs, kl, 0)
    lp, _ = _ours(ours, batch)
    with torch.no_grad():
        rlp, _ = _ours(ref, batch)
    z0 = L.kto_kl(lp[4:], rlp[4:])
    loss = L.kto_loss(lp[:4], rlp[:4], batch["labels"], z0, BETA, 1.0, 1.5).mean()
    inputs = DataCollatorForUnpairedPreference(pad_token_id=0)(
        [{"prompt_ids": r.prompt, "completion_ids": r.completions[0], "KL_completion_ids": k.completions[0],
          "label": r.label} for r, k in zip(recs, kl)])
    assert trainer.calculate_KL
    _assert_same(loss, ours, trainer.compute_loss(trainer.model, inputs), trainer.model)
    assert float(z0) > 0  # the KL reference point took part
