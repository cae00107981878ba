"""The web app's frame: health check, security headers, error pages, settings, `drip serve`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from tests.support import drip_env
from tests.web_support import TEST_KEY, WEB_TEMPLATES, AppFactory

from drip.config import load_settings
from drip.errors import ConfigError
from drip.web.server import redact


def test_healthz_is_ok_on_a_current_schema(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    client = make_app(database_url, tmp_path).test_client()
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_healthz_reports_a_schema_behind(make_app: AppFactory, tmp_path: Path) -> None:
    from drip.db import upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url)
    app = make_app(url, tmp_path)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    engine.dispose()
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["database"] == "schema not current"


def test_every_response_carries_the_security_headers(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    client = make_app(database_url, tmp_path).test_client()
    for path in ("/healthz", "/no-such-page"):
        headers = client.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Cache-Control"] == "no-store"


def test_error_pages_are_japanese_and_show_no_internals(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    client = make_app(database_url, tmp_path).test_client()
    response = client.get("/no-such-page")
    assert response.status_code == 404
    page = response.get_data(as_text=True)
    assert "ページが見つかりません" in page
    assert '<html lang="ja">' in page
    assert "Traceback" not in page and "werkzeug" not in page.lower()


def test_bodies_over_one_megabyte_are_refused_before_reading(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    client = make_app(database_url, tmp_path).test_client()
    response = client.post(
        "/healthz",
        data=b"x" * (1024 * 1024 + 1),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 413


def test_web_settings_from_the_environment() -> None:
    settings = load_settings(
        {
            "DRIP_ALLOWED_ORIGINS": "https://Blog.example.com, http://127.0.0.1:4000",
            "DRIP_TRUSTED_PROXIES": "1",
            "DRIP_SENDGRID_WEBHOOK_KEY": " MFkw ",
        }
    )
    assert settings.allowed_origins == ("https://blog.example.com", "http://127.0.0.1:4000")
    assert settings.trusted_proxies == 1
    assert settings.sendgrid_webhook_key == "MFkw"
    assert "MFkw" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DRIP_ALLOWED_ORIGINS", "https://blog.example.com/page", "not an origin"),
        ("DRIP_ALLOWED_ORIGINS", "blog.example.com", "not an http(s) URL"),
        ("DRIP_ALLOWED_ORIGINS", "javascript:alert(1)", "not an http(s) URL"),
        ("DRIP_TRUSTED_PROXIES", "-1", "whole number"),
        ("DRIP_TRUSTED_PROXIES", "１", "whole number"),
        ("DRIP_TRUSTED_PROXIES", "99", "whole number"),
    ],
)
def test_bad_web_settings_name_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)) as caught:
        load_settings({name: value})
    assert name in str(caught.value)


def test_frames_are_allowed_only_from_the_configured_origins(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    from drip.web import security

    app = make_app(database_url, tmp_path, allowed_origins=("https://blog.example.com",))
    client = app.test_client()
    # Only the signup form may be framed; every other page refuses all framing.
    assert "frame-ancestors 'none'" in client.get("/healthz").headers["Content-Security-Policy"]
    assert security.content_security_policy("https://blog.example.com").endswith(
        "frame-ancestors https://blog.example.com"
    )


def test_access_logs_never_show_link_tokens() -> None:
    line = 'GET /u/MTI.abcDEF?x=1 HTTP/1.1" /m/eyJ.sig-_ /c/abc.def.ghi /healthz'
    assert redact(line) == 'GET /u/***?x=1 HTTP/1.1" /m/*** /c/*** /healthz'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_drip_serve_runs_gunicorn_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = drip_env(
        DRIP_WEB_TEMPLATES_DIR=str(WEB_TEMPLATES), DRIP_SECRET_KEY=TEST_KEY, PYTHONUNBUFFERED="1"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "drip", "serve", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "drip serve did not answer in 30 s"
                time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "gunicorn" in output.lower() or "Booting worker" in output
    assert "DRIP_SENDGRID_WEBHOOK_KEY is not set" in output
    assert (tmp_path / "drip.db").exists()


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"DRIP_TRUSTED_PROXIES": "lots"}, "DRIP_TRUSTED_PROXIES"),
        # Run from a folder without templates/web: it listened, then answered 500 to everything.
        ({}, "DRIP_WEB_TEMPLATES_DIR"),
    ],
)
def test_drip_serve_refuses_bad_settings_before_listening(
    tmp_path: Path, setting: dict[str, str], named: str
) -> None:
    env = drip_env(**setting)
    env.pop("DRIP_WEB_TEMPLATES_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "drip", "serve", "--port", str(_free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert named in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_course_title_is_shown_once_on_the_signup_page(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    """The form's h1 is the course title; the site header repeating it above was noise (seen
    in the screenshots). Other pages keep the header: their h1 says what the page is."""
    client = make_app(database_url, tmp_path).test_client()
    signup = client.get("/").get_data(as_text=True)
    above_footer = signup.split("<body", 1)[1].split("<footer", 1)[0]
    assert above_footer.count("40代からの人脈革命") == 1
    assert "<h1>40代からの人脈革命</h1>" in above_footer
    invalid = client.get("/m/not-a-token").get_data(as_text=True)
    assert 'class="course-title"' in invalid
