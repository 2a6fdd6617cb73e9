"""What the finetune recipes share: the settings, the pretrained model with its method applied, an
epoch-by-epoch batch source, checkpoint files (merged weights + the PEFT adapter beside them) and
the run around `training.loop.train_loop`.

A finetune checkpoint directory (each `checkpoints/step-N/` and `final/`) is an lmforge checkpoint:

    model.safetensors, config.json, tokenizer files    the model with any LoRA merged (loads anywhere)
    classifier.json                                     a classifier's class names (finetune classify)
    adapter/                                            lora: the adapter alone in PEFT's format
    trainable.safetensors                               lora: the trained tensors by our names (resume)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmforge.finetune.method import MethodArgs
from lmforge.training import config as _config
from lmforge.training.config import EvalArgs, LogArgs, TrainArgs, TrainConfigError

if TYPE_CHECKING:
    import torch

    from lmforge.config import Config
    from lmforge.model import GPT
    from lmforge.tokenizer import Tokenizer

CLASSIFIER_FILE = "classifier.json"
TRAINABLE_FILE = "trainable.safetensors"
ADAPTER_DIR = "adapter"


@dataclass
class FinetuneArgs:
    """The settings both recipes share (each recipe's config adds its `data` group)."""

    init: str = ""
    """The pretrained model: a SOURCE (lmforge/HF checkpoint dir, .gguf, HF repo id)."""
    out_dir: str = "out/finetune"
    """Directory for checkpoints, logs, the final model and the report."""
    method: MethodArgs = field(default_factory=MethodArgs)
    """What trains: full, last_n, lora or head (classification)."""
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
    devices: int = 1
    """Processes to train with; > 1 launches torchrun with this many (ignored inside torchrun)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Multi-process strategy (as in pretraining)."""
    activation_checkpointing: bool | Literal["mlp", "auto"] = "auto"
    """Recompute activations in the backward pass: true (each block's: least memory), mlp (only each
    MLP's: most of the saving at less recompute), false, or auto: mlp when LoRA trains (a LoRA step then
    peaks at under half a full finetune's memory, still ~1.4x transformers + peft's speed), else false.
    See benchmarks/README.md (finetuning)."""
    resume: bool | str = False
    """Continue an interrupted run: true (latest checkpoint in out_dir) or a checkpoint directory."""
    keep_checkpoints: int = 2
    """Training checkpoints kept under out_dir/checkpoints."""

    def __post_init__(self) -> None:
        for name, cls in (("method", MethodArgs), ("train", TrainArgs), ("eval", EvalArgs), ("log", LogArgs),
                          *self.data_group()):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _config.build(cls, value, name))
        if not self.init:
            raise TrainConfigError("init is required: the pretrained model to finetune (a checkpoint dir, .gguf or repo id)")
        _config.check_run_options(self)

    def data_group(self) -> list[tuple[str, type]]:
        return []

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(d["train"]["betas"])
        return d


# ---------------------------------------------------------------------------------------------
# the batch source: seeded epochs, resumable by (epoch, index)
# ---------------------------------------------------------------------------------------------
class EpochBatches:
    """Micro-batches epoch after epoch; `make_epoch(epoch)` returns one epoch's batches in a seeded
    order, so (epoch, index) is all a resume needs. Each process takes every `world_size`-th batch."""

    def __init__(self, make_epoch: Callable[[int], list], rank: int = 0, world_size: int = 1) -> None:
        self.make_epoch, self.rank, self.world_size = make_epoch, rank, world_size
        self.epoch, self.index, self._epoch_batches = 0, 0, None

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> Any:
        for _ in range(3):  # an epoch with no batch for this rank moves on (bounded)
            if self._epoch_batches is None:
                self._epoch_batches = self.make_epoch(self.epoch)[self.rank::self.world_size]
            if self.index < len(self._epoch_batches):
                self.index += 1
                return self._epoch_batches[self.index - 1]
            self.epoch, self.index, self._epoch_batches = self.epoch + 1, 0, None
        raise TrainConfigError("the training data gives no batch to this process; use more data or fewer processes")

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index, self._epoch_batches = int(state["epoch"]), int(state["index"]), None
        self.rank = int(state.get("rank", self.rank))


# ---------------------------------------------------------------------------------------------
# the model: the pretrained weights (+ a classifier head), the method, and its checkpoint files
# ---------------------------------------------------------------------------------------------
def load_pretrained(source: str) -> tuple[Config, dict[str, torch.Tensor], Tokenizer]:
    """(config, fp32 state dict, tokenizer) of the model to finetune; it must have a tokenizer."""
    from lmforge.checkpoint import load_source_parts
    from lmforge.errors import LmforgeError

    config, sd, tokenizer = load_source_parts(source)
    if tokenizer is None:
        raise LmforgeError(f"{source}: no tokenizer files beside the weights; finetuning needs the model's tokenizer")
    return config, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, tokenizer


def build_model(config: Config, sd: dict[str, torch.Tensor], method: MethodArgs,
                num_classes: int | None = None, seed: int = 0) -> tuple[GPT, list[str]]:
    """A fresh trainable copy: the pretrained weights (a new seeded `Linear(d, C)` head for a
    classifier), `method` applied; returns it and its trainable parameter names."""
    import torch
    from torch import nn

    from lmforge.model import GPT

    from lmforge.finetune.method import apply_method

    # the random inits (head, LoRA A) draw from a copy of the RNG: a copy built for a checkpoint
    # mid-run leaves the run's random stream (dropout) as it was, so a resumed run stays exact
    with torch.random.fork_rng(devices=[]):
        model = GPT.from_state_dict(config, {k: v.clone() for k, v in sd.items()})
        if num_classes is not None:
            torch.manual_seed(seed)
            model.lm_head = nn.Linear(config.n_embd, num_classes, bias=False)
        model.train()
        return model, apply_method(model, method, head_trains=num_classes is not None)


def saved_config(config: Config, classifier: bool) -> Config:
    """The config a checkpoint records: a classifier's head is its own (never tied to the embeddings)."""
    return dataclasses.replace(config, tie_embeddings=False) if classifier and config.tie_embeddings else config


def model_saver(config: Config, tokenizer: Tokenizer, method: MethodArgs, trainable: list[str],
                make_copy: Callable[[], GPT], classes: list[str] | None = None,
                ) -> Callable[[Path, dict[str, torch.Tensor]], None]:
    """The loop's `save_model`: writes a checkpoint dir as the module docstring lays out."""
    from lmforge.checkpoint import save_checkpoint

    def save(path: Path, msd: dict[str, torch.Tensor]) -> None:
        if method.name == "lora":
            from safetensors.torch import save_file

            from lmforge.finetune.method import plain_state_dict

            save_file({k: msd[k].contiguous().cpu() for k in trainable}, str(path / TRAINABLE_FILE))
            model = make_copy()
            model.load_state_dict(msd)
            _save_adapter(model, config, method, path / ADAPTER_DIR)
            msd = plain_state_dict(model)
        save_checkpoint(path, msd, saved_config(config, classes is not None), tokenizer)
        if classes is not None:
            (path / CLASSIFIER_FILE).write_text(json.dumps({"classes": classes}, indent=2) + "\n")

    return save


def _save_adapter(model: GPT, config: Config, method: MethodArgs, out: Path) -> None:
    """The PEFT adapter (what HF's PEFT loads on our `--to hf` export); a family whose projections
    HF stores fused cannot hold one: the checkpoint then has the merged model only."""
    from lmforge.convert.peft import save_peft_adapter
    from lmforge.errors import LmforgeError

    try:
        save_peft_adapter(model, config, method.lora, out)
    except LmforgeError as e:
        print(f"note: no PEFT adapter dir ({e})", flush=True)


def load_for_resume(model: GPT, checkpoint: Path, method: MethodArgs) -> None:
    """Put a checkpoint's trained weights into the freshly built `model` (same method applied)."""
    import torch

    from lmforge.checkpoint import load_weights
    from lmforge.errors import LmforgeError

    if method.name == "lora":
        tensors = load_weights(checkpoint / TRAINABLE_FILE)
    else:
        tensors = load_weights(checkpoint / "model.safetensors")
        if getattr(model.config, "tie_embeddings", False) and "lm_head.weight" not in tensors:
            tensors["lm_head.weight"] = tensors["embed_tokens.weight"]
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise LmforgeError(f"{checkpoint}: weights do not match this run's model (unexpected {unknown[:3]})")
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v)


def read_classes(path: str | Path) -> list[str] | None:
    """The class names of a classifier checkpoint dir, or None for a language model."""
    p = Path(path) / CLASSIFIER_FILE
    if not p.is_file():
        return None
    from lmforge._io import read_json
    from lmforge.errors import LmforgeError

    data = read_json(p, LmforgeError)
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise LmforgeError(f"{p}: expected {{\"classes\": [\"name\", …]}}")
    return classes


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def run(cfg: FinetuneArgs, verb: str, body: Callable[[FinetuneArgs, Any], dict[str, Any]]) -> dict[str, Any]:
    """`body(cfg, info)` in a process group (torchrun relaunch with `devices > 1`); its summary.
    `verb`: the CLI words that rerun the recipe (`finetune sft`, `align`)."""
    from lmforge.training.distributed import in_distributed_env

    if cfg.devices > 1 and not in_distributed_env():
        import yaml

        from lmforge._io import atomic_write_text
        from lmforge.training.distributed import launch

        out = Path(cfg.out_dir)
        path = out / "launch-config.yaml"
        atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        launch([*verb.split(), "--config", str(path)], cfg.devices)
        return json.loads((out / "summary.json").read_text())
    from lmforge.checkpoint import resolve_device
    from lmforge.training import distributed

    info = distributed.setup(resolve_device(cfg.device))
    try:
        return body(cfg, info)
    finally:
        distributed.teardown()


def check_batches(cfg: FinetuneArgs, world_size: int) -> None:
    t = cfg.train
    if t.global_batch_size % (t.micro_batch_size * world_size):
        raise TrainConfigError(f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
                               f"train.micro_batch_size x processes ({t.micro_batch_size} x {world_size})")


def loop_kwargs(cfg: FinetuneArgs, info: Any, resume: Path | None) -> dict[str, Any]:
    """The `train_loop` keywords both recipes pass the same way."""
    from lmforge.training.step import use_bf16

    return dict(train=cfg.train, eval=cfg.eval, log=cfg.log, out_dir=cfg.out_dir, info=info,
                bf16=use_bf16(cfg.precision, info.device), strategy=cfg.strategy,
                activation_checkpointing=checkpointing(cfg), keep_checkpoints=cfg.keep_checkpoints, resume=resume, run_config=cfg.to_dict())


def checkpointing(cfg: FinetuneArgs) -> bool | str:
    """The recompute `train_loop` gets: `activation_checkpointing`, with auto = mlp for LoRA, else off."""
    if cfg.activation_checkpointing != "auto":
        return cfg.activation_checkpointing
    trains = getattr(cfg, "trainable", cfg.method)  # align's `method` is its loss; `trainable` what trains
    return "mlp" if trains.name == "lora" else False


def local_path(value: str) -> str:
    """`value`, or the cached file of the lmforge asset of that name (`sms-spam`, `smollm2-135m-instruct`)."""
    from lmforge.assets import ASSETS, fetch_asset

    if value in ASSETS and not Path(value).exists():
        return str(fetch_asset(value))
    return value
