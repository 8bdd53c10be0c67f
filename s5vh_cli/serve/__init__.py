"""`s5vh serve`: the Python API (``s5vh_cli.api``) over HTTP, and a small web page.

Layout: ``app.py`` builds the ASGI app (FastAPI) from a ``ServerState``; ``state.py`` holds what is loaded once
(the index, the model, the backbone: one ``api.Searcher``) and serialises writes with queries; ``security.py``
has the API token, the request-size limit and the confinement of server-side paths to the configured roots;
``routers/`` has one module per concern; ``static/`` is the page. FastAPI and uvicorn come with the extra
``s5vh[serve]`` and are imported only here.
"""

from __future__ import annotations

import ipaddress

from ..errors import InputError

EXTRA = "pip install 's5vh[serve]'"


def require_extra() -> None:
    """Import what the server needs, or raise one line naming the extra that brings it."""
    missing = []
    for mod in ("fastapi", "uvicorn"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise InputError(f"s5vh serve needs {', '.join(missing)}: {EXTRA}")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
