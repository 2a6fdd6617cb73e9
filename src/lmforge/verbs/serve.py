"""`lmforge serve SOURCE`: load a model and serve it over HTTP (OpenAI-compatible + LitGPT /predict)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from lmforge.serve.settings import ServeSettings
from lmforge.verbs.flags import Flat, ModelArgs


def serve(
    model: Annotated[ModelArgs, Flat()],
    *,
    port: int = 8000,
    settings: Annotated[ServeSettings, Flat(skip=("retry_after",))] = ServeSettings(),
    shutdown_timeout: float = 30.0,
    threads: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API with continuous batching.

    GET / is a chat page (streams replies, system prompt, temperature, max tokens, stop, regenerate,
    tokens/s; with an API key set it asks for the key). Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream`), GET /v1/models,
    POST /predict (LitGPT: {"prompt"} -> {"output"}), GET /health, GET /metrics (Prometheus),
    GET /openapi.json. SIGTERM (or Ctrl-C) shuts down gracefully.

    Args:
        model: The model and how to load it.
        port: TCP port.
        settings: How the server behaves.
        shutdown_timeout: On SIGTERM, seconds open requests may take to finish; then each is ended with a
            503 (a stream: an error event and `data: [DONE]`).
        threads: CPU threads per torch op (default: torch's choice); 1 is often fastest on a busy machine.
        log_level: uvicorn log level (debug, info, warning, error).
    """
    from lmforge.api import LLM
    from lmforge.serve.server import serve as run_server

    run_server(lambda: LLM.load(**dataclasses.asdict(model)), settings, port=port,
               shutdown_timeout=shutdown_timeout, threads=threads, log_level=log_level)
