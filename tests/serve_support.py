"""A real `drip serve` (gunicorn) on a free loopback port, and a small HTTP client for it, for the
end-to-end tests and bench/signup.py."""

from __future__ import annotations

import http.cookiejar
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
CSRF_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """`drip serve` as a process in `cwd` with `env`; stopped with SIGTERM on exit."""

    def __init__(
        self, cwd: Path, env: dict[str, str], *, workers: int = 1, threads: int = 8
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"
        command = [sys.executable, "-m", "drip", "serve", "--port", str(self.port)]
        command += ["--workers", str(workers), "--threads", str(threads)]
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**env, "DRIP_BASE_URL": self.base},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> Self:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"drip serve did not start:\n{self.log.read_text()}")
            time.sleep(0.2)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()
        return self.process.returncode


class Browser:
    """A cookie-keeping client that does not follow redirects (none is expected)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object, **kwargs: object) -> None:
                return None

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect()
        )

    def request(
        self,
        path: str,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        *,
        timeout: float = 60,
    ) -> tuple[int, str, dict[str, str]]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(
            path if path.startswith("http") else self.base + path,
            data=body,
            headers=headers or {},
            method="POST" if body is not None else "GET",
        )
        try:
            with self.opener.open(request, timeout=timeout) as answer:
                return answer.status, answer.read().decode(), dict(answer.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), dict(error.headers)

    def form_token(self) -> str:
        status, page, _ = self.request("/")
        match = FORM_TOKEN.search(page)
        assert status == 200 and match, page[:500]
        return match.group(1)

    def press(self, path: str) -> tuple[int, str, dict[str, str]]:
        """Open the page at `path` and press its button."""
        status, page, _ = self.request(path)
        match = CSRF_TOKEN.search(page)
        assert status == 200 and match, (status, page[:500])
        return self.request(path, {"csrf_token": match.group(1)})


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    from tests.support import drip_env
    from tests.web_support import TEST_KEY, WEB_TEMPLATES

    return drip_env(
        DRIP_WEB_TEMPLATES_DIR=str(WEB_TEMPLATES),
        DRIP_SECRET_KEY=TEST_KEY,
        DRIP_OUTBOX_DIR=str(tmp_path / "outbox"),
        DRIP_TRUSTED_PROXIES="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
