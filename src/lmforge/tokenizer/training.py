"""Training a GPT-2 style byte-level BPE (`lmforge tokenizer train`, the Austen demo).

The trainer takes texts, not files: reading and checking a corpus is `lmforge.data.corpus`'s job
(`train_bpe(corpus.iter_texts(files))`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from lmforge.tokenizer.backends import HFBackend
from lmforge.tokenizer.base import TokenizerError, pre_tokenizer
from lmforge.tokenizer.facade import Tokenizer


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    special_tokens: list[str] | None = None,
) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE.

    Args:
        texts: training texts (for files: `lmforge.data.corpus.iter_texts(paths)`, which checks them).
        vocab_size: target vocabulary size (special tokens and the 256 byte tokens included).
        min_frequency: a pair must occur this often to be merged.
        special_tokens: special tokens (default ["<|endoftext|>"]); the first is BOS, EOS and PAD.

    Returns:
        The trained `Tokenizer` (add_bos False: documents are separated by EOS, GPT-2 style).
    """
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    specials = list(special_tokens or ["<|endoftext|>"])
    if vocab_size < 256 + len(specials) + 1:
        raise TokenizerError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs more than {256 + len(specials)}")

    seen = 0

    def counted() -> Iterator[str]:
        nonlocal seen
        for t in texts:
            seen += len(t)
            yield t

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer("gpt2")
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(counted(), trainer=trainer)
    if seen == 0:
        raise TokenizerError("no training text: the inputs are empty")
    first = tok.token_to_id(specials[0])
    return Tokenizer(HFBackend(tok), bos_id=first, eos_ids=[first], pad_id=first, add_bos=False, source="train_bpe")
