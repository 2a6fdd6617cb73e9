"""Request and error bodies of the HTTP API (OpenAI's schema, plus LitGPT's `/predict`).

Models are strict (`"5"` is not an int) so a wrong type is a 400 naming the field, never a
silent coercion; unknown fields are ignored as OpenAI's server does. The JSON Schema they produce
(GET /openapi.json) is the contract: a body valid against it is served or answered with one of
the 4xx codes documented there. Two JSON facts shape the types below: an integer may be written
`1.0` (JSON Schema calls it an integer), and a JSON string may hold a lone UTF-16 surrogate
(`"\\ud800"`), which no tokenizer can encode: it is replaced by U+FFFD, as `errors="replace"` does.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# the largest repetition_penalty (and 1/the smallest): beyond it the penalised logits overflow to inf
# or underflow to 0 in float32/bfloat16 and the sampler gets no usable distribution
MAX_REPETITION_PENALTY = 100.0

# LitGPT's /predict default
PREDICT_MAX_NEW_TOKENS = 50

_SURROGATE = re.compile("[\ud800-\udfff]")


def _integral(value: Any) -> Any:
    """`1.0` -> `1`: JSON Schema's integers include integral floats."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# a Literal compares with `==`: `true` would pass as 1 and `0` as false, which JSON Schema's const does not
def _number_one(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("Input should be 1")
    return _integral(value)


def _boolean_false(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("Input should be false")
    return value


def _replace_surrogates(value: Any) -> Any:
    return _SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value


Int = Annotated[int, BeforeValidator(_integral)]
One = Annotated[Literal[1], BeforeValidator(_number_one)]
Off = Annotated[Literal[False], BeforeValidator(_boolean_false)]
# bounds inside the type, so that they reach the JSON Schema of an optional field (`Count | None`)
Count = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
Index = Annotated[int, Field(ge=0), BeforeValidator(_integral)]
Text = Annotated[str, BeforeValidator(_replace_surrogates)]
NonEmptyText = Annotated[str, Field(min_length=1), BeforeValidator(_replace_surrogates)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class _Sampling(_Strict):
    """Sampling fields shared by the OpenAI endpoints (top_k, min_p, repetition_penalty are extensions)."""

    model: str | None = None
    max_tokens: Count | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 (or tiny): greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="tiny: keep only the most likely token")
    top_k: Index | None = None
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=1 / MAX_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY,
                                             description="1: off; > 1 discourages repeats")
    presence_penalty: float | None = Field(None, ge=0.0, le=0.0, description="not supported: only null or 0")
    frequency_penalty: float | None = Field(None, ge=0.0, le=0.0, description="not supported: only null or 0")
    stop: NonEmptyText | list[NonEmptyText] | None = None
    seed: Int | None = Field(None, description="any integer (taken modulo 2**64)")
    n: One = Field(1, description="only 1 (send several requests)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Count | None = None
    logprobs: Off | None = Field(None, description="not supported: only null or false")


class CompletionRequest(_Sampling):
    # a string, one string in a list, or token ids (a batch of prompts is not supported: send n requests)
    prompt: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=1)] | \
        Annotated[list[Index], Field(min_length=1)]
    # options this server does not implement: the schema admits only their "off" value
    echo: Off = Field(False, description="not supported: only false")
    suffix: None = Field(None, description="not supported: only null")
    logprobs: None = Field(None, description="not supported: only null")
    best_of: One | None = Field(None, description="not supported: only null or 1")


class PredictRequest(_Strict):
    """LitGPT's `/predict` body; defaults are LitGPT's serve defaults."""

    prompt: Text
    max_new_tokens: Count = Field(PREDICT_MAX_NEW_TOKENS, description="default: 50, or the server's limit if lower")
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_k: Index | None = 50
    top_p: float = Field(1.0, gt=0.0, le=1.0)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the server answers (OpenAI's shape)."""

    error: ErrorDetail


_Sampling.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()


class ClassifyRequest(_Strict):
    """`POST /v1/classify` body: one text or a list of texts, for a classifier checkpoint."""

    input: Text | Annotated[list[Text], Field(min_length=1, max_length=256)] = Field(
        description="a text, or a list of 1 to 256 texts")
