"""`drip serve`: the web app under gunicorn (never Flask's development server).

The app is built once in the master first, so a bad setting or course fails the command at once
with its message and exit code; then each worker builds its own (its own database connections:
connections never cross a fork). Access logs never show the signed tokens in link paths.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from drip.config import Settings
from drip.web import close, create_app

_TOKEN_PATH = re.compile(r"(/[cum]/)[^/?\s\"]+")


def redact(text: str) -> str:
    """`text` with the token of every confirm (/c/), unsubscribe (/u/) and manage (/m/) path
    replaced by '***'."""
    return _TOKEN_PATH.sub(r"\1***", text)


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with link tokens cut out of access-log lines."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "f", "{raw_uri}e"):
            if isinstance(atoms.get(key), str):
                atoms[key] = redact(atoms[key])
        return atoms


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_app(self._settings)


def serve(settings: Settings, *, host: str, port: int, workers: int, threads: int) -> None:
    """Run gunicorn until SIGTERM/SIGINT. Raises what `create_app` raises before listening.
    `threads=1` runs sync workers, more runs gthread workers of that many threads."""
    close(create_app(settings))  # fail here, in the foreground, not in a worker
    _Server(
        settings,
        {
            "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            # One thread: gunicorn's sync worker (one request at a time, no keep-alive, so
            # connections spread over the workers by accept); more: gthread, whose keep-alive
            # connections stay with the worker that accepted them (docs/performance.md).
            "worker_class": "sync" if threads == 1 else "gthread",
            "accesslog": "-",
            "errorlog": "-",
            "logger_class": RedactingLogger,
            "proc_name": "drip-serve",
            "graceful_timeout": 20,
            "timeout": 60,
            "limit_request_line": 4094,
        },
    ).run()
