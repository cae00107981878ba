"""Settings from the environment: defaults, transport choice, errors that name the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drip.config import DEFAULT_DATABASE_URL, load_settings, signing_keys
from drip.errors import ConfigError

GOOD_KEY = "Xq3vN8kZ1pL0sT7wR2yB5mC9dF4gH6jA"
OLD_KEY = "b0a8f2c9e1d7a3b5c4f6e8d0a2c4e6f8"  # hex, 128 bits


def test_defaults_run_anywhere() -> None:
    settings = load_settings({})
    assert settings.transport == "outbox"
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.uses_embedded_database
    assert settings.outbox_dir == Path("outbox")
    assert settings.base_url == "http://127.0.0.1:8000"


def test_an_api_key_selects_sendgrid_and_stays_out_of_repr() -> None:
    settings = load_settings(
        {"SENDGRID_API_KEY": "SENTINEL-SECRET", "DRIP_SMTP_URL": "smtp://u:PW@h"}
    )
    assert settings.transport == "sendgrid"
    assert "SENTINEL-SECRET" not in repr(settings)
    assert "PW" not in repr(settings)


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"DRIP_TRANSPORT": "pigeon"}, "DRIP_TRANSPORT"),
        ({"DRIP_TRANSPORT": "sendgrid"}, "SENDGRID_API_KEY"),
        ({"DRIP_TRANSPORT": "smtp"}, "DRIP_SMTP_URL"),
        ({"DRIP_TRANSPORT": "smtp", "DRIP_SMTP_URL": "http://x:secretpw@h"}, "DRIP_SMTP_URL"),
        ({"DRIP_BASE_URL": "example.com"}, "DRIP_BASE_URL"),
        ({"DRIP_SENDGRID_API_URL": "ftp://x"}, "DRIP_SENDGRID_API_URL"),
        ({"DRIP_FROM": "講座事務局"}, "DRIP_FROM"),
        # Found by the hostile review: each of these was accepted, then failed mid-send.
        ({"DRIP_BASE_URL": "https://example.org/my list"}, "DRIP_BASE_URL"),
        ({"DRIP_BASE_URL": "https://例え.jp"}, "DRIP_BASE_URL"),
        ({"DRIP_BASE_URL": "http://[::1"}, "DRIP_BASE_URL"),
        ({"DRIP_BASE_URL": "http://host:port"}, "DRIP_BASE_URL"),
        ({"DRIP_SENDGRID_API_URL": "https://a..b"}, "DRIP_SENDGRID_API_URL"),
        ({"DRIP_SENDGRID_API_URL": "http://[::1"}, "DRIP_SENDGRID_API_URL"),
        ({"DRIP_SENDGRID_API_URL": "https://-bad-.example"}, "DRIP_SENDGRID_API_URL"),
        ({"DRIP_SENDGRID_API_URL": "http://192.0.2.2:28080"}, "DRIP_SENDGRID_API_URL"),
        ({"DRIP_SENDGRID_API_URL": "http://api.sendgrid.com"}, "DRIP_SENDGRID_API_URL"),
        ({"DRIP_TRANSPORT": "smtp", "DRIP_SMTP_URL": "smtp://u:secretpw@a..b:25"}, "DRIP_SMTP_URL"),
        ({"DRIP_TRANSPORT": "smtp", "DRIP_SMTP_URL": "smtp://u:secretpw@[::1"}, "DRIP_SMTP_URL"),
        ({"DRIP_SECRET_KEY": "drip"}, "DRIP_SECRET_KEY"),
        ({"DRIP_SECRET_KEY": "drip" * 8}, "DRIP_SECRET_KEY"),
        ({"DRIP_SECRET_KEY": f"{GOOD_KEY},short-old-key"}, "key 2 of DRIP_SECRET_KEY"),
    ],
)
def test_invalid_settings_name_the_variable(environ: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names) as caught:
        load_settings(environ)
    assert "secretpw" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_weak_key_is_refused_with_how_to_make_a_good_one_and_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"DRIP_SECRET_KEY": "hunter2-hunter2-hunter2"})
    assert "secrets.token_urlsafe(32)" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:9000", "http://[::1]:8080", "https://x.jp"]
)
def test_plain_http_is_allowed_to_a_loopback_api_only(url: str) -> None:
    assert load_settings({"DRIP_SENDGRID_API_URL": url}).sendgrid_api_url == url


def test_signing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    keys = signing_keys(load_settings({"DRIP_SECRET_KEY": f"{GOOD_KEY}, {OLD_KEY}"}))
    assert keys == (GOOD_KEY, OLD_KEY)
    with pytest.raises(ConfigError, match="DRIP_SECRET_KEY"):
        signing_keys(load_settings({"DRIP_DATABASE_URL": "postgresql+psycopg://h/db"}))
    first = signing_keys(load_settings({}))
    assert signing_keys(load_settings({})) == first  # kept in drip-secret.key
    assert (os.stat(tmp_path / "drip-secret.key").st_mode & 0o777) == 0o600
