"""`lmforge pretrain`: train a model from scratch (or continue training one) on prepared shards.

    lmforge pretrain --config configs/pretrain/austen-tiny.yaml --train.max_steps 200
    torchrun --nproc-per-node 2 -m lmforge pretrain --config … --strategy fsdp
    lmforge pretrain --config … --devices 2            # launches torchrun itself

From Python: `pretrain(PretrainConfig(...))` or `pretrain(load_config("file.yaml", **overrides))`.

Everything a run writes goes under `out_dir`:

    log.csv, tensorboard/, loss.png         the curves (rank 0)
    checkpoints/step-000200/                 an lmforge checkpoint dir + train_state.pt (optimizer,
                                             data position, RNG states, step): what --resume reads
    final/                                   the trained model (an lmforge checkpoint dir)
    summary.json                             steps, tokens, time, val loss/ppl
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable

    import torch

    from lmforge.config import Config
    from lmforge.tokenizer import Tokenizer

try:  # field docstrings become --help text and YAML documentation
    from jsonargparse import set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
except ImportError:  # pragma: no cover - jsonargparse is a dependency
    pass


class PretrainConfigError(LmforgeError, ValueError):
    """A pretraining setting is missing or inconsistent."""


# ---------------------------------------------------------------------------------------------
# configuration: small typed groups, validated on construction
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
            raise PretrainConfigError(f"data.block_size must be >= 1, got {self.block_size}")
        if self.stride is not None and self.stride < 1:
            raise PretrainConfigError(f"data.stride must be >= 1, got {self.stride}")


@dataclass
class TrainArgs:
    """Optimisation."""

    max_steps: int = 1000
    """Optimizer steps to train for (also the length of the cosine schedule)."""
    max_minutes: float | None = None
    """Stop (with a final eval and checkpoint) after this many minutes of training."""
    global_batch_size: int = 32
    """Sequences per optimizer step, over all processes."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass on one process (gradients accumulate up to the global batch)."""
    lr: float = 6e-4
    """Peak learning rate."""
    min_lr: float = 6e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    """Steps of linear warmup."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (not applied to norms, biases and embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    seed: int = 42
    """Seed of the initialisation and of the data order."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        checks = [
            (self.max_steps >= 1, f"train.max_steps must be >= 1, got {self.max_steps}"),
            (self.micro_batch_size >= 1, f"train.micro_batch_size must be >= 1, got {self.micro_batch_size}"),
            (self.global_batch_size % max(self.micro_batch_size, 1) == 0,
             f"train.global_batch_size ({self.global_batch_size}) must be a multiple of train.micro_batch_size "
             f"({self.micro_batch_size})"),
            (self.global_batch_size >= 1, f"train.global_batch_size must be >= 1, got {self.global_batch_size}"),
            (self.lr > 0, f"train.lr must be > 0, got {self.lr}"),
            (0 <= self.min_lr <= self.lr, f"train.min_lr must be in [0, train.lr], got {self.min_lr}"),
            (self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"train.betas must be two numbers in [0, 1), got {self.betas}"),
            (self.grad_clip is None or self.grad_clip > 0, f"train.grad_clip must be > 0 or None, got {self.grad_clip}"),
            (self.max_minutes is None or self.max_minutes > 0, f"train.max_minutes must be > 0, got {self.max_minutes}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise PretrainConfigError(msg)


@dataclass
class EvalArgs:
    """Periodic evaluation, sampling and checkpointing."""

    interval: int = 100
    """Every this many steps (and at the end): val loss + perplexity, a sample, a checkpoint."""
    val_batches: int = 8
    """Micro-batches of validation windows scored at each evaluation (the same windows every time)."""
    initial: bool = True
    """Also evaluate before the first step (the untrained baseline)."""
    sample_prompt: str = "The"
    """Prompt of the greedy sample printed at each evaluation ("" for none)."""
    sample_tokens: int = 40
    """Length of that sample."""
    sample_repetition_penalty: float = 1.0
    """Repetition penalty of the sample (>1 keeps an early model from looping on one token)."""

    def __post_init__(self) -> None:
        if self.interval < 1 or self.val_batches < 0 or self.sample_tokens < 0:
            raise PretrainConfigError("eval.interval must be >= 1, eval.val_batches and eval.sample_tokens >= 0")


@dataclass
class LogArgs:
    """Logging."""

    interval: int = 10
    """Console and CSV line every this many steps."""
    tensorboard: bool = True
    """Write TensorBoard events under out_dir/tensorboard."""
    plot: bool = True
    """Keep out_dir/loss.png (train and val loss) up to date."""

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise PretrainConfigError(f"log.interval must be >= 1, got {self.interval}")


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
                setattr(self, name, _build(cls, value, name))
        if not self.data.dir:
            raise PretrainConfigError("data.dir is required (a directory made by `lmforge prepare`)")
        if (self.model is None) == (self.init is None):
            raise PretrainConfigError("give exactly one of model (train from scratch) or init (continue a checkpoint)")
        if self.devices < 1:
            raise PretrainConfigError(f"devices must be >= 1, got {self.devices}")
        if self.strategy not in ("ddp", "fsdp"):
            raise PretrainConfigError(f"strategy={self.strategy!r} is not one of ('ddp', 'fsdp')")
        if self.precision not in ("auto", "fp32", "bf16-mixed"):
            raise PretrainConfigError(f"precision={self.precision!r} is not one of ('auto', 'fp32', 'bf16-mixed')")
        if self.keep_checkpoints < 1:
            raise PretrainConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """`cls(**values)`, with an unknown key reported by name (and a close match)."""
    import difflib

    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {where + '.' if where else ''}{close[0]!r}?)" if close else ""
            raise PretrainConfigError(f"unknown key {(where + '.' if where else '') + key!r}{hint}")
    return cls(**values)


def load_config(path: str | Path | None = None, **overrides: Any) -> PretrainConfig:
    """A `PretrainConfig` from a YAML file; `overrides` use dotted keys (`**{"train.lr": 1e-3}`)."""
    from lmforge._io import read_yaml

    data = read_yaml(Path(path), PretrainConfigError) if path is not None else {}
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return _build(PretrainConfig, data, "")


# ---------------------------------------------------------------------------------------------
# the verb
# ---------------------------------------------------------------------------------------------
def pretrain_cli(
    data: DataArgs = DataArgs(),
    out_dir: str = "out/pretrain",
    model: str | dict[str, Any] | None = None,
    tokenizer: str | None = None,
    init: str | None = None,
    train: TrainArgs = TrainArgs(),
    eval: EvalArgs = EvalArgs(),  # noqa: A002 - the YAML key
    log: LogArgs = LogArgs(),
    device: str = "auto",
    precision: Literal["auto", "fp32", "bf16-mixed"] = "auto",
    compile: bool = False,  # noqa: A002
    activation_checkpointing: bool = False,
    devices: int = 1,
    strategy: Literal["ddp", "fsdp"] = "ddp",
    resume: bool | str = False,
    keep_checkpoints: int = 2,
) -> None:
    """Pretrain a model from scratch, or continue training one, on data made by `lmforge prepare`.

    Args:
        data: Training data.
        out_dir: Directory for checkpoints, logs and the final model.
        model: From scratch: a registry name (`lmforge models`) or a config dict.
        tokenizer: Tokenizer SOURCE (default: the one saved in the data dir, or the init checkpoint's).
        init: Continue training this SOURCE (checkpoint dir, .gguf, HF repo id).
        train: Optimisation.
        eval: Periodic evaluation, sampling and checkpointing.
        log: Logging.
        device: cpu, cuda or auto.
        precision: fp32, bf16-mixed (bf16 autocast, fp32 weights) or auto.
        compile: torch.compile the model.
        activation_checkpointing: Recompute activations in the backward pass to save memory.
        devices: Processes to train with (> 1 launches torchrun).
        strategy: ddp or fsdp (with several processes).
        resume: true (latest checkpoint in out_dir) or a checkpoint dir.
        keep_checkpoints: Training checkpoints kept.
    """
    # the signature mirrors PretrainConfig field for field (a test checks), so YAML keys == flags
    args = locals()
    pretrain(PretrainConfig(**{f.name: args[f.name] for f in dataclasses.fields(PretrainConfig)}))


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train as `cfg` says; return the run summary (also written to out_dir/summary.json).

    With `cfg.devices > 1` outside torchrun, relaunches itself under torchrun and waits.
    """
    from lmforge.training.distributed import in_distributed_env

    if cfg.devices > 1 and not in_distributed_env():
        return _launch(cfg)
    import torch

    from lmforge.checkpoint import resolve_device
    from lmforge.training import distributed

    device = resolve_device(cfg.device)
    info = distributed.setup(device)
    try:
        return _Run(cfg, info).train()
    finally:
        distributed.teardown()


def _launch(cfg: PretrainConfig) -> dict[str, Any]:
    """`--devices N`: write the config next to the run and start `lmforge pretrain` under torchrun."""
    import yaml

    from lmforge._io import atomic_write_text
    from lmforge.training.distributed import launch

    out = Path(cfg.out_dir)
    path = out / "launch-config.yaml"
    spec = cfg.to_dict()
    spec["train"]["betas"] = list(spec["train"]["betas"])
    atomic_write_text(path, yaml.safe_dump(spec, sort_keys=False))
    launch(["pretrain", "--config", str(path)], cfg.devices)
    return json.loads((out / "summary.json").read_text())


# ---------------------------------------------------------------------------------------------
# one optimizer step: what the loop runs (benchmarks/train_speed.py times exactly this)
# ---------------------------------------------------------------------------------------------
def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            autocast: contextlib.AbstractContextManager | None = None,
            reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Next-token cross-entropy of `model` (plain, DDP/FSDP-wrapped or compiled) on inputs x, targets y.

    A plain `nn.Linear` head over the vocabulary (tied or not, without logit softcapping) goes through
    `fused_linear_cross_entropy`: the (b, T, vocab) logits tensor is never built, which on CPU is what
    most of a small model's step time went to. Any other head (a replaced `lm_head`) gets the plain
    `F.cross_entropy` of the model's logits.

    Args:
        model: the model being trained.
        x: (b, T) input ids.
        y: (b, T) target ids (`-100`: not scored).
        autocast: the autocast context of the forward pass (None: none).
        reduction: "mean" over the scored tokens, or "sum".
    """
    import contextlib

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from lmforge.training.distributed import unwrap
    from lmforge.training.loss import fused_linear_cross_entropy

    inner = getattr(unwrap(model), "_orig_mod", unwrap(model))
    head, config = getattr(inner, "lm_head", None), getattr(inner, "config", None)
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    if (type(head) is nn.Linear and config is not None and head.out_features == config.vocab_size
            and getattr(config, "final_logit_softcap", None) is None):
        with autocast:
            hidden = model(x, return_hidden=True)  # (b, T, d)
            # the head runs inside the loss, chunk by chunk (in the autocast dtype, softmax in fp32)
            return fused_linear_cross_entropy(hidden, head.weight, y, bias=head.bias, reduction=reduction)
    with autocast:
        logits = model(x)  # (b, T, V)
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()  # the softmax of low-precision logits in fp32
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction=reduction)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], accum: int, grad_clip: float | None,
               autocast: contextlib.AbstractContextManager | None = None,
               grad_sync: Callable[[bool], contextlib.AbstractContextManager] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step over `accum` micro-batches: forward, loss, backward, clip, AdamW, zero grads.

    Args:
        model: the model being trained (plain, DDP/FSDP-wrapped or compiled).
        optimizer: its optimizer (learning rate already set for this step).
        next_batch: callable returning the next micro-batch `(x, y)`, already on the model's device.
        accum: micro-batches per optimizer step (gradient accumulation).
        grad_clip: clip the global gradient norm to this (None: no clipping).
        autocast: the autocast context of the forward passes (None: none).
        grad_sync: callable `(last: bool) -> context manager` around each micro-batch's backward
            (DDP/FSDP: skip the gradient all-reduce on all but the last).

    Returns:
        The sum of the micro-batch mean losses and the gradient norm before clipping, as tensors (not
        read here, so no device sync per step).
    """
    import contextlib

    import torch

    loss_sum = None
    for micro in range(accum):
        x, y = next_batch()
        with grad_sync(micro == accum - 1) if grad_sync is not None else contextlib.nullcontext():
            loss = lm_loss(model, x, y, autocast)  # mean over b*T tokens
            # dividing by accum makes the summed gradient the mean over this process's accum*b
            # sequences; DDP/FSDP then average over the W processes: the mean over the global batch
            (loss / accum).backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    grad_norm = None
    if grad_clip is not None:
        grad_norm = _clip_grad_norm(model, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


def _clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_`, minus its multiply-every-gradient-by-1.0 pass when the norm is already small.

    When the norm is below `max_norm` the clipping factor is clamped to exactly 1.0, so skipping the
    multiply changes nothing; deciding needs the norm on the host, which is free on a CPU (elsewhere,
    and for sharded gradients, every step clips as torch does).
    """
    import torch

    params = [p for p in model.parameters() if p.grad is not None]
    if not params or params[0].device.type != "cpu" or hasattr(params[0].grad, "full_tensor"):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if not float(norm) + 1e-6 <= max_norm:  # (a nan norm clips too, as in torch)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


# ---------------------------------------------------------------------------------------------
# one training run
# ---------------------------------------------------------------------------------------------
class _Run:
    """State of one run on one rank; `train()` is the loop."""

    def __init__(self, cfg: PretrainConfig, info: Any) -> None:
        import torch

        from lmforge.data.loader import TokenData

        self.cfg, self.info = cfg, info
        self.device = info.device
        self.out = Path(cfg.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.train_data = TokenData(cfg.data.dir, "train")
        self.val_data = TokenData(cfg.data.dir, "val") if self.has_val(cfg.data.dir) else None
        self.config, init_sd, init_tok = self._model_config()
        self.tokenizer = self._tokenizer(init_tok)
        self._check_fit()
        self.bf16 = self._use_bf16()
        self.resume_dir = self._find_resume()

        # world-size-independent setup first: the same seed gives every rank the same initial weights
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        import numpy as np

        np.random.seed(cfg.train.seed)
        from lmforge.model import GPT

        model = GPT(self.config)
        model.init_weights()
        if init_sd is not None:
            _load_weights(model, init_sd, cfg.init)
        self.state: dict[str, Any] = {}
        if self.resume_dir is not None:
            from lmforge.checkpoint import load_lmforge_checkpoint

            _, sd = load_lmforge_checkpoint(self.resume_dir)
            _load_weights(model, sd, str(self.resume_dir))
            self.state = torch.load(self.resume_dir / "train_state.pt", weights_only=True, map_location="cpu")
        model.to(self.device)
        if cfg.activation_checkpointing:
            _checkpoint_blocks(model)
        if cfg.compile:
            model.compile()
        from lmforge.training import distributed
        from lmforge.training.optim import make_adamw

        self.model = distributed.wrap(model, cfg.strategy, info)
        t = cfg.train
        self.optimizer = make_adamw(self.model, t.lr, t.weight_decay, t.betas, t.eps)
        from lmforge.data.loader import WindowLoader

        self.loader = WindowLoader(self.train_data, cfg.data.block_size, t.micro_batch_size, stride=cfg.data.stride,
                                   shuffle=True, seed=t.seed, rank=info.rank, world_size=info.world_size)
        if self.state:
            distributed.load_optimizer_state(self.model, self.optimizer, self.state["optimizer"])
            self.loader.load_state_dict({**self.state["loader"], "rank": info.rank})
            _set_rng_state(self.state["rng"], self.device)

    # -- set-up helpers --
    @staticmethod
    def has_val(data_dir: str) -> bool:
        from lmforge.data.loader import read_manifest

        return read_manifest(data_dir)["splits"].get("val", {}).get("tokens", 0) > 0

    def _model_config(self) -> tuple[Config, dict | None, Tokenizer | None]:
        from lmforge.config import Config

        cfg, manifest = self.cfg, self.train_data.manifest
        n_vocab = int(manifest["tokenizer"]["vocab_size"])
        if cfg.init is not None:
            from lmforge.checkpoint import load_source_parts

            config, sd, tok = load_source_parts(cfg.init)
            if n_vocab > config.vocab_size:
                raise PretrainConfigError(
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
            raise PretrainConfigError(f"model.vocab_size={config.vocab_size} is smaller than the data's {n_vocab} token ids")
        eos = manifest["tokenizer"].get("eos_id")
        bos = manifest["tokenizer"].get("bos_id")
        config = dataclasses.replace(config, eos_token_id=eos, bos_token_id=bos, pad_token_id=None)
        return config, None, None

    def _tokenizer(self, init_tok: Tokenizer | None) -> Tokenizer | None:
        from lmforge.data.prepare import load_tokenizer

        if self.cfg.tokenizer:
            return load_tokenizer(Path(self.cfg.tokenizer))
        saved = Path(self.cfg.data.dir) / "tokenizer"
        if saved.is_dir():
            return load_tokenizer(saved)
        return init_tok

    def _check_fit(self) -> None:
        T = self.cfg.data.block_size
        if T > self.config.block_size:
            raise PretrainConfigError(
                f"data.block_size={T} is larger than the model's context ({self.config.block_size} tokens); "
                f"use data.block_size <= {self.config.block_size}")
        t, W = self.cfg.train, self.info.world_size
        if t.global_batch_size % (t.micro_batch_size * W):
            raise PretrainConfigError(
                f"train.global_batch_size ({t.global_batch_size}) must be a multiple of micro_batch_size x processes "
                f"({t.micro_batch_size} x {W})")

    def _use_bf16(self) -> bool:
        import torch

        p = self.cfg.precision
        if p != "auto":
            if p == "bf16-mixed" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise PretrainConfigError("precision=bf16-mixed: this GPU has no bfloat16 support; use fp32")
            return p == "bf16-mixed"
        if self.device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return cpu_has_bf16()

    def _find_resume(self) -> Path | None:
        r = self.cfg.resume
        if r is False or r in ("false", "False"):
            return None
        if r is True or r in ("true", "True"):
            found = latest_checkpoint(self.ckpt_root)
            if found is None and self.info.is_main:
                print(f"resume: no checkpoint under {self.ckpt_root} yet; starting from step 0", flush=True)
            return found
        path = Path(r)
        if not (path / "train_state.pt").is_file():
            raise PretrainConfigError(f"resume: {path} is not a training checkpoint (no train_state.pt)")
        return path

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.loader)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    # -- the loop --
    def train(self) -> dict[str, Any]:
        import torch

        from lmforge.training import distributed
        from lmforge.training.monitor import RunLog, flops_per_token, format_duration, measured_peak_flops
        from lmforge.training.optim import lr_at

        cfg, info, t = self.cfg, self.info, self.cfg.train
        main = info.is_main
        T, b, W = cfg.data.block_size, t.micro_batch_size, info.world_size
        # ---- the batch arithmetic, in one place ----
        # one optimizer step sees global_batch_size sequences: W processes x accum micro-batches x b sequences
        accum = t.global_batch_size // (b * W)
        tokens_per_step = t.global_batch_size * T
        step = int(self.state.get("step", 0))
        tokens = int(self.state.get("tokens", 0))
        elapsed_before = float(self.state.get("elapsed", 0.0))
        initial_val = self.state.get("initial_val_loss")
        # the latest val loss: a run resumed from its last checkpoint (killed while writing final/)
        # runs no step, and its summary still reports the loss that checkpoint was evaluated at
        val_loss = self.state.get("val_loss")

        self.out.mkdir(parents=True, exist_ok=True)
        if main:
            remove_partials(self.out)
        log = RunLog(self.out, cfg.log.tensorboard, cfg.log.plot, resume_step=step if self.state else None) if main else None
        peak = measured_peak_flops(self.device, torch.bfloat16 if self.bf16 else torch.float32) * W
        flops_tok = flops_per_token(self.config, T)
        if main:
            n_params = sum(p.numel() for p in distributed.unwrap(self.model).parameters())
            print(f"pretrain: {self.config.name} ({n_params / 1e6:.2f}M params, vocab {self.config.vocab_size}) on "
                  f"{W} x {self.device.type}, {'bf16-mixed' if self.bf16 else 'fp32'}"
                  f"{', ' + cfg.strategy if W > 1 else ''} | {len(self.train_data):,} train tokens | "
                  f"global batch {t.global_batch_size} x {T} tokens = {W} proc x {accum} accum x {b} micro"
                  + (f" | resuming from step {step} ({self.resume_dir})" if self.state else ""), flush=True)

        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        self.model.train()
        if step == 0 and cfg.eval.initial:
            initial_val = self._evaluate(autocast)
            if main and initial_val is not None:
                print(f"step 0: val loss {initial_val:.4f} (ppl {math.exp(min(initial_val, 50)):.1f}) before training", flush=True)
                log.log({"step": 0, "tokens": 0, "val_loss": initial_val, "val_ppl": math.exp(min(initial_val, 50)),
                         "elapsed_s": 0.0})
        t_start = time.perf_counter() - elapsed_before
        t_session, start_step = time.perf_counter(), step
        t_window, tokens_window = time.perf_counter(), 0
        while step < t.max_steps:
            lr = lr_at(step, t.lr, t.min_lr, t.warmup_steps, t.max_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_sum, grad_norm = train_step(
                self.model, self.optimizer, self._next_batch, accum, t.grad_clip, autocast,
                grad_sync=lambda last: distributed.grad_sync(self.model, cfg.strategy, info, sync=last))
            step += 1
            tokens += tokens_per_step
            tokens_window += tokens_per_step

            out_of_time = False
            if t.max_minutes is not None:  # rank 0's clock decides for everyone
                out_of_time = distributed.broadcast_object((time.perf_counter() - t_start) > 60 * t.max_minutes, info)
            last = step >= t.max_steps or out_of_time
            if step % cfg.log.interval == 0 or last:
                train_loss = float(distributed.all_reduce_sum(loss_sum / accum, info)) / W
                if grad_norm is not None:  # read only when logged: no device sync on the other steps
                    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                now = time.perf_counter()
                tok_s = tokens_window / max(now - t_window, 1e-9)
                t_window, tokens_window = now, 0
                if main:
                    mfu = tok_s * flops_tok / peak
                    elapsed = now - t_start
                    # from this session's pace (a resumed run's earlier sessions may have run elsewhere)
                    eta = (t.max_steps - step) * (now - t_session) / max(step - start_step, 1)
                    print(f"step {step}/{t.max_steps} | loss {train_loss:.4f} | lr {lr:.2e}"
                          + (f" | grad {grad_norm:.2f}" if grad_norm is not None else "")
                          + f" | {tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | ETA {format_duration(eta)}", flush=True)
                    log.log({"step": step, "tokens": tokens, "train_loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                             "tokens_per_sec": tok_s, "mfu": mfu, "elapsed_s": elapsed})
            if step % cfg.eval.interval == 0 or last:
                val_loss = self._evaluate(autocast)
                elapsed = time.perf_counter() - t_start
                if main and val_loss is not None:
                    print(f"step {step}: val loss {val_loss:.4f} (ppl {math.exp(min(val_loss, 50)):.1f})", flush=True)
                    log.log({"step": step, "tokens": tokens, "val_loss": val_loss,
                             "val_ppl": math.exp(min(val_loss, 50)), "elapsed_s": elapsed})
                self._checkpoint(step, tokens, elapsed, initial_val, val_loss, log)
                t_window, tokens_window = time.perf_counter(), 0  # eval time is not training throughput
            if last:
                break

        # ---- the end: final model + summary ----
        elapsed = time.perf_counter() - t_start
        summary = {
            "steps": step, "tokens": tokens, "seconds": round(elapsed, 2),
            "initial_val_loss": initial_val, "val_loss": val_loss,
            "val_ppl": math.exp(min(val_loss, 50)) if val_loss is not None else None,
            "final": str(self.out / "final"), "checkpoint": str(self.ckpt_root / f"step-{step:06d}"),
        }
        if main:
            from lmforge._io import atomic_write_text

            final, tmp = self.out / "final", self.out / ".final.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.ckpt_root / f"step-{step:06d}", tmp, ignore=shutil.ignore_patterns("train_state.pt"))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
            before = f", {initial_val:.4f} before training" if initial_val is not None else ""
            vl = f"final val loss {val_loss:.4f} (ppl {summary['val_ppl']:.1f}){before}" if val_loss is not None else "no val split"
            print(f"done: {step} steps, {tokens:,} tokens in {format_duration(elapsed)} | {vl} | model: {final}", flush=True)
            log.close()
        distributed.barrier(info)
        return summary

    def _evaluate(self, autocast: Any) -> float | None:
        """Mean val cross-entropy over the first `val_batches * micro_batch_size` disjoint windows.

        The windows do not depend on the number of processes (each takes every W-th), so a 2-process
        run reports the same val loss as a 1-process one.
        """
        import numpy as np
        import torch

        from lmforge.training.distributed import all_reduce_sum

        if self.val_data is None or self.cfg.eval.val_batches == 0:
            return None
        T, b, W = self.cfg.data.block_size, self.cfg.train.micro_batch_size, self.info.world_size
        n_windows = (len(self.val_data) - T - 1) // T + 1 if len(self.val_data) > T else 0
        k = min(self.cfg.eval.val_batches * b, n_windows) // W * W  # equal work per rank (FSDP needs it)
        if k == 0:
            return None
        mine = list(range(self.info.rank, k, W))
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # [sum of losses, tokens]
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(mine), b):
                rows = [self.val_data.slice(w * T, w * T + T + 1) for w in mine[i : i + b]]
                batch = torch.from_numpy(np.stack(rows)).to(self.device)
                x, y = batch[:, :-1], batch[:, 1:]
                loss = lm_loss(self.model, x, y, autocast, reduction="sum")
                total += torch.stack([loss.double(), torch.tensor(float(y.numel()), dtype=torch.float64, device=self.device)])
        self.model.train()
        all_reduce_sum(total, self.info)
        return float(total[0] / total[1])

    def _checkpoint(self, step: int, tokens: int, elapsed: float, initial_val: float | None, val_loss: float | None,
                    log: Any) -> None:
        """Write checkpoints/step-N/ (lmforge checkpoint + train_state.pt) atomically, sample, prune."""
        import torch

        from lmforge.checkpoint import save_checkpoint
        from lmforge.training import distributed

        msd, osd = distributed.full_state_dicts(self.model, self.optimizer)  # collective under FSDP
        if self.info.is_main:
            state = {
                "step": step, "tokens": tokens, "elapsed": elapsed, "initial_val_loss": initial_val,
                "val_loss": val_loss, "optimizer": osd, "loader": self.loader.state_dict(), "rng": _get_rng_state(self.device),
                "scheduler": {"kind": "warmup-cosine", "step": step}, "world_size": self.info.world_size,
                "config": json.dumps(self.cfg.to_dict()),
            }
            self.ckpt_root.mkdir(parents=True, exist_ok=True)
            name = f"step-{step:06d}"
            tmp = self.ckpt_root / f".{name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            save_checkpoint(tmp, msd, self.config, self.tokenizer)
            torch.save(state, tmp / "train_state.pt")
            shutil.rmtree(self.ckpt_root / name, ignore_errors=True)
            os.replace(tmp, self.ckpt_root / name)  # a checkpoint dir is either complete or absent
            for old in sorted(self.ckpt_root.glob("step-*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            self._sample(msd, step, log)
            log.draw()
        distributed.barrier(self.info)

    def _sample(self, msd: dict, step: int, log: Any) -> None:
        """A short greedy continuation of eval.sample_prompt, from a plain copy of the weights."""
        prompt = self.cfg.eval.sample_prompt
        if not prompt or self.tokenizer is None or self.cfg.eval.sample_tokens == 0:
            return
        import torch

        from lmforge.generate import generate
        from lmforge.model import GPT
        from lmforge.sampling import SamplingParams

        model = GPT.from_state_dict(self.config, msd).eval()  # plain fp32 copy: no DDP/FSDP/compile in the way
        ids = self.tokenizer.encode(prompt, bos=False)
        n = min(self.cfg.eval.sample_tokens, self.config.block_size - len(ids))
        with torch.no_grad():
            out = generate(model, self.tokenizer, ids, SamplingParams(
                max_new_tokens=n, temperature=0.0, repetition_penalty=self.cfg.eval.sample_repetition_penalty))
        text = prompt + out.text
        print(f"sample @ {step}: {text!r}", flush=True)
        log.text("sample", text, step)


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


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete training checkpoint under `root` (partial ones are ignored)."""
    done = [p for p in sorted(Path(root).glob("step-*")) if (p / "train_state.pt").is_file()]
    return done[-1] if done else None


def remove_partials(out: Path) -> None:
    """Delete the half-written `.step-N.partial` / `.final.partial` dirs a killed run left behind."""
    for tmp in [*Path(out).glob(".final.partial"), *(Path(out) / "checkpoints").glob(".step-*.partial")]:
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); else autocast would emulate it slowly."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _load_weights(model: Any, sd: dict, source: str | None) -> None:
    expected = set(model.state_dict())
    if model.config.tie_embeddings:
        expected.discard("lm_head.weight")
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise LmforgeError(f"{source}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)


def _checkpoint_blocks(model: Any) -> None:
    """Activation checkpointing: each block recomputes its forward during backward."""
    import functools

    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def _get_rng_state(device: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": list(random.getstate()[1]),
        "python_version": int(random.getstate()[0]),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: Any) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------------------------------
# the demo: tokenizer + prepare + pretrain + sample on Jane Austen
# ---------------------------------------------------------------------------------------------
DEMO_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "pretrain" / "austen-tiny.yaml"


def demo_pretrain(out_dir: str | Path, minutes: float = 3.0, vocab_size: int = 4096,
                  config: str | Path | None = None) -> dict[str, Any]:
    """Train a byte-level BPE on Jane Austen, prepare the novels, pretrain a small model, sample it.

    Args:
        out_dir: where the tokenizer, the prepared data and the run go.
        minutes: wall-clock budget of the training loop.
        vocab_size: size of the BPE vocabulary trained on the corpus.
        config: the pretrain YAML (default configs/pretrain/austen-tiny.yaml).

    Returns:
        The run summary (val loss before/after, steps, tokens, final checkpoint dir).
    """
    from lmforge.assets import fetch_asset
    from lmforge.data.prepare import prepare

    out = Path(out_dir)
    corpus = fetch_asset("austen")
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        from lmforge.tokenizer import train_bpe

        files = sorted(str(p) for p in Path(corpus).glob("*.txt"))
        print(f"training a byte-level BPE tokenizer ({vocab_size} tokens) on {len(files)} novels", flush=True)
        tok = train_bpe(files, vocab_size=vocab_size)
        tok.save(tok_dir)
    prepare(str(corpus), tokenizer=str(tok_dir), out_dir=str(out / "data"), val_fraction=0.1, workers=2)
    t0 = time.perf_counter()
    cfg = load_config(config or DEMO_CONFIG, out_dir=str(out / "run"), **{"data.dir": str(out / "data")})
    # fit the cosine schedule to the time budget: time a few steps of this model on this machine first
    # (from the per-step log, skipping the first steps, which pay for warm-up and allocation)
    n_probe = 6
    probe = dataclasses.replace(cfg, out_dir=str(out / "calibrate"), resume=False,
                                train=dataclasses.replace(cfg.train, max_steps=n_probe, max_minutes=None),
                                eval=dataclasses.replace(cfg.eval, initial=False, val_batches=0, sample_prompt=""),
                                log=dataclasses.replace(cfg.log, interval=1, tensorboard=False, plot=False))
    print(f"timing {n_probe} training steps to fit the schedule to the time budget", flush=True)
    probe_summary = pretrain(probe)
    with open(out / "calibrate" / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    if len(rows) >= 4:
        per_step = (float(rows[-1]["elapsed_s"]) - float(rows[1]["elapsed_s"])) / (len(rows) - 2)
    else:
        per_step = probe_summary["seconds"] / n_probe
    shutil.rmtree(out / "calibrate", ignore_errors=True)
    budget = max(60 * minutes - (time.perf_counter() - t0), per_step * 10)
    steps = max(10, int(0.85 * budget / per_step))  # ~15% for evaluations and checkpoints
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, max_steps=steps, max_minutes=budget / 60,
                                       warmup_steps=min(cfg.train.warmup_steps, steps // 10)),
        eval=dataclasses.replace(cfg.eval, interval=max(1, steps // 4)))
    print(f"{per_step:.1f} s/step here: training {steps} steps", flush=True)
    summary = pretrain(cfg)
    if summary.get("initial_val_loss") is not None and summary.get("val_loss") is not None:
        print(f"val loss: {summary['initial_val_loss']:.3f} untrained -> {summary['val_loss']:.3f} after "
              f"{summary['steps']} steps ({summary['tokens']:,} tokens); loss curve: {out / 'run' / 'loss.png'}")
    return summary


if __name__ == "__main__":  # pragma: no cover - `python -m lmforge.training.pretrain --config …`
    from lmforge.cli import main

    main(["pretrain", *sys.argv[1:]])
