"""`lmforge align`: preference tuning (`lmforge.align`) from the command line.

    lmforge align --method dpo --config dpo-smollm2
    lmforge align --method kto --init CKPT --data.train_file kto.jsonl --trainable.name full

The signature mirrors `AlignConfig` field for field (a test checks), so YAML keys == flags.
"""

from __future__ import annotations

from typing import Literal

from lmforge.align.recipe import AlignConfig, AlignDataArgs, LossArgs
from lmforge.finetune.method import MethodArgs
from lmforge.training.config import EvalArgs, LogArgs, TrainArgs


def align(
    init: str = "",
    method: str = "dpo",
    data: AlignDataArgs = AlignDataArgs(),
    out_dir: str = "out/align",
    trainable: MethodArgs = MethodArgs(),
    loss: LossArgs = LossArgs(),
    reference: str = "auto",
    train: TrainArgs = TrainArgs(),
    eval: EvalArgs = EvalArgs(),
    log: LogArgs = LogArgs(),
    device: str = "auto",
    precision: Literal["auto", "fp32", "bf16-mixed"] = "auto",
    devices: int = 1,
    strategy: Literal["ddp", "fsdp"] = "ddp",
    activation_checkpointing: bool | Literal["mlp", "auto"] = "auto",
    resume: bool | str = False,
    keep_checkpoints: int = 2,
) -> None:
    """Preference-tune a language model: DPO, IPO, SimPO, ORPO or KTO.

    Args:
        init: The model to tune: a SOURCE (checkpoint dir, .gguf, HF repo id) or an asset name.
        method: The preference loss: dpo, ipo, simpo, orpo or kto.
        data: Preference pairs (or KTO records), or `tasks`.
        out_dir: Directory for checkpoints, logs, the final model, report.json and align.png.
        trainable: What trains: full, last_n or lora.
        loss: The loss's hyper-parameters (beta, label_smoothing, gamma, KTO weights, rpo_alpha).
        reference: The reference model: auto, lora, copy or cached.
        train: Optimisation (batch sizes count pairs).
        eval: Periodic held-out metrics and checkpoints.
        log: Logging.
        device: cpu, cuda or auto.
        precision: fp32, bf16-mixed or auto.
        devices: Processes to train with (> 1 launches torchrun).
        strategy: ddp or fsdp (with several processes).
        activation_checkpointing: Recompute activations in the backward: true (each block's), mlp
            (only the MLPs'), false, or auto (mlp with LoRA, else false).
        resume: true (latest checkpoint in out_dir) or a checkpoint dir.
        keep_checkpoints: Training checkpoints kept.
    """
    cfg = AlignConfig(**locals())
    from lmforge.align import align as run

    run(cfg)
