"""Prometheus metrics for the server, in the text exposition format (version 0.0.4), written by hand.

A handful of counters, gauges and histograms do not justify a dependency; every metric is
thread-safe because the engine thread and the asyncio thread both update them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# latencies in seconds; throughput in tokens/s
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    x = float(x)
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    return repr(x)


class _Metric:
    kind = ""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing value per label set."""

    kind = "counter"

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, doc, labelnames)
        self._values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A value that goes up and down (no labels)."""

    kind = "gauge"

    def __init__(self, name: str, doc: str) -> None:
        super().__init__(name, doc)
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def get(self) -> float:
        with self._lock:
            return self._value

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_num(self.get())}"]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count (no labels)."""

    kind = "histogram"

    def __init__(self, name: str, doc: str, buckets: Iterable[float]) -> None:
        super().__init__(name, doc)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
                    break

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def render(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        lines, cumulative = self.header(), 0
        for bound, c in zip(self.buckets, counts):
            cumulative += c
            lines.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {cumulative}')
        lines += [f"{self.name}_sum {_num(total)}", f"{self.name}_count {cumulative}"]
        return lines


class ServerMetrics:
    """Every metric the server exports (`GET /metrics`)."""

    def __init__(self) -> None:
        p = "lmforge_"
        self.requests = Counter(p + "requests_total", "HTTP requests by endpoint and status code.", ("endpoint", "status"))
        self.generation_requests = Counter(
            p + "generation_requests_total", "Generation requests by how they ended (stop, length, cancelled, timeout, error).",
            ("outcome",))
        self.rejected = Counter(p + "rejected_requests_total", "Requests refused because the waiting queue was full (429).")
        self.prompt_tokens = Counter(p + "prompt_tokens_total", "Prompt tokens of admitted requests.")
        self.generated_tokens = Counter(p + "generated_tokens_total", "Tokens generated.")
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting for a KV-cache slot.")
        self.active_slots = Gauge(p + "active_slots", "Requests currently decoding (KV-cache slots in use).")
        self.max_slots = Gauge(p + "max_slots", "KV-cache slots (max batch size).")
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Time from request arrival to its first token.",
                              LATENCY_BUCKETS)
        self.itl = Histogram(p + "inter_token_latency_seconds", "Time between consecutive tokens of a request.",
                             LATENCY_BUCKETS)
        self.tokens_per_second = Histogram(p + "request_tokens_per_second",
                                           "Decode speed of each finished request (tokens after the first / time).",
                                           RATE_BUCKETS)
        self.batch_size = Histogram(p + "step_batch_size", "Requests served by each engine step (continuous batching).",
                                    (1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.duration = Histogram(p + "request_duration_seconds", "Time from arrival to the last token.", LATENCY_BUCKETS)

    def render(self) -> str:
        metrics = [self.requests, self.generation_requests, self.rejected, self.prompt_tokens, self.generated_tokens,
                   self.queue_depth, self.active_slots, self.max_slots, self.ttft, self.itl,
                   self.tokens_per_second, self.batch_size, self.duration]
        return "\n".join(line for m in metrics for line in m.render()) + "\n"


def parse_metrics(text: str) -> dict[str, float]:
    """Read an exposition back into `{"name{labels}": value}` (tests, benchmarks, scripts)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
