"""`Server`: run the app with uvicorn on a background thread (tests, benchmarks, notebooks).

    with Server(llm, port=0, max_batch_size=8) as server:      # port 0: any free port
        requests.post(server.url + "/predict", json={"prompt": "Hi"})
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.api import LLM


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
        import uvicorn

        from lmforge.serve.app import create_app

        self.app = app if app is not None else create_app(llm, **settings)
        self.host = host
        config = uvicorn.Config(self.app, host=host, port=port, log_level=log_level, lifespan="on",
                                timeout_graceful_shutdown=shutdown_timeout, access_log=False)
        self._server = uvicorn.Server(config)
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
