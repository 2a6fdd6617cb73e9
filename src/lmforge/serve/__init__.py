"""`lmforge serve`: an OpenAI-compatible HTTP server with continuous batching.

    from lmforge.serve import create_app, Server

Names are imported lazily so `import lmforge.serve` (and `lmforge --help`) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.serve.app import create_app
    from lmforge.serve.server import Server
    from lmforge.serve.settings import ServeSettings

__all__ = ["Server", "ServeSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from lmforge.serve.app import create_app

        return create_app
    if name == "ServeSettings":
        from lmforge.serve.settings import ServeSettings

        return ServeSettings
    if name == "Server":
        from lmforge.serve.server import Server

        return Server
    raise AttributeError(f"module 'lmforge.serve' has no attribute {name!r}")
