"""Running the app with uvicorn: `serve` until SIGTERM (`lmforge serve`), or `Server` on a background
thread (tests, benchmarks, notebooks).

    with Server(llm, port=0, max_batch_size=8) as server:      # port 0: any free port
        requests.post(server.url + "/predict", json={"prompt": "Hi"})
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError
from lmforge.serve.settings import ServeSettings, is_loopback

if TYPE_CHECKING:
    import uvicorn

    from lmforge.api import LLM

# seconds uvicorn waits beyond --shutdown-timeout before it drops connections: the app ends its own
# open requests at --shutdown-timeout, and their last bytes need a moment to go out
SHUTDOWN_MARGIN = 5.0


def uvicorn_server(app: Any, host: str, port: int, shutdown_timeout: float, log_level: str,
                   **config: Any) -> uvicorn.Server:
    """A uvicorn server for an app from `create_app` that shuts down cleanly.

    On shutdown (SIGTERM, `should_exit`), open requests may run for `shutdown_timeout` seconds; then the
    app ends each one itself (a stream with an error event and `data: [DONE]`) instead of uvicorn
    cutting its connection mid-response.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            drain = asyncio.ensure_future(app.state.drain(shutdown_timeout))
            await super().shutdown(sockets)
            await drain

    return DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                         timeout_graceful_shutdown=shutdown_timeout + SHUTDOWN_MARGIN, **config))


def check_bind(host: str, port: int) -> None:
    """Raise a one-line `LmforgeError` unless `host:port` can be bound (before a slow model load)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise LmforgeError(f"--host {host!r} is not an address of this machine ({e}); "
                           "use 127.0.0.1, 0.0.0.0 or one of its interfaces") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as e:
            raise LmforgeError(f"cannot serve on {host}:{port}: {e.strerror or e} "
                               "(another server on that port? pick another --port)") from None


def serve(load: Callable[[], LLM], settings: ServeSettings, port: int = 8000, shutdown_timeout: float = 30.0,
          threads: int | None = None, log_level: str = "info") -> None:
    """Serve a model on `settings.host:port` until SIGTERM or Ctrl-C; then shut down gracefully.

    The settings, the port and the thread count are checked (and the port bound once) before `load()`,
    the slow part, makes the model. Warnings (no API key on a public interface, a non-ASCII key) and a
    "serving at" line go to stderr.

    Args:
        load: makes the model (e.g. `lambda: LLM.load(source)`).
        settings: the server's knobs; an unset api_key is read from $LMFORGE_API_KEY.
        port: TCP port.
        shutdown_timeout: on SIGTERM, seconds open requests may take to finish; then each is ended with a
            503 (a stream: an error event and `data: [DONE]`).
        threads: CPU threads per torch op (default: torch's choice).
        log_level: uvicorn log level (debug, info, warning, error).
    """
    from lmforge.serve.app import create_app

    settings = dataclasses.replace(settings, api_key=settings.api_key or os.environ.get("LMFORGE_API_KEY") or None)
    host, api_key = settings.host, settings.api_key
    if not 0 <= port <= 65535:
        raise LmforgeError(f"--port {port} is not a TCP port (0..65535)")
    if shutdown_timeout < 0:
        raise LmforgeError(f"--shutdown-timeout must be >= 0 seconds, got {shutdown_timeout}")
    if threads is not None and threads < 1:
        raise LmforgeError(f"--threads must be >= 1, got {threads}")
    check_bind(host, port)
    if not api_key and not is_loopback(host):
        print(f"warning: serving on {host} without an API key: anyone who can reach this port can use the model "
              "(set --api-key or LMFORGE_API_KEY)", file=sys.stderr)
    if api_key and not api_key.isascii():
        print("warning: the API key is not ASCII: some clients (the openai Python client, httpx) cannot send it",
              file=sys.stderr)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    app = create_app(load(), **dataclasses.asdict(settings))
    server = uvicorn_server(app, host, port, shutdown_timeout, log_level)
    print(f"lmforge: serving {app.state.model_name} at http://{_url_host(host)}:{port} "
          f"(batch {settings.max_batch_size}, context {app.state.context}, auth {'on' if api_key else 'off'})",
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


class Server:
    """An in-process server on `host:port`, started and stopped from Python.

    Args:
        llm: the model to serve (or pass `app=` to run a ready app).
        host: interface to bind; loopback by default.
        port: TCP port; 0 picks a free one (read `server.port` / `server.url` after `start`).
        app: an app from `create_app` (then `llm` and `settings` are not used).
        shutdown_timeout: seconds `stop` lets open responses finish before they are cancelled.
        **settings: `ServeSettings` fields for `create_app`.
    """

    def __init__(self, llm: LLM | None = None, host: str = "127.0.0.1", port: int = 0, app: Any = None,
                 shutdown_timeout: float = 10.0, log_level: str = "warning", **settings: Any) -> None:
        from lmforge.serve.app import create_app

        self.app = app if app is not None else create_app(llm, host=host, **settings)
        self.host = host
        self._server = uvicorn_server(self.app, host, port, shutdown_timeout, log_level, access_log=False)
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        """Start serving on a background thread; returns once the port accepts connections."""
        self._thread = threading.Thread(target=self._server.run, name="lmforge-uvicorn", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise LmforgeError(f"the server did not start on {self.host}:{self.port} within {timeout:g} s "
                                   "(port in use? see the log above)")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop as on SIGTERM: refuse new connections, finish or cancel open requests, stop the engine."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
