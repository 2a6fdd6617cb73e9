"""How a loaded model runs: the one place that decides kernels, fusion and weight format.

    from lmforge.inference import prepare_for_inference
    model = prepare_for_inference(model, quantize="int8")   # LLM.load does this for you

`quantize` is one of `QUANTIZE_MODES`:
- "none": the weights as loaded (fp32 on CPU, bf16 on CUDA);
- "int8": weight-only int8 with one fp32 scale per output channel (4x fewer bytes per token);
- "bf16": weight-only bf16 (2x fewer).

On CPU, with the C kernels available (a compiler and AVX2; `LMFORGE_NO_KERNELS=1` turns them off),
the model gets a runner (`GPT.runner`, a `lmforge.fast_decode.FastDecoder`): each decoding step
runs every layer in one kernel call and a prompt of 2+ tokens runs the layers with reused buffers.
Quantized models also get their q/k/v and gate/up projections fused into one product each, held by
the runner. Everything else (a GPU, a model the kernels do not cover, training) runs `GPT.forward`'s
plain layer loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.model import GPT

Quantize = Literal["none", "int8", "bf16"]
QUANTIZE_MODES: tuple[str, ...] = get_args(Quantize)


def check_quantize(quantize: str | None) -> Quantize:
    """The quantize mode, validated (None means "none"); one line naming the choices otherwise."""
    mode = "none" if quantize is None else quantize
    if mode not in QUANTIZE_MODES:
        raise LmforgeError(f"quantize {quantize!r} is not one of: {', '.join(QUANTIZE_MODES)}")
    return mode  # type: ignore[return-value]


def prepare_for_inference(model: GPT, quantize: str | None = "none") -> GPT:
    """Make `model` (in place) ready for inference: eval mode, the weight format `quantize` asks
    for, and on CPU the kernels' runner. Returns the model.

    The one place that decides how a model runs: `LLM.load` calls it; the `Engine`, `generate` and
    the server take the model as it is given.
    """
    mode = check_quantize(quantize)
    model.eval()
    fusion = {}
    if mode != "none":
        from lmforge.quantize import fuse_projections, quantize_model

        quantize_model(model, mode)
        fusion = fuse_projections(model)
    model.runner = None
    if model.device.type == "cpu":
        from lmforge.fast_decode import install_fast_decode

        install_fast_decode(model, fusion)
    return model
