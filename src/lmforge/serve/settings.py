"""`ServeSettings`: the server's knobs, each a `lmforge serve` flag (no FastAPI import, so `--help` is quick)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lmforge.errors import LmforgeError

# the Host names a loopback-bound server answers (any port), besides --allowed-hosts
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


@dataclass
class ServeSettings:
    """How the server behaves.

    Each field but retry_after is a `lmforge serve` flag; `lmforge.serve.server.serve` reads an unset
    api_key from $LMFORGE_API_KEY.

    Attributes:
        host: Interface to bind. The default serves this machine only; bind 0.0.0.0 only with an API key.
            Bound to loopback, the server answers only requests whose Host header is localhost,
            127.0.0.1 or [::1] (any port) or in allowed_hosts: a web page cannot reach it through DNS
            rebinding.
        api_key: Require `Authorization: Bearer <key>` on every endpoint but /health (default: the
            LMFORGE_API_KEY environment variable; none when unset).
        max_batch_size: Requests decoded together (KV-cache slots).
        max_queue: Requests allowed to wait for a free slot; beyond it the server answers 429.
        max_seq_length: Tokens per slot, prompt + completion (default: min(model context, 4096)).
        max_tokens_limit: Largest max_tokens a request may ask for (larger: 400).
        default_max_tokens: max_tokens of a request that sets none (clipped to the context left).
        request_timeout: Seconds before a request is cancelled (504); null for no deadline.
        max_body_bytes: Largest request body accepted (larger: 413).
        allowed_hosts: Host names answered besides localhost, 127.0.0.1 and [::1] ("*": any). Bound to
            loopback, requests for other Host headers get a 400 (no DNS rebinding); bound elsewhere,
            every Host is answered unless this is given.
        cors_origins: Origins whose web pages may call the API (CORS); default: no CORS headers.
        model_name: Model id reported by /v1/models (default: the model config's name).
        retry_after: Seconds suggested in the Retry-After header of a 429.
    """

    host: str = "127.0.0.1"
    api_key: str | None = None
    max_batch_size: int = 8
    max_queue: int = 64
    max_seq_length: int | None = None
    max_tokens_limit: int = 4096
    default_max_tokens: int = 512
    request_timeout: float | None = 600.0
    max_body_bytes: int = 1_000_000
    allowed_hosts: list[str] | None = None
    cors_origins: list[str] | None = None
    model_name: str | None = None
    retry_after: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_tokens_limit", "default_max_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise LmforgeError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_seq_length is not None and self.max_seq_length < 2:
            raise LmforgeError(f"max-seq-length must be >= 2 (a prompt token and a new one), got {self.max_seq_length}")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise LmforgeError(f"request-timeout must be > 0 seconds, got {self.request_timeout}")

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a request with this Host header (None: none sent) is answered."""
        extra = {h.lower() for h in self.allowed_hosts or ()}
        if "*" in extra or (not extra and not is_loopback(self.host)):
            return True
        if host_header is None:
            return False
        name = host_header.strip().lower()
        # strip the port: "[::1]:8000" -> "[::1]", "localhost:8000" -> "localhost"
        name = name[:name.index("]") + 1] if name.startswith("[") and "]" in name else name.partition(":")[0]
        return name in extra or (is_loopback(self.host) and name in LOOPBACK_HOSTS)


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
