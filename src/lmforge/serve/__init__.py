"""`lmforge serve`: an OpenAI-compatible HTTP server with continuous batching.

    from lmforge.serve import create_app, Server

Names are imported lazily so `import lmforge.serve` (and `lmforge --help`) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.serve.app import ServeSettings, create_app
    from lmforge.serve.server import Server

__all__ = ["Server", "ServeSettings", "create_app"]


def __getattr__(name: str):
    if name in ("create_app", "ServeSettings"):
        from lmforge.serve import app

        return getattr(app, name)
    if name == "Server":
        from lmforge.serve.server import Server

        return Server
    raise AttributeError(f"module 'lmforge.serve' has no attribute {name!r}")
