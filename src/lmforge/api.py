"""The Python API: `LLM.load(SOURCE)` gives a model, its tokenizer and config in one object.

    from lmforge import LLM
    llm = LLM.load("path/to/checkpoint")     # lmforge dir, HF dir, .gguf file or HF repo id
    logits = llm.model(ids)                  # [B, T, vocab]
    llm.save("out/dir")
    llm.generate("Once upon a time", max_new_tokens=50)           # -> str (greedy by default)
    llm.generate(["a", "b"], temperature=0.8, seed=1)           # -> list[str], batched
    llm.generate([[1, 2, 3], [4, 5]])                            # -> list[str]: token ids, batched
    for piece in llm.generate("Hi", stream=True): ...           # -> text pieces
    llm.chat([{"role": "user", "content": "What is the capital of France?"}])
    llm.chat([[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Bye"}]])  # -> list[str], batched
    llm.benchmark()                                             # -> {"ttft_s": …, "tokens_per_s": …}
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import torch

    from lmforge.sampling import SamplingParams

    from lmforge.config import Config
    from lmforge.inference import Quantize
    from lmforge.model import GPT
    from lmforge.tokenizer import Tokenizer


class LLM:
    """A loaded model with its tokenizer and config."""

    def __init__(self, model: GPT, tokenizer: Tokenizer | None, config: Config, source: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.source = source

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None, quantize: Quantize | None = "none",
             tokenizer_pre: str | None = None) -> LLM:
        """Load from an lmforge checkpoint dir, an HF model dir, a .gguf file or an HF repo id.

        `quantize="int8"` (or "bf16") stores the weights that way for faster CPU decoding; on CPU the
        model runs on lmforge's kernels (`lmforge.inference.prepare_for_inference`). `tokenizer_pre`
        names the llama.cpp pre-tokenizer of a GGUF vocabulary, over the file's `tokenizer.ggml.pre`.
        """
        from lmforge.checkpoint import load_source
        from lmforge.inference import check_quantize, prepare_for_inference

        mode = check_quantize(quantize)  # before the (slow) load
        model, tokenizer, config = load_source(source, device=device, dtype=dtype, tokenizer_pre=tokenizer_pre)
        prepare_for_inference(model, mode)
        return cls(model, tokenizer, config, source=str(source))

    @property
    def device(self) -> torch.device:
        return self.model.device

    def save(self, out_dir: str | Path) -> Path:
        """Write an lmforge checkpoint (model.safetensors + config.json + tokenizer files)."""
        from lmforge.checkpoint import save_checkpoint

        return save_checkpoint(out_dir, self.model, self.config, self.tokenizer)

    # -- generation -------------------------------------------------------------------------
    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise LmforgeError(f"{self.source or 'this model'} has no tokenizer; pass token ids, "
                               "or load a checkpoint that has tokenizer files")
        return self.tokenizer

    def _encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self._require_tokenizer().encode(prompt)
        return [int(t) for t in prompt]

    def generate(
        self,
        prompt: str | list[str] | list[int] | list[list[int]],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stream: bool = False,
        draft: LLM | None = None,
        speculative_k: int = 4,
        ignore_eos: bool = False,
        max_batch_size: int = 8,
        stop_token_ids: list[int] | None = None,
    ) -> str | list[str] | Iterator[str]:
        """Complete a prompt (or a batch of prompts).

        Args:
            prompt: a string, a list of strings (generated together, batched), token ids, or a list
                of token-id lists (batched).
            max_new_tokens: stop after this many tokens.
            temperature: 0 is greedy; > 0 samples.
            top_k / top_p / min_p / repetition_penalty: sampling filters (see `SamplingParams`).
            seed: makes sampling reproducible.
            stop: string(s) that end the completion (not included).
            stream: return an iterator of text pieces instead of the whole string (one prompt).
            draft: a small model of the same vocabulary for speculative decoding (greedy only;
                the output is identical to greedy decoding without it).
            speculative_k: draft tokens proposed per target forward.
            ignore_eos: keep going past EOS (benchmarks).
            max_batch_size: rows decoded at once for a list of prompts.
            stop_token_ids: extra ids that end the completion like EOS.

        Returns:
            str for one prompt, list[str] for a list, or an iterator of str pieces with `stream=True`.
        """
        from lmforge.sampling import SamplingParams

        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                min_p=min_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop or [],
                                ignore_eos=ignore_eos, stop_token_ids=stop_token_ids or [])
        batch = isinstance(prompt, (list, tuple)) and bool(prompt) and isinstance(prompt[0], (str, list, tuple))
        if batch:
            if stream:
                raise LmforgeError("stream=True takes one prompt, not a list")
            ids = [self._encode(p) for p in prompt]
        else:
            ids = [self._encode(prompt)]
        return self._run(ids, params, stream=stream, batch=batch, draft=draft, k=speculative_k,
                         max_batch_size=max_batch_size)

    def _run(self, ids: list[list[int]], params: SamplingParams, stream: bool, batch: bool,
             draft: LLM | None, k: int, max_batch_size: int) -> str | list[str] | Iterator[str]:
        from lmforge import generate as gen

        if draft is not None:
            if not params.greedy or params.repetition_penalty != 1.0:
                raise LmforgeError("speculative decoding (draft=…) supports greedy decoding only "
                                   "(temperature=0, repetition_penalty=1)")
            if stream:
                return gen.speculative_stream(self.model, draft.model, ids[0], params, k, self.tokenizer)
            outs = [gen.speculative_generate(self.model, draft.model, p, params, k, self.tokenizer).text for p in ids]
            return outs if batch else outs[0]
        if stream:
            return gen.stream(self.model, self.tokenizer, ids[0], params)
        out = gen.generate(self.model, self.tokenizer, ids, params, max_batch_size=max_batch_size)
        texts = [c.text for c in out]
        return texts if batch else texts[0]

    def chat(self, messages: Sequence[dict[str, str]] | Sequence[Sequence[dict[str, str]]],
             prompt_style: str | None = None, stream: bool = False, **sampling: Any) -> str | list[str] | Iterator[str]:
        """Reply to a conversation (or a list of them), formatted with the model's chat template (or a
        built-in style).

        Args:
            messages: `[{"role": "system"|"user"|"assistant", "content": "…"}, …]`, or a list of such
                conversations (replied to together, batched).
            prompt_style: None (the model's template, else detected), "template", or a built-in
                style (`default`, `alpaca`, `chatml`, `llama2`, `llama3`, `phi2`, `phi3`, `gemma`).
            stream: return an iterator of text pieces.
            **sampling: any keyword of `generate` (max_new_tokens, temperature, top_p, seed, stop …).

        Returns:
            The assistant's reply (str), a list of replies for a list of conversations, or an iterator
            of the reply's pieces.
        """
        from lmforge import prompts

        tok = self._require_tokenizer()
        batch = bool(messages) and isinstance(messages[0], (list, tuple))
        ids = [prompts.encode_chat(m, tok, self.config, prompt_style) for m in (messages if batch else [messages])]
        stop = sampling.pop("stop", None) or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        stop += prompts.stop_strings(tok, self.config, prompt_style)
        stop_ids = list(sampling.pop("stop_token_ids", None) or []) + prompts.stop_tokens(tok, self.config, prompt_style)
        return self.generate(ids if batch else ids[0], stream=stream, stop=stop, stop_token_ids=stop_ids, **sampling)

    @functools.cached_property
    def classes(self) -> list[str] | None:
        """The class names of a classifier checkpoint (`lmforge finetune classify`), else None (read
        once: the server asks on every /v1/classify request)."""
        from lmforge.finetune.common import read_classes

        return read_classes(self.source) if self.source else None

    def classify(self, texts: str | Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """Classify texts with a classifier checkpoint (what `lmforge finetune classify` writes).

        Returns:
            One `{"label": name, "probability": p, "scores": {name: p, …}}` per text.
        """
        import torch

        from lmforge.finetune.classification import encode_texts, pad_id_of, predict

        classes = self.classes
        if classes is None:
            raise LmforgeError(f"{self.source or 'this model'} is not a classifier checkpoint (no classifier.json); "
                               "make one with `lmforge finetune classify`")
        texts = [texts] if isinstance(texts, str) else list(texts)
        tok = self._require_tokenizer()
        rows = encode_texts(tok, texts, self.config.block_size, truncate=True)
        probs = torch.softmax(predict(self.model, rows, pad_id_of(tok), batch_size), dim=-1)
        return [{"label": classes[int(p.argmax())], "probability": float(p.max()),
                 "scores": {c: float(x) for c, x in zip(classes, p)}} for p in probs]

    def benchmark(self, prompt_tokens: int = 32, new_tokens: int = 128, seed: int = 0) -> dict[str, Any]:
        """Time batch-1 greedy decoding of `new_tokens` after a random `prompt_tokens` prompt.

        Returns:
            dict with ttft_s, tokens_per_s (decode), total_s, prompt_tokens, new_tokens, device, dtype.
        """
        from lmforge.generate import benchmark

        out: dict[str, Any] = benchmark(self.model, prompt_tokens=prompt_tokens, new_tokens=new_tokens, seed=seed)
        out.update(device=str(self.device), dtype=str(self.model.dtype).removeprefix("torch."))
        return out

    def __repr__(self) -> str:
        return f"LLM({self.config.name!r}, {self.config.num_parameters():,} params, device={self.device})"
