"""Text generation: one batched engine shared by `LLM.generate`, `lmforge chat`, the server and eval.

The `Engine` owns a KV cache of `max_batch_size` rows ("slots"), allocated once. Requests are
queued with `add`; each `step()` admits waiting requests into free slots (prefill, one request at
a time, each row at its own positions — no left padding), then runs ONE batched decode step for
every active row and returns one `Event` per request with the new token and its printable text.
A finished request frees its slot at once, so a waiting one joins on the next step (continuous
batching).

    engine = Engine(model, tokenizer, max_batch_size=4)
    engine.add(ids, SamplingParams(max_new_tokens=32), request_id="a")
    while engine.has_work():
        for ev in engine.step():
            print(ev.text, end="")

Text is produced incrementally (`Tokenizer.stream_decoder`): a multi-byte UTF-8 character split
across tokens is held back until complete, and text that could be the start of a stop string is
held back until it is known not to be one. A stop string ends the request ("stop") and is not emitted.

`speculative_generate` decodes greedily with a small draft model proposing `k` tokens that the
target verifies in one forward pass; its output is identical to plain greedy decoding.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from lmforge.errors import LmforgeError
from lmforge.sampling import SamplingParams, sample

if TYPE_CHECKING:
    import torch

    from lmforge.model import GPT, KVCache
    from lmforge.tokenizer import Tokenizer

FinishReason = Literal["stop", "length", "error"]

# padded tokens per batched prefill forward (requests admitted in the same step)
PREFILL_TOKENS = 4096
# prompt tokens decoded together with the first new tokens, so that tokenizers whose decode
# depends on the left context (SentencePiece's leading space) produce the right first piece
_DETOK_CONTEXT = 4


@dataclass
class Event:
    """What one `Engine.step()` produced for one request.

    Attributes:
        request_id: The id given to (or returned by) `Engine.add`.
        token_id: The token generated in this step.
        text: New printable text (may be "" while bytes or a possible stop string are held back).
        finished: True on the request's last event.
        finish_reason: "stop" (EOS or stop string), "length" (max_new_tokens or context full),
            "error" (this request failed; `error` says why, its neighbours go on), or None.
        prompt_tokens: Number of prompt tokens.
        completion_tokens: Tokens generated so far (including this one).
        error: Why the request failed (with finish_reason "error"; token_id is then -1).
    """

    request_id: str
    token_id: int
    text: str
    finished: bool
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass
class Completion:
    """A finished generation."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


# ---------------------------------------------------------------------------------------------
# incremental text: UTF-8-safe detokenization and stop strings
# ---------------------------------------------------------------------------------------------
def stream_decoder(tokenizer: Tokenizer, prompt_ids: Sequence[int]):
    """The tokenizer's UTF-8-safe incremental decoder, primed with the end of the prompt.

    Priming matters for tokenizers whose decode depends on the left context (SentencePiece drops
    the leading space of a text's first word): the first generated word keeps its space.
    """
    decoder = tokenizer.stream_decoder(skip_special_tokens=True)
    for t in prompt_ids[-_DETOK_CONTEXT:]:
        decoder.push(t)
    decoder.flush()  # discard the prompt's text
    return decoder


class StopMatcher:
    """Cut generated text at the first stop string, holding back possible stop-string starts."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop string was found)."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        # hold the longest tail that is a proper prefix of some stop string; text before it can
        # never be part of a stop string, so a stop never starts inside already-emitted text
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class _Output:
    """Per-request output state: token ids, text, EOS / stop strings / max_new_tokens."""

    def __init__(self, tokenizer: Tokenizer | None, prompt_ids: Sequence[int], params: SamplingParams,
                 eos_ids: set[int]) -> None:
        self.params = params
        self.eos_ids = set() if params.ignore_eos else eos_ids | set(params.stop_token_ids)
        self.token_ids: list[int] = []
        self.decoder = stream_decoder(tokenizer, prompt_ids) if tokenizer is not None else None
        self.stopper = StopMatcher(params.stop)
        if params.stop and tokenizer is None:
            raise LmforgeError("stop strings need a tokenizer (this model has none); use stop token ids instead")

    def push(self, token_id: int) -> tuple[str, FinishReason | None]:
        """Record one generated token; return (new text, finish reason or None)."""
        self.token_ids.append(token_id)
        if token_id in self.eos_ids:
            return self.close()[0], "stop"
        text = ""
        if self.decoder is not None:
            text, stopped = self.stopper.push(self.decoder.push(token_id))
            if stopped:
                return text, "stop"
        if len(self.token_ids) >= self.params.max_new_tokens:
            more, stopped = self.close()
            return text + more, "stop" if stopped else "length"
        return text, None

    def close(self) -> tuple[str, bool]:
        """Flush held-back text at the end; return (text, whether the flush completed a stop string)."""
        if self.decoder is None:
            return "", False
        text, stopped = self.stopper.push(self.decoder.flush())
        if not stopped:
            text += self.stopper.flush()
        return text, stopped


def eos_ids_of(tokenizer: Tokenizer | None, config) -> set[int]:
    """Every id that ends a generation: the tokenizer's and the config's EOS ids."""
    ids = set(config.eos_ids)
    if tokenizer is not None:
        ids |= set(getattr(tokenizer, "eos_ids", None) or [])
        if getattr(tokenizer, "eos_id", None) is not None:
            ids.add(tokenizer.eos_id)
    return ids


# ---------------------------------------------------------------------------------------------
# prefix cache: prompts that start alike share their keys and values
# ---------------------------------------------------------------------------------------------
class PrefixCache:
    """Keys and values of recently prefilled prompts, so that a prompt starting like one of them (a
    shared system prompt, a few-shot preamble, a conversation's earlier turns) prefills only the
    tokens after the common part. Keys/values at a position depend only on the tokens up to it, so
    the copied part is what the prompt's own prefill computes (up to float rounding of a
    differently-shaped product). Least recently used prompts are dropped past `max_bytes`.
    """

    def __init__(self, max_bytes: int = 64 << 20, min_tokens: int = 16) -> None:
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self._entries: OrderedDict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.tokens_saved = 0

    @staticmethod
    def _common(a: Sequence[int], b: Sequence[int]) -> int:
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    def lookup(self, prompt: Sequence[int]) -> tuple[int, tuple[list[torch.Tensor], list[torch.Tensor]] | None]:
        """The longest stored prefix of `prompt` (at most all but its last token) and its k/v."""
        best, entry, hit = 0, None, None
        for key, kv in self._entries.items():
            n = min(self._common(key, prompt), len(prompt) - 1)
            if n > best:
                best, entry, hit = n, kv, key
        if best < self.min_tokens:
            return 0, None
        self._entries.move_to_end(hit)
        self.hits += 1
        self.tokens_saved += best
        return best, entry

    def store(self, prompt: Sequence[int], cache: KVCache, row: int) -> None:
        """Keep the keys/values of `prompt`, now at positions 0..len-1 of cache row `row`."""
        n = len(prompt)
        if n < self.min_tokens or self.max_bytes <= 0:
            return
        key = tuple(prompt)
        if any(len(k) >= n and k[:n] == key for k in self._entries):
            return  # a longer stored prompt already covers it
        kv = ([k[row, :, :n].clone() for k in cache.k], [v[row, :, :n].clone() for v in cache.v])
        size = sum(t.numel() * t.element_size() for t in (*kv[0], *kv[1]))
        if size > self.max_bytes:
            return
        for old in [k for k in self._entries if len(k) < n and key[:len(k)] == k]:
            self._drop(old)  # prefixes of the new prompt: it covers them
        self._entries[key] = kv
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, ...]) -> None:
        k, v = self._entries.pop(key)
        self._bytes -= sum(t.numel() * t.element_size() for t in (*k, *v))


# ---------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------
@dataclass
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    out: _Output
    generator: torch.Generator | None = None
    history: torch.Tensor | None = None  # prompt + output ids, for the repetition penalty
    slot: int = -1
    pos: int = 0  # where the next fed token goes in the cache
    cached: int = 0  # prompt tokens whose keys/values came from the prefix cache
    next_token: int = -1  # sampled, not yet fed to the model
    finished: bool = False


@dataclass
class _Pending:
    waiting: deque = field(default_factory=deque)
    cancelled: set = field(default_factory=set)


class Engine:
    """Continuous-batching generation over one pre-allocated KV cache.

    Args:
        model: a `GPT` in eval mode.
        tokenizer: used for text output and stop strings; None gives token ids only (text "").
        max_batch_size: number of slots (KV-cache rows) decoding concurrently.
        max_seq_length: cache length (prompt + completion) per slot; default the model's block_size.
        prefix_cache: where prompts' keys/values are kept for later prompts that start alike
            (default a 64 MB `PrefixCache`; `PrefixCache(max_bytes=0)` turns it off).

    `add` and `cancel` may be called from any thread while one thread calls `step`.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer | None, max_batch_size: int = 8,
                 max_seq_length: int | None = None, prefix_cache: PrefixCache | None = None) -> None:
        import torch

        if max_batch_size < 1:
            raise LmforgeError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model  # as given: `lmforge.inference.prepare_for_inference` decides how it runs
        self.tokenizer = tokenizer
        self.config = model.config
        block = self.config.block_size
        self.max_seq_length = min(max_seq_length or block, block)
        self.max_batch_size = max_batch_size
        self.device = model.device
        self.cache = model.new_kv_cache(max_batch_size, self.max_seq_length)
        # one-row views of the cache: a lone active request decodes exactly like batch size 1
        self._row_caches = [self._cache_view(s, s + 1) for s in range(max_batch_size)]
        self._positions = torch.arange(self.max_seq_length, device=self.device)
        self._token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.eos_ids = eos_ids_of(tokenizer, self.config)
        self.slots: list[_Request | None] = [None] * max_batch_size
        self._lock = threading.Lock()
        self._pending = _Pending()
        self._ids = itertools.count()
        self._known: set[str] = set()
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache()

    def _cache_view(self, lo: int, hi: int) -> KVCache:
        from lmforge.model import KVCache

        return KVCache([k[lo:hi] for k in self.cache.k], [v[lo:hi] for v in self.cache.v])

    # -- requests -------------------------------------------------------------------------
    def add(self, prompt_ids: Sequence[int], params: SamplingParams | None = None,
            request_id: str | None = None) -> str:
        """Queue a request; return its id. Raises `LmforgeError` if the prompt does not fit."""
        import torch

        params = params or SamplingParams()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise LmforgeError("the prompt is empty (it needs at least one token)")
        if len(prompt) > self.max_seq_length:
            raise LmforgeError(f"prompt has {len(prompt)} tokens but the model's context is {self.max_seq_length}")
        vocab = self.config.vocab_size
        if max(prompt) >= vocab or min(prompt) < 0:
            bad = next(t for t in prompt if not 0 <= t < vocab)
            raise LmforgeError(f"prompt token id {bad} is outside the model's vocabulary (size {vocab})")
        req = _Request(id="", prompt=prompt, params=params,
                       out=_Output(self.tokenizer, prompt, params, self.eos_ids),
                       generator=params.make_generator(self.device))
        if params.repetition_penalty != 1.0:
            req.history = torch.empty(len(prompt) + params.max_new_tokens, dtype=torch.long, device=self.device)
            req.history[: len(prompt)] = torch.tensor(prompt)
        with self._lock:
            if request_id is None:
                request_id = f"req-{next(self._ids)}"
                while request_id in self._known:
                    request_id = f"req-{next(self._ids)}"
            elif request_id in self._known:
                raise LmforgeError(f"request id {request_id!r} is already in use")
            req.id = request_id
            self._known.add(request_id)
            self._pending.waiting.append(req)
        return request_id

    def cancel(self, request_id: str) -> bool:
        """Drop a request (waiting or running); its slot is freed by the next `step`."""
        with self._lock:
            if request_id not in self._known:
                return False
            for req in self._pending.waiting:
                if req.id == request_id:
                    self._pending.waiting.remove(req)
                    self._known.discard(request_id)
                    return True
            self._pending.cancelled.add(request_id)
            return True

    def has_work(self) -> bool:
        """True while any request is waiting or running."""
        with self._lock:
            if self._pending.waiting:
                return True
        return any(r is not None for r in self.slots)

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> list[Event]:
        """Admit waiting requests, run one decode step for all active rows, return the events.

        A failure while serving one request (its sampling settings, its prefill, its tokens) ends
        that request alone with an "error" event; the others go on.
        """
        import torch

        with torch.inference_mode():
            self._drop_cancelled()
            events: list[Event] = []
            fresh = self._admit(events)
            rows = [r for r in self.slots if r is not None and r.id not in fresh]
            if rows:
                self._isolated(self._decode, rows, events)
            return events

    def _isolated(self, run, reqs: list[_Request], events: list[Event]) -> None:
        """`run(reqs, events)`; if it raises, run each request alone and fail only those that raise.

        `run` raises only from its forward pass, before it changes any request (`_emit` isolates
        the rest), so running a request again is safe: its cache positions are simply rewritten.
        """
        try:
            run(reqs, events)
            return
        except Exception as e:
            if len(reqs) == 1:
                self._fail(reqs[0], e, events)
                return
        for req in reqs:
            if not req.finished:
                try:
                    run([req], events)
                except Exception as e:
                    self._fail(req, e, events)

    def _fail(self, req: _Request, exc: Exception, events: list[Event]) -> None:
        import logging

        logging.getLogger("lmforge.generate").warning("request %s failed: %s: %s", req.id, type(exc).__name__, exc)
        if not req.finished:
            self._free(req)
        events.append(Event(req.id, -1, "", True, "error", len(req.prompt), len(req.out.token_ids),
                            error=f"{type(exc).__name__}: {exc}"))

    def _free(self, req: _Request) -> None:
        self.slots[req.slot] = None
        req.finished = True
        with self._lock:
            self._known.discard(req.id)

    def _drop_cancelled(self) -> None:
        with self._lock:
            cancelled, self._pending.cancelled = self._pending.cancelled, set()
        if cancelled:
            for req in self.slots:
                if req is not None and req.id in cancelled:
                    self._free(req)

    def _admit(self, events: list[Event]) -> set[str]:
        """Prefill waiting requests into free slots (lowest first); each yields its first token."""
        admitted: list[_Request] = []
        while True:
            try:
                slot = self.slots.index(None)
            except ValueError:
                break
            with self._lock:
                if not self._pending.waiting:
                    break
                req = self._pending.waiting.popleft()
            req.slot = slot
            self.slots[slot] = req
            admitted.append(req)
        # a prompt that starts like one of the others admitted now waits for it (its keys/values
        # then come from the prefix cache); the rest are prefilled first
        first, later = [], []
        for req in admitted:
            shares = any(PrefixCache._common(req.prompt, f.prompt) >= self.prefix_cache.min_tokens for f in first)
            (later if shares and self.prefix_cache.max_bytes > 0 else first).append(req)
        for wave in (first, later):
            for req in wave:  # a prompt that starts like a recent one: copy that part of the cache
                n, kv = self.prefix_cache.lookup(req.prompt)
                if kv is not None:
                    for layer, (k, v) in enumerate(zip(*kv)):
                        self.cache.k[layer][req.slot, :, :n] = k[:, :n]
                        self.cache.v[layer][req.slot, :, :n] = v[:, :n]
                    req.cached = n
            # requests admitted together are prefilled together, up to ~PREFILL_TOKENS padded tokens
            # a forward: one large matrix product per weight instead of one small one per request
            group: list[_Request] = []
            width = 0  # longest new part of a prompt in the group
            for req in wave:
                new = len(req.prompt) - req.cached
                if group and max(width, new) * (len(group) + 1) > PREFILL_TOKENS:
                    self._isolated(self._prefill, group, events)
                    group, width = [], 0
                group.append(req)
                width = max(width, new)
            if group:
                self._isolated(self._prefill, group, events)
        return {r.id for r in admitted}

    def _prefill(self, reqs: list[_Request], events: list[Event]) -> None:
        import torch

        if len(reqs) == 1:  # a one-row view of the cache (no cached prefix: SDPA's unmasked causal kernel)
            req = reqs[0]
            start, n = req.cached, len(req.prompt)
            idx = torch.tensor([req.prompt[start:]], dtype=torch.long, device=self.device)
            logits = self.model(idx, input_pos=self._positions[start:n], cache=self._row_caches[req.slot],
                                logits_to_keep=1)[:, -1]
        else:
            # each row's new tokens (after its cached prefix), right-padded, at their positions in
            # their own cache rows; a padded position's keys/values are never attended (decoding
            # overwrites slot p before it attends to it; pads past the cache's end share its last slot)
            lengths = [len(r.prompt) - r.cached for r in reqs]
            T = max(lengths)
            idx = torch.zeros(len(reqs), T, dtype=torch.long, device=self.device)
            for i, r in enumerate(reqs):
                idx[i, :lengths[i]] = torch.tensor(r.prompt[r.cached:], dtype=torch.long)
            starts = torch.tensor([[r.cached] for r in reqs], device=self.device)
            pos = (starts + self._positions[:T]).clamp_(max=self.max_seq_length - 1)
            rows = torch.tensor([r.slot for r in reqs], device=self.device)
            hidden = self.model(idx, input_pos=pos, cache=self.cache, rows=rows, return_hidden=True)
            last = hidden[torch.arange(len(reqs), device=self.device), torch.tensor(lengths, device=self.device) - 1]
            logits = self.model.head(last)
        for r in reqs:
            self.prefix_cache.store(r.prompt, self.cache, r.slot)
        self._emit(logits, reqs, [len(r.prompt) for r in reqs], events)

    def _decode(self, rows: list[_Request], events: list[Event]) -> None:
        import torch

        if len(rows) == 1:
            # fast path: a one-row view of the cache, shared positions, no mask
            req = rows[0]
            self._token.fill_(req.next_token)
            logits = self.model(self._token, input_pos=self._positions[req.pos:req.pos + 1],
                                cache=self._row_caches[req.slot], logits_to_keep=1)
            last = logits[:, -1]
        else:
            # the active rows only, each at its own cache row and position: free slots between
            # them are neither computed nor written (a request admitted there keeps its prefill)
            idx = torch.tensor([[r.next_token] for r in rows], dtype=torch.long, device=self.device)
            input_pos = torch.tensor([[r.pos] for r in rows], dtype=torch.long, device=self.device)
            slots = torch.tensor([r.slot for r in rows], dtype=torch.long, device=self.device)
            last = self.model(idx, input_pos=input_pos, cache=self.cache, rows=slots, logits_to_keep=1)[:, -1]
        self._emit(last, rows, [r.pos + 1 for r in rows], events)

    def _emit(self, logits: torch.Tensor, rows: list[_Request], positions: list[int], events: list[Event]) -> None:
        """Sample each row's next token from its logits (B, V) and record it; the row's cache now
        holds everything before `positions`. A row whose sampling or output fails fails alone."""
        try:
            tokens = self._sample(logits, rows)
        except Exception:  # one row's settings: sample row by row to find it
            tokens = []
            for i, r in enumerate(rows):
                try:
                    tokens.append(self._sample(logits[i:i + 1], [r])[0])
                except Exception as e:
                    self._fail(r, e, events)
                    tokens.append(None)
        for r, t, p in zip(rows, tokens, positions):
            if t is None:
                continue
            r.pos = p
            try:
                events.append(self._accept(r, t))
            except Exception as e:
                self._fail(r, e, events)

    def _sample(self, logits: torch.Tensor, rows: list[_Request]) -> list[int]:
        histories = None
        if any(r.history is not None for r in rows):
            histories = [None if r.history is None else r.history[: len(r.prompt) + len(r.out.token_ids)] for r in rows]
        out = sample(logits, [r.params for r in rows], [r.generator for r in rows], histories)
        return out.tolist()

    def _accept(self, req: _Request, token: int) -> Event:
        if req.history is not None:
            req.history[len(req.prompt) + len(req.out.token_ids)] = token
        text, reason = req.out.push(token)
        if reason is None and req.pos >= self.max_seq_length:
            # the context is full: there is no room to feed this token back
            more, stopped = req.out.close()
            text, reason = text + more, "stop" if stopped else "length"
        req.next_token = token
        if reason is not None:
            self._free(req)
        return Event(req.id, token, text, reason is not None, reason, len(req.prompt), len(req.out.token_ids))

    # -- conveniences -----------------------------------------------------------------------
    def run(self, prompts: Sequence[Sequence[int]],
            params: SamplingParams | Sequence[SamplingParams]) -> list[Completion]:
        """Generate for several prompts (batched, continuous) and return them in order."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        ids = [self.add(p, sp) for p, sp in zip(prompts, params)]
        texts: dict[str, list[str]] = {i: [] for i in ids}
        tokens: dict[str, list[int]] = {i: [] for i in ids}
        reasons: dict[str, FinishReason | None] = {}
        errors: list[str] = []
        while self.has_work():
            for ev in self.step():
                if ev.request_id not in texts:
                    continue  # another caller's request sharing this engine
                if ev.error is not None:
                    errors.append(ev.error)
                    continue
                texts[ev.request_id].append(ev.text)
                tokens[ev.request_id].append(ev.token_id)
                if ev.finished:
                    reasons[ev.request_id] = ev.finish_reason
        if errors:
            raise LmforgeError(f"generation failed: {errors[0]}")
        return [Completion("".join(texts[i]), tokens[i], reasons.get(i), len(p)) for i, p in zip(ids, prompts)]

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> Iterator[Event]:
        """Yield the events of one request (other queued requests advance too)."""
        rid = self.add(prompt_ids, params)
        try:
            while True:
                for ev in self.step():
                    if ev.request_id == rid:
                        if ev.error is not None:
                            raise LmforgeError(f"generation failed: {ev.error}")
                        yield ev
                        if ev.finished:
                            return
                if not self.has_work():
                    return
        finally:
            self.cancel(rid)


def _engine_length(model: GPT, prompts: Sequence[Sequence[int]], params: SamplingParams,
                   max_seq_length: int | None) -> int:
    """A cache just long enough for these prompts (a full-context cache can be gigabytes)."""
    if max_seq_length:
        return max_seq_length
    longest = max((len(p) for p in prompts), default=1)
    return min(longest + params.max_new_tokens, model.config.block_size)


def generate(
    model: GPT,
    tokenizer: Tokenizer | None,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    max_batch_size: int = 8,
    max_seq_length: int | None = None,
) -> Completion | list[Completion]:
    """Generate a completion for one prompt (list of ids) or several (list of lists, batched).

    Args:
        model: the model (eval mode).
        tokenizer: for text and stop strings (None: token ids only).
        prompt_ids: one prompt's token ids, or a list of prompts.
        params: sampling settings (default greedy, 256 new tokens).
        max_batch_size: rows decoded at once for a list of prompts.
        max_seq_length: cache length; default the longest prompt + max_new_tokens.

    Returns:
        A `Completion`, or a list of them in the order of the prompts.
    """
    params = params or SamplingParams()
    single = bool(prompt_ids) and not isinstance(prompt_ids[0], (list, tuple))
    prompts = [list(prompt_ids)] if single else [list(p) for p in prompt_ids]
    if not prompts:
        return []
    _check_prompt_lengths(model, prompts)
    length = _engine_length(model, prompts, params, max_seq_length)
    engine = Engine(model, tokenizer, max_batch_size=min(max_batch_size, len(prompts)), max_seq_length=length)
    out = engine.run(prompts, params)
    return out[0] if single else out


class TextStream:
    """An iterator of text pieces that records the token counts and finish reason as it goes."""

    def __init__(self, events: Iterator[tuple[str, int, FinishReason | None]], prompt_tokens: int) -> None:
        self._events = events
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.token_ids: list[int] = []

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        while True:
            text, token, reason = next(self._events)  # StopIteration ends the stream
            self.token_ids.append(token)
            self.completion_tokens += 1
            self.finish_reason = reason
            if text:
                return text


def stream(
    model: GPT,
    tokenizer: Tokenizer | None,
    prompt_ids: Sequence[int],
    params: SamplingParams | None = None,
    max_seq_length: int | None = None,
) -> TextStream:
    """Iterate over the completion of one prompt as printable text pieces (never a split character)."""
    params = params or SamplingParams()
    _check_prompt_lengths(model, [prompt_ids])
    engine = Engine(model, tokenizer, max_batch_size=1,
                    max_seq_length=_engine_length(model, [prompt_ids], params, max_seq_length))
    events = ((ev.text, ev.token_id, ev.finish_reason) for ev in engine.stream(prompt_ids, params))
    return TextStream(events, len(prompt_ids))


def _check_prompt_lengths(model: GPT, prompts: Sequence[Sequence[int]]) -> None:
    ctx = model.config.block_size
    for p in prompts:
        if len(p) > ctx:
            raise LmforgeError(f"prompt has {len(p)} tokens but the model's context is {ctx}")


# ---------------------------------------------------------------------------------------------
# speculative decoding
# ---------------------------------------------------------------------------------------------
@dataclass
class SpeculativeStats:
    """How well the draft guessed: accepted / proposed draft tokens, target forward passes."""

    proposed: int = 0
    accepted: int = 0
    target_calls: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def speculative_tokens(
    model: GPT,
    draft: GPT,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    k: int = 4,
    eos_ids: set[int] | None = None,
    stats: SpeculativeStats | None = None,
) -> Iterator[int]:
    """Yield greedy tokens of `model`, `k` at a time proposed by `draft` and verified at once.

    Both caches keep every token up to the current one; rejecting draft tokens only rewinds the
    position counters (entries past the current position are masked out and later overwritten).
    Stops after `params.max_new_tokens`, at an EOS id, or when the context is full.
    """
    import torch

    if not params.greedy or params.repetition_penalty != 1.0:
        raise LmforgeError("speculative decoding supports greedy decoding only (temperature 0, repetition_penalty 1)")
    if k < 1:
        raise LmforgeError(f"speculative k must be >= 1, got {k}")
    if draft.config.vocab_size != model.config.vocab_size:
        raise LmforgeError(f"the draft model's vocabulary ({draft.config.vocab_size}) differs from the target's "
                           f"({model.config.vocab_size}); use a draft of the same family")
    stats = stats if stats is not None else SpeculativeStats()
    eos = set() if params.ignore_eos else (eos_ids or set(model.config.eos_ids)) | set(params.stop_token_ids)
    prompt = [int(t) for t in prompt_ids]
    ctx = min(model.config.block_size, draft.config.block_size)
    if len(prompt) > ctx:
        raise LmforgeError(f"prompt has {len(prompt)} tokens but the model's context is {ctx}")
    # room for k speculative tokens past the last real one
    length = min(len(prompt) + params.max_new_tokens + k + 1, ctx)
    device = model.device
    positions = torch.arange(length, device=device)

    def forward(m: GPT, cache: KVCache, tokens: list[int], start: int) -> torch.Tensor:
        idx = torch.tensor([tokens], dtype=torch.long, device=device)
        return m(idx, input_pos=positions[start:start + len(tokens)], cache=cache)[0]  # (T, V)

    with torch.inference_mode():
        t_cache = model.new_kv_cache(1, length)
        d_cache = draft.new_kv_cache(1, length)
        seq = list(prompt)
        # target: everything but the current (last) token is in its cache
        nxt = int(forward(model, t_cache, seq, 0)[-1].argmax())
        stats.target_calls += 1
        d_valid = 0  # draft cache holds seq[:d_valid]
        produced = 0
        while True:
            seq.append(nxt)
            produced += 1
            yield nxt
            if nxt in eos or produced >= params.max_new_tokens or len(seq) >= length:
                return
            n = len(seq)  # seq[n-1] is not yet in either cache
            kk = min(k, length - n, params.max_new_tokens - produced)
            proposal: list[int] = []
            if kk > 0:
                d_logits = forward(draft, d_cache, seq[d_valid:], d_valid)[-1]
                d_valid = n
                for i in range(kk):
                    proposal.append(int(d_logits.argmax()))
                    if i + 1 < kk:
                        d_logits = forward(draft, d_cache, proposal[-1:], n + i)[-1]
                        d_valid = n + i + 1
            # verify: the target scores [current, d1..dk] in one pass -> k+1 greedy choices
            t_logits = forward(model, t_cache, [seq[-1], *proposal], n - 1)
            stats.target_calls += 1
            choice = t_logits.argmax(-1).tolist()
            j = 0
            while j < len(proposal) and proposal[j] == choice[j]:
                j += 1
            stats.proposed += len(proposal)
            stats.accepted += j
            for t in proposal[:j]:
                seq.append(t)
                produced += 1
                yield t
                if t in eos or produced >= params.max_new_tokens:
                    return
            d_valid = min(d_valid, len(seq))
            nxt = choice[j]  # the target's own token after the accepted prefix (correction or bonus)


def speculative_generate(
    model: GPT,
    draft: GPT,
    prompt_ids: Sequence[int],
    params: SamplingParams | None = None,
    k: int = 4,
    tokenizer: Tokenizer | None = None,
    stats: SpeculativeStats | None = None,
) -> Completion:
    """Greedy generation sped up by a draft model; the output equals plain greedy decoding.

    Args:
        model: the target model.
        draft: a smaller model with the same vocabulary.
        prompt_ids: prompt token ids.
        params: greedy settings (temperature 0); max_new_tokens, stop, stop_token_ids apply.
        k: draft tokens proposed per target forward.
        tokenizer: for text and stop strings.
        stats: filled with acceptance figures when given.
    """
    pieces, tokens, reason = [], [], None
    events = _speculative_events(model, draft, prompt_ids, params or SamplingParams(), k, tokenizer, stats)
    for text, token, reason in events:
        pieces.append(text)
        tokens.append(token)
    return Completion("".join(pieces), tokens, reason, len(prompt_ids))


def _speculative_events(model, draft, prompt_ids, params, k, tokenizer, stats):
    """(text, token, finish reason) per token of speculative decoding, with stop strings applied."""
    eos = eos_ids_of(tokenizer, model.config)
    out = _Output(tokenizer, prompt_ids, params, eos)
    ctx = min(model.config.block_size, draft.config.block_size)
    for token in speculative_tokens(model, draft, prompt_ids, params, k, out.eos_ids or eos, stats):
        text, reason = out.push(token)
        if reason is None and len(prompt_ids) + len(out.token_ids) >= ctx:
            more, stopped = out.close()
            text, reason = text + more, "stop" if stopped else "length"
        yield text, token, reason
        if reason is not None:
            return


def speculative_stream(model: GPT, draft: GPT, prompt_ids: Sequence[int], params: SamplingParams | None = None,
                       k: int = 4, tokenizer: Tokenizer | None = None,
                       stats: SpeculativeStats | None = None) -> TextStream:
    """`speculative_generate` as a `TextStream` of text pieces."""
    params = params or SamplingParams()
    if not params.greedy or params.repetition_penalty != 1.0:  # fail now, not at the first piece
        raise LmforgeError("speculative decoding supports greedy decoding only (temperature 0, repetition_penalty 1)")
    return TextStream(_speculative_events(model, draft, prompt_ids, params, k, tokenizer, stats), len(prompt_ids))


# ---------------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------------
def benchmark(model: GPT, prompt_tokens: int = 32, new_tokens: int = 128, seed: int = 0) -> dict[str, float]:
    """Time batch-1 greedy decoding on a random prompt (EOS ignored).

    Returns:
        dict with ttft_s (prefill + first token), tokens_per_s (decode, after the first token),
        total_s, prompt_tokens, new_tokens.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (prompt_tokens,), generator=g).tolist()
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    _check_prompt_lengths(model, [prompt])
    engine = Engine(model, None, max_batch_size=1,
                    max_seq_length=min(prompt_tokens + new_tokens, model.config.block_size))
    t0 = time.perf_counter()
    ttft = None
    n = 0
    for _ in engine.stream(prompt, params):
        n += 1
        if ttft is None:
            ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    decode_s = total - (ttft or 0.0)
    return {
        "ttft_s": ttft or 0.0,
        "tokens_per_s": (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
        "total_s": total,
        "prompt_tokens": prompt_tokens,
        "new_tokens": n,
    }
