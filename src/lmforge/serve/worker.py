"""The engine thread: one thread owns the generation `Engine` and runs continuous batching.

HTTP handlers (asyncio) `submit` requests and read their tokens from an `asyncio.Queue`; the
engine thread adds them to the engine, calls `engine.step()` in a loop (new requests join at the
next decode step, finished ones leave), and hands each step's events back to the event loop with
one `loop.call_soon_threadsafe` per loop per step. Cancellations (client gone, deadline passed,
shutdown) are applied on the engine thread, between steps, so the engine never races itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError
from lmforge.serve.metrics import ServerMetrics

if TYPE_CHECKING:
    from lmforge.sampling import SamplingParams

log = logging.getLogger("lmforge.serve")


class QueueFull(Exception):
    """The waiting queue is at its bound (the server answers 429)."""


class Draining(Exception):
    """The server is shutting down and takes no new requests (503)."""


@dataclass
class Failure:
    """Delivered instead of an event when a request ends abnormally."""

    status: int
    message: str
    type: str = "server_error"
    code: str | None = None


@dataclass
class Handle:
    """One in-flight request, shared by its handler (reads `queue`) and the engine thread."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    arrival: float
    deadline: float | None
    first_token_at: float | None = None
    last_token_at: float | None = None
    completion_tokens: int = 0
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class EngineWorker:
    """Runs `engine.step()` on a dedicated thread and routes events to asyncio handlers.

    Args:
        engine: a `lmforge.generate.Engine` (add/step/cancel/has_work).
        metrics: where queue depth, slots, token counts and latencies are recorded.
        max_queue: most requests waiting for a slot: `engine.max_batch_size + max_queue` requests are
            accepted at once (running or waiting), more -> `QueueFull`.
        request_timeout: seconds a request may live (None: no deadline).
    """

    def __init__(self, engine: Any, metrics: ServerMetrics, max_queue: int = 64,
                 request_timeout: float | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._submitted: deque[Handle] = deque()
        self._cancels: deque[tuple[str, str]] = deque()
        self._handles: dict[str, Handle] = {}  # every request submitted and not finished
        self._accepting = True
        self._stop = False
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    # -- called from the asyncio side ------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop) -> Handle:
        """Queue a request; raises `QueueFull` or `Draining` instead of waiting."""
        now = time.monotonic()
        with self._lock:
            if not self._accepting:
                raise Draining()
            if len(self._handles) >= self.engine.max_batch_size + self.max_queue:
                self.metrics.rejected.inc()
                raise QueueFull()
            rid = f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            deadline = now + self.request_timeout if self.request_timeout else None
            handle = Handle(rid, prompt_ids, params, loop, asyncio.Queue(), now, deadline)
            self._handles[rid] = handle
            self._submitted.append(handle)
            self._update_gauges()
            self._wake.notify()
        return handle

    def cancel(self, request_id: str, reason: str = "cancelled") -> None:
        """Stop a request (its slot is freed before the next decode step); unknown ids are ignored."""
        with self._lock:
            if request_id in self._handles:
                self._cancels.append((request_id, reason))
                self._wake.notify()

    @property
    def alive(self) -> bool:
        """True while the engine thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._handles)

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def close(self, grace: float = 0.0) -> None:
        """Stop taking requests, let in-flight ones finish for up to `grace` seconds, cancel the rest."""
        self.stop_accepting()
        end = time.monotonic() + grace
        while self.in_flight and time.monotonic() < end and self._thread and self._thread.is_alive():
            time.sleep(0.02)
        with self._lock:
            for rid in list(self._handles):
                self._cancels.append((rid, "shutdown"))
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the engine thread -------------------------------------------------------------------
    def _update_gauges(self) -> None:
        # the engine fills free slots before anything waits
        running = min(len(self._handles), self.engine.max_batch_size)
        self.metrics.queue_depth.set(len(self._handles) - running)
        self.metrics.active_slots.set(running)

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._submitted or self._cancels or self._stop or self.engine.has_work()):
                        self._wake.wait(timeout=1.0)
                    submitted, self._submitted = list(self._submitted), deque()
                    cancels, self._cancels = list(self._cancels), deque()
                    stop = self._stop
                out: dict[asyncio.AbstractEventLoop, list[tuple[Handle, Any]]] = defaultdict(list)
                for handle in submitted:
                    self._admit(handle, out)
                for rid, reason in cancels:
                    self._cancel_now(rid, reason, out)
                self._expire(out)
                if stop:
                    self._deliver(out)
                    with self._lock:
                        self._update_gauges()
                    return
                if self.engine.has_work():
                    self._step(out)
                with self._lock:
                    self._update_gauges()
                self._deliver(out)

    def _admit(self, handle: Handle, out) -> None:
        if handle.finished:
            return
        try:
            self.engine.add(handle.prompt_ids, handle.params, request_id=handle.request_id)
        except LmforgeError as e:  # bad input the handler did not catch: still a 400
            self._finish(handle, "error", out, Failure(400, str(e), "invalid_request_error"))
            return
        except Exception as e:  # pragma: no cover - a bug in the engine
            log.exception("engine.add failed")
            self._finish(handle, "error", out, Failure(500, f"internal error: {type(e).__name__}"))
            return
        self.metrics.prompt_tokens.inc(len(handle.prompt_ids))

    def _cancel_now(self, rid: str, reason: str, out) -> None:
        handle = self._handles.get(rid)
        if handle is None or handle.finished:
            return
        self.engine.cancel(rid)
        failure = None
        if reason == "timeout":
            failure = Failure(504, f"request timed out after {self.request_timeout:g} s (--request-timeout)",
                              "timeout_error", "timeout")
        elif reason == "shutdown":
            failure = Failure(503, "the server is shutting down; retry on another instance", "server_error",
                              "shutting_down")
        self._finish(handle, reason, out, failure)

    def _expire(self, out) -> None:
        now = time.monotonic()
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            if handle.deadline is not None and now > handle.deadline:
                self._cancel_now(handle.request_id, "timeout", out)

    def _step(self, out) -> None:
        try:
            events = self.engine.step()
        except Exception as e:  # a crash of the whole step (a request's own failure is an event): fail the batch
            with self._lock:
                handles = list(self._handles.values())
            log.exception("engine.step failed; failing %d in-flight request(s)", len(handles))
            for handle in handles:
                try:
                    self.engine.cancel(handle.request_id)
                except Exception:  # pragma: no cover
                    pass
                self._finish(handle, "error", out, Failure(500, f"internal error in the engine: {type(e).__name__}"))
            return
        now = time.monotonic()
        m = self.metrics
        if events:
            m.batch_size.observe(len(events))
        for ev in events:
            handle = self._handles.get(ev.request_id)
            if handle is None or handle.finished:
                continue  # cancelled while this step ran
            new_tokens = ev.completion_tokens - handle.completion_tokens
            if new_tokens > 0:
                m.generated_tokens.inc(new_tokens)
                if handle.first_token_at is None:
                    handle.first_token_at = now
                    m.ttft.observe(now - handle.arrival)
                else:
                    m.itl.observe(now - handle.last_token_at)
                handle.last_token_at = now
                handle.completion_tokens = ev.completion_tokens
            if ev.finish_reason == "error":  # this request failed inside the engine; the others go on
                log.error("request %s failed in the engine: %s", ev.request_id, ev.error)
                self._finish(handle, "error", out, Failure(500, f"internal error in the engine: {ev.error}"))
                continue
            out[handle.loop].append((handle, ev))
            if ev.finished:
                self._finish(handle, ev.finish_reason or "stop", out, None)

    def _finish(self, handle: Handle, outcome: str, out, failure: Failure | None) -> None:
        handle.finished = True
        with self._lock:
            self._handles.pop(handle.request_id, None)
        self.metrics.generation_requests.inc(outcome=outcome)
        if handle.first_token_at is not None:
            end = handle.last_token_at or handle.first_token_at
            self.metrics.duration.observe(end - handle.arrival)
            if outcome in ("stop", "length") and handle.completion_tokens > 1 and end > handle.first_token_at:
                self.metrics.tokens_per_second.observe((handle.completion_tokens - 1) / (end - handle.first_token_at))
        if failure is not None:
            out[handle.loop].append((handle, failure))

    def _deliver(self, out) -> None:
        for loop, items in out.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass
        out.clear()


def _put_all(items: list[tuple[Handle, Any]]) -> None:
    for handle, item in items:
        handle.queue.put_nowait(item)
