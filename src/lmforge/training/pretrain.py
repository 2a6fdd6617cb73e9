"""The pretraining recipe: train a model from scratch (or continue training one) on prepared shards.

From Python: `pretrain(PretrainConfig(...))` or `pretrain(load_config("file.yaml", **overrides))`; from
the command line: `lmforge pretrain` (`lmforge.verbs.pretrain`), whose flags are PretrainConfig's fields.

The recipe: windows of prepared token shards, next-token cross-entropy, a val loss and a greedy
sample as hooks, all run by the shared `training.loop.train_loop`. Everything a run writes goes
under `out_dir`:

    log.csv, tensorboard/, loss.png         the curves (rank 0)
    checkpoints/step-000200/                 an lmforge checkpoint dir + train_state.pt (optimizer,
                                             data position, RNG states, step): what --resume reads
    final/                                   the trained model (an lmforge checkpoint dir)
    summary.json                             steps, tokens, time, val loss/ppl
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmforge.errors import LmforgeError
from lmforge.training import config as _config
from lmforge.training.config import EvalArgs, LogArgs, TrainArgs, TrainConfigError

if TYPE_CHECKING:
    import contextlib

    import torch

    from lmforge.config import Config
    from lmforge.data.loader import TokenData
    from lmforge.tokenizer import Tokenizer


# ---------------------------------------------------------------------------------------------
# configuration: the shared groups (training.config) + pretraining's data and model
# ---------------------------------------------------------------------------------------------
@dataclass
class DataArgs:
    """Training data."""

    dir: str = ""
    """Prepared data directory (made by `lmforge prepare`)."""
    block_size: int = 256
    """Tokens per training sample (at most the model's context length)."""
    stride: int | None = None
    """Tokens between consecutive sample starts; default block_size (disjoint samples), smaller overlaps."""

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise TrainConfigError(f"data.block_size must be >= 1, got {self.block_size}")
        if self.stride is not None and self.stride < 1:
            raise TrainConfigError(f"data.stride must be >= 1, got {self.stride}")


@dataclass
class PretrainConfig:
    """Everything `pretrain` needs; the YAML schema of `lmforge pretrain --config`."""

    data: DataArgs = field(default_factory=DataArgs)
    """Training data."""
    out_dir: str = "out/pretrain"
    """Directory for checkpoints, logs and the final model."""
    model: str | dict[str, Any] | None = None
    """From scratch: a registry name (`lmforge models`) or a config dict (`{name: pythia-14m, n_layer: 4}` overrides a named one)."""
    tokenizer: str | None = None
    """Tokenizer SOURCE (default: the copy saved by `prepare` in the data dir, or the init checkpoint's)."""
    init: str | None = None
    """Continue training a model: a SOURCE (lmforge/HF checkpoint dir, .gguf, HF repo id)."""
    train: TrainArgs = field(default_factory=TrainArgs)
    """Optimisation."""
    eval: EvalArgs = field(default_factory=EvalArgs)
    """Periodic evaluation, sampling and checkpointing."""
    log: LogArgs = field(default_factory=LogArgs)
    """Logging."""
    device: str = "auto"
    """cpu, cuda or auto."""
    precision: Literal["auto", "fp32", "bf16-mixed"] = "auto"
    """fp32, or bf16 autocast with fp32 weights; auto picks bf16-mixed where the hardware does bf16."""
    compile: bool = False
    """torch.compile the model."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (less memory, ~30% more compute)."""
    devices: int = 1
    """Processes to train with; > 1 launches torchrun with this many (ignored inside torchrun)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Multi-process strategy: DDP (replicated weights) or FSDP (fully_shard: sharded weights and optimizer state)."""
    resume: bool | str = False
    """Continue an interrupted run: true (latest checkpoint in out_dir) or a checkpoint directory."""
    keep_checkpoints: int = 2
    """Training checkpoints kept under out_dir/checkpoints (older ones are deleted)."""

    def __post_init__(self) -> None:
        # groups given as dicts (from Python or a YAML read without jsonargparse)
        for name, cls in (("data", DataArgs), ("train", TrainArgs), ("eval", EvalArgs), ("log", LogArgs)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _config.build(cls, value, name))
        if not self.data.dir:
            raise TrainConfigError("data.dir is required (a directory made by `lmforge prepare`)")
        if (self.model is None) == (self.init is None):
            raise TrainConfigError("give exactly one of model (train from scratch) or init (continue a checkpoint)")
        _config.check_run_options(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, **overrides: Any) -> PretrainConfig:
    """A `PretrainConfig` from a YAML file or packaged config name (`austen-tiny`); `overrides` use
    dotted keys (`**{"train.lr": 1e-3}`)."""
    return _config.load_config(PretrainConfig, path, **overrides)


# ---------------------------------------------------------------------------------------------
# the recipe (`lmforge pretrain` is lmforge.verbs.pretrain)
# ---------------------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train as `cfg` says; return the run summary (also written to out_dir/summary.json).

    With `cfg.devices > 1` outside torchrun, relaunches itself under torchrun and waits.
    """
    from lmforge.training.distributed import in_distributed_env

    if cfg.devices > 1 and not in_distributed_env():
        return _launch(cfg)
    from lmforge.checkpoint import resolve_device
    from lmforge.training import distributed

    info = distributed.setup(resolve_device(cfg.device))
    try:
        return _run(cfg, info)
    finally:
        distributed.teardown()


def write_config(cfg: PretrainConfig, path: str | Path) -> None:
    """Write `cfg` as a YAML file that `lmforge pretrain --config FILE` runs again."""
    import yaml

    from lmforge._io import atomic_write_text

    spec = cfg.to_dict()
    spec["train"]["betas"] = list(spec["train"]["betas"])
    atomic_write_text(Path(path), yaml.safe_dump(spec, sort_keys=False))


def _launch(cfg: PretrainConfig) -> dict[str, Any]:
    """`--devices N`: write the config next to the run and start `lmforge pretrain` under torchrun."""
    from lmforge.training.distributed import launch

    out = Path(cfg.out_dir)
    path = out / "launch-config.yaml"
    write_config(cfg, path)
    launch(["pretrain", "--config", str(path)], cfg.devices)
    return json.loads((out / "summary.json").read_text())


# ---------------------------------------------------------------------------------------------
# one run: build the model and the data, then the shared loop
# ---------------------------------------------------------------------------------------------
def _run(cfg: PretrainConfig, info: Any) -> dict[str, Any]:
    from lmforge.data.loader import TokenData, WindowLoader
    from lmforge.model import GPT
    from lmforge.training.loop import Hooks, train_loop
    from lmforge.training.monitor import flops_per_token
    from lmforge.training.state import find_resume, seed_everything
    from lmforge.training.step import next_token_loss, use_bf16

    t, T = cfg.train, cfg.data.block_size
    train_data = TokenData(cfg.data.dir, "train")
    val_data = TokenData(cfg.data.dir, "val") if _has_val(cfg.data.dir) else None
    config, init_sd, init_tok = _model_config(cfg, train_data.manifest)
    tokenizer = _tokenizer(cfg, init_tok)
    _check_fit(cfg, config, info.world_size)
    bf16 = use_bf16(cfg.precision, info.device)
    resume = find_resume(cfg.resume, Path(cfg.out_dir) / "checkpoints", info.is_main)

    # world-size-independent set-up first: the same seed gives every rank the same initial weights
    seed_everything(t.seed)
    model = GPT(config)
    model.init_weights()
    if init_sd is not None:
        _load_weights(model, init_sd, cfg.init)
    if resume is not None:
        from lmforge.checkpoint import load_lmforge_checkpoint

        _, sd = load_lmforge_checkpoint(resume)
        _load_weights(model, sd, str(resume))
    loader = WindowLoader(train_data, T, t.micro_batch_size, stride=cfg.data.stride, shuffle=True, seed=t.seed,
                          rank=info.rank, world_size=info.world_size)

    def save_model(path: Path, msd: dict[str, torch.Tensor]) -> None:
        from lmforge.checkpoint import save_checkpoint

        save_checkpoint(path, msd, config, tokenizer)

    n_params = sum(p.numel() for p in model.parameters())
    return train_loop(
        model, loader, next_token_loss, save_model, train=t, eval=cfg.eval, log=cfg.log, out_dir=cfg.out_dir,
        info=info, seq_len=T,
        hooks=Hooks(evaluate=lambda m, autocast: _val_loss(m, val_data, cfg, info, autocast),
                    sample=lambda msd, step: _sample(msd, config, tokenizer, cfg.eval)),
        title=f"pretrain: {config.name} ({n_params / 1e6:.2f}M params, vocab {config.vocab_size})",
        data_note=f"{len(train_data):,} train tokens", bf16=bf16, strategy=cfg.strategy, compile=cfg.compile,
        activation_checkpointing=cfg.activation_checkpointing, keep_checkpoints=cfg.keep_checkpoints, resume=resume,
        run_config=cfg.to_dict(), flops_per_token=flops_per_token(config, T))


def _has_val(data_dir: str) -> bool:
    from lmforge.data.loader import read_manifest

    return read_manifest(data_dir)["splits"].get("val", {}).get("tokens", 0) > 0


def _model_config(cfg: PretrainConfig, manifest: dict[str, Any]) -> tuple[Config, dict | None, Tokenizer | None]:
    from lmforge.config import Config

    n_vocab = int(manifest["tokenizer"]["vocab_size"])
    if cfg.init is not None:
        from lmforge.checkpoint import load_source_parts

        config, sd, tok = load_source_parts(cfg.init)
        if n_vocab > config.vocab_size:
            raise TrainConfigError(
                f"data {cfg.data.dir} was tokenized with {n_vocab} token ids but {cfg.init} has only "
                f"{config.vocab_size}; prepare the data with the model's tokenizer")
        return config, sd, tok
    if isinstance(cfg.model, str):
        spec: dict[str, Any] = {"name": cfg.model}
    else:
        spec = dict(cfg.model)
    explicit_vocab = "vocab_size" in spec
    overrides = {k: v for k, v in spec.items() if k != "name"}
    if isinstance(cfg.model, str) or _is_registered(spec.get("name")):
        config = Config.from_name(spec["name"], **overrides)  # a named config (+ overrides)
    else:
        config = Config.from_dict(spec, source="model")  # a complete custom architecture
    if not explicit_vocab:
        # a model trained from scratch gets the tokenizer's vocabulary, padded to a multiple of 64
        # (matmul-friendly), not the registry checkpoint's
        config = dataclasses.replace(config, vocab_size=-(-n_vocab // 64) * 64)
    elif config.vocab_size < n_vocab:
        raise TrainConfigError(f"model.vocab_size={config.vocab_size} is smaller than the data's {n_vocab} token ids")
    eos = manifest["tokenizer"].get("eos_id")
    bos = manifest["tokenizer"].get("bos_id")
    config = dataclasses.replace(config, eos_token_id=eos, bos_token_id=bos, pad_token_id=None)
    return config, None, None

def _tokenizer(cfg: PretrainConfig, init_tok: Tokenizer | None) -> Tokenizer | None:
    from lmforge.data.prepare import load_tokenizer

    if cfg.tokenizer:
        return load_tokenizer(Path(cfg.tokenizer))
    saved = Path(cfg.data.dir) / "tokenizer"
    if saved.is_dir():
        return load_tokenizer(saved)
    return init_tok


def _check_fit(cfg: PretrainConfig, config: Config, world_size: int) -> None:
    T = cfg.data.block_size
    if T > config.block_size:
        raise TrainConfigError(
            f"data.block_size={T} is larger than the model's context ({config.block_size} tokens); "
            f"use data.block_size <= {config.block_size}")
    t, W = cfg.train, world_size
    if t.global_batch_size % (t.micro_batch_size * W):
        raise TrainConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be a multiple of micro_batch_size x processes "
            f"({t.micro_batch_size} x {W})")


def _val_loss(model: torch.nn.Module, val_data: TokenData | None, cfg: PretrainConfig, info: Any,
              autocast: contextlib.AbstractContextManager) -> float | None:
    """Mean val cross-entropy over the first `val_batches * micro_batch_size` disjoint windows.

    The windows do not depend on the number of processes (each takes every W-th), so a 2-process
    run reports the same val loss as a 1-process one.
    """
    import numpy as np
    import torch

    from lmforge.training.distributed import all_reduce_sum
    from lmforge.training.step import lm_loss

    if val_data is None or cfg.eval.val_batches == 0:
        return None
    T, b, W = cfg.data.block_size, cfg.train.micro_batch_size, info.world_size
    n_windows = (len(val_data) - T - 1) // T + 1 if len(val_data) > T else 0
    k = min(cfg.eval.val_batches * b, n_windows) // W * W  # equal work per rank (FSDP needs it)
    if k == 0:
        return None
    mine = list(range(info.rank, k, W))
    total = torch.zeros(2, dtype=torch.float64, device=info.device)  # [sum of losses, tokens]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(mine), b):
            rows = [val_data.slice(w * T, w * T + T + 1) for w in mine[i : i + b]]
            batch = torch.from_numpy(np.stack(rows)).to(info.device)
            x, y = batch[:, :-1], batch[:, 1:]
            with autocast:
                    loss = lm_loss(model, x, y, reduction="sum")
            total += torch.stack([loss.double(), torch.tensor(float(y.numel()), dtype=torch.float64, device=info.device)])
    model.train()
    all_reduce_sum(total, info)
    return float(total[0] / total[1])

def _sample(msd: dict, config: Config, tokenizer: Tokenizer | None, ev: EvalArgs) -> str | None:
    """A short greedy continuation of eval.sample_prompt, from a plain copy of the weights."""
    prompt = ev.sample_prompt
    if not prompt or tokenizer is None or ev.sample_tokens == 0:
        return None
    import torch

    from lmforge.generate import generate
    from lmforge.model import GPT
    from lmforge.sampling import SamplingParams

    model = GPT.from_state_dict(config, msd).eval()  # plain fp32 copy: no DDP/FSDP/compile in the way
    ids = tokenizer.encode(prompt, bos=False)
    n = min(ev.sample_tokens, config.block_size - len(ids))
    with torch.no_grad():
        out = generate(model, tokenizer, ids, SamplingParams(
            max_new_tokens=n, temperature=0.0, repetition_penalty=ev.sample_repetition_penalty))
    return prompt + out.text


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _is_registered(name: str | None) -> bool:
    from lmforge.config import ConfigError
    from lmforge.model_registry import canonical_name

    if not name:
        return False
    try:
        canonical_name(name)
    except ConfigError:
        return False
    return True


def _load_weights(model: Any, sd: dict, source: str | None) -> None:
    expected = set(model.state_dict())
    if model.config.tie_embeddings:
        expected.discard("lm_head.weight")
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise LmforgeError(f"{source}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
