"""`lmforge serve SOURCE`: load a model and serve it over HTTP (OpenAI-compatible + LitGPT /predict)."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys


def serve(
    source: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch_size: int = 8,
    max_queue: int = 64,
    max_seq_length: int | None = None,
    max_tokens_limit: int = 4096,
    default_max_tokens: int = 512,
    request_timeout: float | None = 600.0,
    max_body_bytes: int = 1_000_000,
    shutdown_timeout: float = 30.0,
    allowed_hosts: list[str] | None = None,
    cors_origins: list[str] | None = None,
    model_name: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    threads: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API with continuous batching.

    Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream`), GET /v1/models,
    POST /predict (LitGPT: {"prompt"} -> {"output"}), GET /health, GET /metrics (Prometheus),
    GET /openapi.json. SIGTERM (or Ctrl-C) shuts down gracefully.

    Args:
        source: An lmforge checkpoint dir, an HF model dir, a .gguf file or an HF repo id.
        host: Interface to bind. The default serves this machine only; bind 0.0.0.0 only with an API key.
        port: TCP port.
        api_key: Require `Authorization: Bearer <key>` on every endpoint but /health
            (default: the LMFORGE_API_KEY environment variable; none when unset).
        max_batch_size: Requests decoded together (KV-cache slots).
        max_queue: Requests allowed to wait for a free slot; beyond it the server answers 429.
        max_seq_length: Tokens per slot, prompt + completion (default: min(model context, 4096)).
        max_tokens_limit: Largest max_tokens a request may ask for (larger: 400).
        default_max_tokens: max_tokens of a request that sets none (clipped to the context left).
        request_timeout: Seconds before a request is cancelled (504); null for no deadline.
        max_body_bytes: Largest request body accepted (larger: 413).
        shutdown_timeout: On SIGTERM, seconds open requests may take to finish; then each is ended with a
            503 (a stream: an error event and `data: [DONE]`).
        allowed_hosts: Host names answered besides localhost, 127.0.0.1 and [::1] ("*": any). Bound to
            loopback, requests for other Host headers get a 400 (no DNS rebinding); bound elsewhere,
            every Host is answered unless this is given.
        cors_origins: Origins whose web pages may call the API (CORS); default: no CORS headers.
        model_name: Model id reported by /v1/models (default: the model config's name).
        device: cpu, cuda, cuda:N or auto (default: cuda when available).
        dtype: float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA).
        quantize: CPU inference mode: int8 or bf16 (weight-only, fewer bytes per token), or fp32
            (same weights on lmforge's AVX2 kernels); default: plain PyTorch.
        threads: CPU threads per torch op (default: torch's choice); 1 is often fastest on a busy machine.
        log_level: uvicorn log level (debug, info, warning, error).
    """
    from lmforge.api import LLM
    from lmforge.errors import LmforgeError
    from lmforge.serve.app import ServeSettings, create_app, is_loopback
    from lmforge.serve.server import check_bind, uvicorn_server

    api_key = api_key or os.environ.get("LMFORGE_API_KEY") or None
    if not 0 <= port <= 65535:
        raise LmforgeError(f"--port {port} is not a TCP port (0..65535)")
    # check the flags before the (slow) model load
    settings = ServeSettings(model_name=model_name, api_key=api_key, max_batch_size=max_batch_size,
                             max_queue=max_queue, max_seq_length=max_seq_length, max_tokens_limit=max_tokens_limit,
                             default_max_tokens=default_max_tokens, request_timeout=request_timeout,
                             max_body_bytes=max_body_bytes, host=host, allowed_hosts=allowed_hosts,
                             cors_origins=cors_origins)
    if shutdown_timeout < 0:
        raise LmforgeError(f"--shutdown-timeout must be >= 0 seconds, got {shutdown_timeout}")
    check_bind(host, port)
    if not api_key and not is_loopback(host):
        print(f"warning: serving on {host} without an API key: anyone who can reach this port can use the model "
              "(set --api-key or LMFORGE_API_KEY)", file=sys.stderr)
    if api_key and not api_key.isascii():
        print("warning: the API key is not ASCII: some clients (the openai Python client, httpx) cannot send it",
              file=sys.stderr)
    if threads is not None:
        if threads < 1:
            raise LmforgeError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    llm = LLM.load(source, device=device, dtype=dtype, quantize=quantize)
    app = create_app(llm, **dataclasses.asdict(settings))
    server = uvicorn_server(app, host, port, shutdown_timeout, log_level)
    print(f"lmforge: serving {app.state.model_name} at http://{_url_host(host)}:{port} "
          f"(batch {max_batch_size}, context {app.state.context}, auth {'on' if api_key else 'off'})",
          file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal under the handler it found:
    # a no-op handler here turns that into a normal return, i.e. exit status 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise LmforgeError(f"could not serve on {host}:{port} (port in use or not allowed? see the log above)")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
