"""`lmforge finetune classify|sft`: the finetune recipes (`lmforge.finetune`) from the command line.

    lmforge finetune classify --config spam-smollm2
    lmforge finetune sft --config tasks-smollm2 --train.max_steps 50
    lmforge finetune sft --init CKPT --data.train_file data.jsonl --method.name lora --method.lora.r 16

Each signature mirrors its config dataclass field for field (a test checks), so YAML keys == flags.
"""

from __future__ import annotations

from typing import Literal

from lmforge.finetune.classification import ClassifyConfig, ClassifyDataArgs
from lmforge.finetune.method import MethodArgs
from lmforge.finetune.instruction import SFTConfig, SFTDataArgs
from lmforge.training.config import EvalArgs, LogArgs, TrainArgs


def classify(
    init: str = "",
    data: ClassifyDataArgs = ClassifyDataArgs(),
    out_dir: str = "out/finetune",
    method: MethodArgs = MethodArgs(),
    pad_side: Literal["right", "left"] = "right",
    train: TrainArgs = TrainArgs(),
    eval: EvalArgs = EvalArgs(),  # noqa: A002 - the YAML key
    log: LogArgs = LogArgs(),
    device: str = "auto",
    precision: Literal["auto", "fp32", "bf16-mixed"] = "auto",
    devices: int = 1,
    strategy: Literal["ddp", "fsdp"] = "ddp",
    activation_checkpointing: bool | Literal["mlp", "auto"] = "auto",
    resume: bool | str = False,
    keep_checkpoints: int = 2,
) -> None:
    """Finetune a pretrained model into a text classifier (a Linear(d_model, classes) head).

    Args:
        init: The pretrained model: a SOURCE (checkpoint dir, .gguf, HF repo id) or an asset name.
        data: Labelled texts (CSV or JSONL).
        out_dir: Directory for checkpoints, logs, the final model, report.json and confusion.png.
        method: What trains: full, last_n, lora or head (the new head alone, on cached features).
        pad_side: Padding side of batches (the logits do not depend on it).
        train: Optimisation.
        eval: Periodic evaluation and checkpointing.
        log: Logging.
        device: cpu, cuda or auto.
        precision: fp32, bf16-mixed or auto.
        devices: Processes to train with (> 1 launches torchrun).
        strategy: ddp or fsdp (with several processes).
        activation_checkpointing: Recompute activations in the backward: true (each block's), mlp
            (only the MLPs': most of the memory saving, less recompute), false, or auto (mlp with LoRA,
            else false).
        resume: true (latest checkpoint in out_dir) or a checkpoint dir.
        keep_checkpoints: Training checkpoints kept.
    """
    from lmforge.finetune import classify as run

    args = locals()
    run(ClassifyConfig(**{k: v for k, v in args.items() if k != "run"}))


def sft(
    init: str = "",
    data: SFTDataArgs = SFTDataArgs(),
    out_dir: str = "out/finetune",
    method: MethodArgs = MethodArgs(),
    train: TrainArgs = TrainArgs(),
    eval: EvalArgs = EvalArgs(),  # noqa: A002 - the YAML key
    log: LogArgs = LogArgs(),
    device: str = "auto",
    precision: Literal["auto", "fp32", "bf16-mixed"] = "auto",
    devices: int = 1,
    strategy: Literal["ddp", "fsdp"] = "ddp",
    activation_checkpointing: bool | Literal["mlp", "auto"] = "auto",
    resume: bool | str = False,
    keep_checkpoints: int = 2,
) -> None:
    """Instruction-finetune a language model (Alpaca or chat JSONL, or the generated tasks).

    Args:
        init: The pretrained model: a SOURCE (checkpoint dir, .gguf, HF repo id) or an asset name.
        data: Instruction data, packing and prompt masking.
        out_dir: Directory for checkpoints, logs, the final model and report.json.
        method: What trains: full, last_n or lora (with merge and a PEFT adapter dir).
        train: Optimisation.
        eval: Periodic val loss, samples and checkpoints.
        log: Logging.
        device: cpu, cuda or auto.
        precision: fp32, bf16-mixed or auto.
        devices: Processes to train with (> 1 launches torchrun).
        strategy: ddp or fsdp (with several processes).
        activation_checkpointing: Recompute activations in the backward: true (each block's), mlp
            (only the MLPs': most of the memory saving, less recompute), false, or auto (mlp with LoRA,
            else false).
        resume: true (latest checkpoint in out_dir) or a checkpoint dir.
        keep_checkpoints: Training checkpoints kept.
    """
    from lmforge.finetune import sft as run

    args = locals()
    run(SFTConfig(**{k: v for k, v in args.items() if k != "run"}))
