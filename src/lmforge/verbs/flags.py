"""Flag groups: a dataclass parameter of a verb whose fields are the verb's own top-level flags.

    def generate(model: Annotated[ModelArgs, Flat()], *, prompt: str = "…",
                 sampling: Annotated[SamplingParams, SAMPLING] = cli_sampling(max_new_tokens=128)) -> None:

`lmforge generate` then has `--temperature`, not `--sampling.temperature`: `lmforge.cli` adds each
field of a `Flat` parameter's dataclass to the verb's parser (the field's docstring is its help, the
parameter's default instance gives the defaults) and builds the dataclass from those flags before it
calls the verb. From Python the verb takes the dataclass itself. So a group (how a model is loaded,
how tokens are sampled, how the server behaves) is written once, as one dataclass, and every verb
that has those flags reuses it.

A parameter whose dataclass is not marked `Flat` (pretrain's `train: TrainArgs`) stays a nested
group: `--train.lr`, `train:` in YAML.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmforge.inference import Quantize
from lmforge.sampling import SamplingParams


@dataclass(frozen=True)
class Flat:
    """Marks a verb parameter (a dataclass) whose fields are the verb's top-level flags.

    Attributes:
        skip: fields that are not flags (they keep the default instance's, or the dataclass's, values).
    """

    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class FlatParam:
    """One `Flat` parameter of a verb, as `flat_params` finds it."""

    cls: type
    """The dataclass."""
    flat: Flat
    """Its marker."""
    default: Any
    """The parameter's default instance (its values are the flags' defaults), or None."""

    @property
    def flags(self) -> list[str]:
        """The dataclass fields that are flags."""
        return [f.name for f in dataclasses.fields(self.cls) if f.init and f.name not in self.flat.skip]

    def build(self, values: dict[str, Any]) -> Any:
        """The dataclass from the flags' parsed `values` (its `__post_init__` checks run here)."""
        flags = {name: values[name] for name in self.flags}
        return dataclasses.replace(self.default, **flags) if self.default is not None else self.cls(**flags)


def flat_params(fn: Callable) -> dict[str, FlatParam]:
    """The `Flat` parameters of `fn`, by name, in signature order."""
    import inspect

    hints = typing.get_type_hints(fn, include_extras=True)
    found = {}
    for name, param in inspect.signature(fn).parameters.items():
        hint = hints.get(name)
        marks = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Flat)]
        if marks:
            default = None if param.default is inspect.Parameter.empty else param.default
            found[name] = FlatParam(hint.__origin__, marks[0], default)
    return found


# ---------------------------------------------------------------------------------------------
# the groups several verbs share
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelArgs:
    """The model and how to load it (the arguments of `LLM.load`)."""

    source: str
    """An lmforge checkpoint dir, an HF model dir, a .gguf file, or an HF repo id."""
    device: str | None = None
    """cpu, cuda, cuda:N or auto (default: cuda when available)."""
    dtype: str | None = None
    """float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA)."""
    quantize: Quantize = "none"
    """CPU inference mode: int8 or bf16 stores the weights that way (weight-only, fewer bytes per token);
    none: as loaded."""
    tokenizer_pre: str | None = None
    """A GGUF's pre-tokenizer by llama.cpp's name (gpt2, llama3, qwen2, ...), over its tokenizer.ggml.pre
    (needed when lmforge does not know the file's)."""


# sampling flags: SamplingParams' fields but the ones a command line has no use for
SAMPLING = Flat(skip=("stop_token_ids", "ignore_eos"))


def cli_sampling(max_new_tokens: int) -> SamplingParams:
    """The command line's sampling defaults: temperature 0.8, top-k 50 (as LitGPT's), a verb's length."""
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.8, top_k=50)


