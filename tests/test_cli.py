"""The `drip` command line end to end: the quickstart flow, exit codes, JSON, secret hygiene,
and a check that every command and setting is documented in the README."""

from __future__ import annotations

import email
import email.policy
import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import COURSE_DIR, ROOT, TEMPLATES

from drip.cli import main

MORNING = "2026-04-01T09:00:00+09:00"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


KEY = "cli-test-key-Xq3vN8kZ1pL0sT7wR2yB5mC9"


def drip(*args: str, **env: str) -> Result:
    base = {"DRIP_COURSE_DIR": str(COURSE_DIR), "DRIP_TEMPLATES_DIR": str(TEMPLATES)}
    return CliRunner().invoke(main, list(args), env={**base, **env})


def test_quickstart_subscribe_and_send_on_the_embedded_defaults(workdir: Path) -> None:
    added = drip(
        "subscribe", "Yamada@Example.com", "--name", "山田", "--confirmed", "--now", MORNING
    )
    assert added.exit_code == 0, added.output
    assert "active" in added.output
    sent = drip("send", "--now", MORNING)
    assert sent.exit_code == 0, sent.output
    assert "sent 1," in sent.output and "welcome: sent 1" in sent.output
    assert str(workdir / "outbox") in sent.output
    [eml] = list((workdir / "outbox").glob("*.eml"))
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert message["To"].addresses[0].addr_spec == "yamada@example.com"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (workdir / "drip.db").exists()
    again = drip("send", "--now", MORNING, "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["sent"] == 0


def test_subscribe_without_confirmed_sends_the_confirmation(workdir: Path) -> None:
    result = drip("subscribe", "new@example.com", "--now", MORNING)
    assert result.exit_code == 0, result.output
    assert "pending" in result.output and "confirmation email sent" in result.output
    [eml] = list((workdir / "outbox").glob("*.eml"))
    assert "/c/" in eml.read_text(encoding="utf-8", errors="replace") or eml.stat().st_size > 0
    assert drip("send", "--now", MORNING, "--json").stdout.count('"sent": 0') == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["subscribe", "a@evil.com@good.com"], "not a usable email address"),
        (["subscribe", "ok@example.com", "--timezone", "Mars/Base"], "not a timezone"),
        (["send", "--now", "2026-04-01T09:00:00"], "has no UTC offset"),
        (["send", "--now", "yesterday"], "not an ISO-8601 date-time"),
        # A date alone: the hint must give a time too ("2026-04-01+09:00" would mean 09:00).
        (["send", "--now", "2026-04-01"], "e.g. 2026-04-01T07:30+09:00"),
        (["send", "--now", "0001-01-01T00:00+09:00"], "outside the years"),
        (["send", "--now", "9999-12-31T23:59+00:00"], "outside the years"),
        (["subscribers", "pause", "a@example.com", "--now", "9999-12-31T23:59Z"], "outside"),
        (["send", "--limit", "0"], "--limit"),
    ],
)
def test_usage_errors_exit_2(workdir: Path, args: list[str], message: str) -> None:
    result = drip(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unsubscribed_address_is_not_reactivated(workdir: Path) -> None:
    from sqlalchemy.orm import Session

    from drip import store
    from drip.db import open_database

    assert drip("subscribe", "gone@example.com", "--confirmed", "--now", MORNING).exit_code == 0
    engine = open_database("sqlite:///drip.db", auto_upgrade=False)
    with Session(engine) as session, session.begin():
        view = store.get_subscriber(session, "jinmyaku-40s", "gone@example.com")
        assert view is not None
        store.unsubscribe(session, view.id, view.created_at)
    engine.dispose()
    result = drip("subscribe", "gone@example.com", "--confirmed")
    assert result.exit_code == 2
    assert "unsubscribed" in result.output


def test_config_errors_exit_2_before_touching_the_database(workdir: Path) -> None:
    result = drip("send", DRIP_TRANSPORT="smtp")
    assert result.exit_code == 2
    assert "DRIP_SMTP_URL" in result.output
    assert not (workdir / "drip.db").exists()


def test_a_database_that_is_not_upgraded_is_refused(workdir: Path) -> None:
    result = drip(
        "send", DRIP_DATABASE_URL=f"sqlite:///{workdir / 'other.db'}", DRIP_SECRET_KEY=KEY
    )
    assert result.exit_code == 2
    assert "drip db upgrade" in result.output
    upgraded = drip("db", "upgrade", DRIP_DATABASE_URL=f"sqlite:///{workdir / 'other.db'}")
    assert upgraded.exit_code == 0, upgraded.output
    result = drip(
        "send", DRIP_DATABASE_URL=f"sqlite:///{workdir / 'other.db'}", DRIP_SECRET_KEY=KEY
    )
    assert result.exit_code == 0, result.output


def test_an_unreachable_database_exits_1(workdir: Path) -> None:
    result = drip(
        "send",
        DRIP_DATABASE_URL="postgresql+psycopg://drip:pw@127.0.0.1:9/drip",
        DRIP_SECRET_KEY=KEY,
    )
    assert result.exit_code == 1, result.output
    assert "pw" not in result.output


def test_bad_provider_credentials_stop_the_run_with_exit_1_and_no_secret(workdir: Path) -> None:
    sentinel_key = "SG.SENTINEL-API-KEY-0123456789"
    sentinel_secret = "SENTINEL-SIGNING-KEY-Xq3vN8kZ1pL0sT7wR2y"
    env = {
        "SENDGRID_API_KEY": sentinel_key,
        "DRIP_SECRET_KEY": sentinel_secret,
        "DRIP_SMTP_URL": "smtp://user:SENTINEL-SMTP-PASSWORD@127.0.0.1:9",
    }
    with FakeSendGrid(api_key="SG.the-right-key") as fake:
        env["DRIP_SENDGRID_API_URL"] = fake.url
        outputs = [
            drip("subscribe", "a@example.com", "--confirmed", "--now", MORNING, **env),
            drip("send", "--now", MORNING, **env),
            drip("send", "--now", MORNING, "--json", **env),
            drip("subscribe", "b@example.com", "--now", MORNING, **env),
            drip("send", **{**env, "DRIP_TRANSPORT": "smtp"}),
        ]
    assert outputs[0].exit_code == 0
    assert outputs[1].exit_code == 1
    assert "the run stopped" in outputs[1].output and "401" in outputs[1].output
    assert json.loads(outputs[2].stdout)["sent"] == 0
    assert outputs[2].exit_code == 1
    for result in outputs:
        text = result.output + repr(result.exception)
        for secret in (sentinel_key, sentinel_secret, "SENTINEL-SMTP-PASSWORD"):
            assert secret not in text


def test_every_command_and_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []

    def walk(group: object, prefix: str) -> None:
        for name, command in getattr(group, "commands", {}).items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                commands.append(f"drip {prefix}{name}")

    walk(main, "")
    missing = [command for command in commands if not re.search(rf"`{command}[ `]", readme)]
    assert missing == [], f"commands not in the README: {missing}"
    config = (ROOT / "src" / "drip" / "config.py").read_text(encoding="utf-8")
    variables = set(re.findall(r'get\("((?:DRIP|SENDGRID)_[A-Z_]+)"', config))
    assert variables, "no settings found"
    undocumented = sorted(name for name in variables if f"`{name}`" not in readme)
    assert undocumented == [], f"settings not in the README: {undocumented}"


def test_pause_resume_and_unsubscribe_by_address(workdir: Path) -> None:
    assert drip("subscribe", "op@example.com", "--confirmed", "--now", MORNING).exit_code == 0
    paused = drip("subscribers", "pause", "OP@example.com", "--now", MORNING)
    assert paused.exit_code == 0 and "paused" in paused.output
    assert "sent 0," in drip("send", "--now", MORNING).output
    again = drip("subscribers", "pause", "op@example.com")
    assert again.exit_code == 0 and "nothing changed" in again.output
    resumed = drip("subscribers", "resume", "op@example.com", "--now", MORNING)
    assert resumed.exit_code == 0 and "resumed" in resumed.output
    assert "sent 1," in drip("send", "--now", "2026-04-02T07:30+09:00").output
    gone = drip("subscribers", "unsubscribe", "op@example.com")
    assert gone.exit_code == 0 and "unsubscribed" in gone.output
    assert "sent 0," in drip("send", "--now", "2026-04-10T07:30+09:00").output
    unknown = drip("subscribers", "resume", "nobody@example.com")
    assert unknown.exit_code == 2 and "not subscribed" in unknown.output


def test_in_doubt_deliveries_are_listed_and_resolved(workdir: Path) -> None:
    with FakeSendGrid(api_key="SG.k", script=["reset"]) as fake:
        env = {"SENDGRID_API_KEY": "SG.k", "DRIP_SENDGRID_API_URL": fake.url}
        assert drip("subscribe", "lost@example.com", "--confirmed", "--now", MORNING).exit_code == 0
        first = drip("send", "--now", MORNING, "--json", **env)
        assert json.loads(first.stdout)["in_doubt"] == 1
        listed = drip("deliveries", "in-doubt", "--json")
        [row] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (row["email"], row["lesson"]) == ("lost@example.com", "welcome")
        settled = drip(
            "deliveries", "resolve", str(row["delivery_id"]), "--not-sent", "--now", MORNING
        )
        assert settled.exit_code == 0 and "sent again" in settled.output
        again = drip("send", "--now", MORNING, "--json", **env)
        assert json.loads(again.stdout)["sent"] == 1
        assert fake.accepted_ids()[str(row["delivery_id"])] == 1
    twice = drip("deliveries", "resolve", str(row["delivery_id"]), "--sent")
    assert twice.exit_code == 2 and "not 'in_doubt'" in twice.output


def test_send_bulk_flag_overrides_the_setting(workdir: Path) -> None:
    with FakeSendGrid(api_key="SG.k") as fake:
        env = {"SENDGRID_API_KEY": "SG.k", "DRIP_SENDGRID_API_URL": fake.url}
        for index in range(3):
            added = drip("subscribe", f"b{index}@example.com", "--confirmed", "--now", MORNING)
            assert added.exit_code == 0
        sent = drip("send", "--now", MORNING, "--json", "--bulk", **env)
        assert json.loads(sent.stdout)["sent"] == 3
        assert [len(r.delivery_ids) for r in fake.requests] == [3]
        assert fake.problems == []


def _broken_course(workdir: Path, how: str) -> Path:
    import shutil

    course = workdir / "broken"
    shutil.copytree(COURSE_DIR, course)
    if how == "timezone":
        toml = course / "course.toml"
        toml.write_text(
            re.sub(r"(?m)^timezone = .*$", 'timezone = "Tokyo"', toml.read_text("utf-8")),
            encoding="utf-8",
        )
    else:
        next((course / "lessons").glob("03-*.md")).unlink()
    return course


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # cron without `cd`: no course here; the message names where it looked and why.
        ({"DRIP_COURSE_DIR": "course"}, "from the working directory"),
        ({"DRIP_COURSE_DIR": "course"}, "DRIP_COURSE_DIR"),
        ({"DRIP_DATABASE_URL": "nonsense"}, "database URL"),
        ({"DRIP_DATABASE_URL": "sqlite:///other.db"}, "there is no file at"),
        ({"DRIP_COURSE_DIR": "broken:timezone"}, "timezone 'Tokyo'"),
        ({"DRIP_COURSE_DIR": "broken:lesson"}, "lesson 'events' is listed"),
    ],
)
def test_configuration_errors_exit_2_and_leave_nothing_behind(
    workdir: Path, env: dict[str, str], message: str
) -> None:
    if env.get("DRIP_COURSE_DIR", "").startswith("broken:"):
        env = {"DRIP_COURSE_DIR": str(_broken_course(workdir, env["DRIP_COURSE_DIR"][7:]))}
    before = set(workdir.iterdir())
    for args in (["send"], ["send", "--dry-run"], ["subscribe", "a@example.com"]):
        result = drip(*args, **env)
        assert result.exit_code == 2, result.output
        assert message in result.output, result.output
        assert "DRIP_SECRET_KEY" not in result.output
    assert set(workdir.iterdir()) == before  # no drip-secret.key, no empty database file


def test_confirming_a_pending_subscriber_says_so_and_an_empty_in_doubt_list_says_none(
    workdir: Path,
) -> None:
    assert drip("subscribe", "p@example.com", "--now", MORNING).exit_code == 0
    confirmed = drip("subscribe", "p@example.com", "--confirmed", "--now", MORNING)
    assert confirmed.exit_code == 0, confirmed.output
    assert "already subscribed" not in confirmed.output
    assert "confirmed" in confirmed.output and "starts the course" in confirmed.output
    again = drip("subscribe", "p@example.com", "--confirmed", "--now", MORNING)
    assert "already subscribed (active)" in again.output
    listing = drip("deliveries", "in-doubt")
    assert listing.exit_code == 0 and listing.output.strip() == "none: no delivery is in doubt"
    assert drip("deliveries", "in-doubt", "--json").output == ""


def test_subscribers_list_by_status_held_and_json(workdir: Path) -> None:
    assert drip("subscribe", "a@example.com", "--confirmed", "--now", MORNING).exit_code == 0
    assert drip("subscribe", "p@example.com", "--now", MORNING).exit_code == 0
    everyone = drip("subscribers", "list")
    assert everyone.exit_code == 0, everyone.output
    lines = everyone.output.strip().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [
        ["a@example.com", "active"],
        ["p@example.com", "pending"],
    ]
    active = drip("subscribers", "list", "--status", "active", "--json")
    [row] = [json.loads(line) for line in active.output.splitlines()]
    assert row["email"] == "a@example.com" and row["next_lesson"] == "welcome"
    assert row["held"] is False and row["held_reason"] is None
    assert drip("subscribers", "list", "--held").output.strip() == "none: no subscriber is held"
    assert drip("subscribers", "list", "--status", "bogus").exit_code == 2


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        # A lesson cut off mid-sentence went out before; course check rejects it.
        (("08-", "\n人脈構築は、\n"), "08-"),
        # A private-use character in a preheader broke every run after claiming.
        (("02-", None), "02-"),
    ],
    ids=["mid-sentence", "private-use-preheader"],
)
def test_send_refuses_a_course_that_check_finds_errors_in_and_claims_nothing(
    workdir: Path, breakage: tuple[str, str | None], message: str
) -> None:
    import shutil

    course = workdir / "c"
    shutil.copytree(COURSE_DIR, course)
    prefix, tail = breakage
    lesson = next((course / "lessons").glob(f"{prefix}*.md"))
    text = lesson.read_text("utf-8")
    if tail is None:
        text = re.sub(r"(?m)^preheader: (.*)$", "preheader: \\1\ue000", text, count=1)
    else:
        text = text.rstrip("\n") + "\n" + tail
    lesson.write_text(text, encoding="utf-8")
    env = {"DRIP_COURSE_DIR": str(course)}
    assert drip("subscribe", "a@example.com", "--confirmed", "--now", MORNING).exit_code == 0
    for args in (["send", "--now", MORNING], ["worker", "--interval", "60"]):
        refused = drip(*args, **env)
        assert refused.exit_code == 2, refused.output
        assert "cannot be sent" in refused.output and message in refused.output
    assert not (workdir / "outbox").exists()
    # Nothing was claimed: the unbroken course sends at once.
    assert json.loads(drip("send", "--now", MORNING, "--json").stdout)["sent"] == 1


def test_deliveries_failed_and_retry_from_the_command_line(workdir: Path) -> None:
    assert drip("deliveries", "failed").output.strip() == "none: no delivery has failed"
    assert drip("deliveries", "retry").exit_code == 2  # neither ids nor --all
    assert drip("deliveries", "retry", "1", "--all").exit_code == 2
    missing = drip("deliveries", "retry", "99")
    assert missing.exit_code == 2 and "99" in missing.output
    done = drip("deliveries", "retry", "--all")
    assert done.exit_code == 0 and done.output.strip() == "re-armed 0 deliveries"


def test_emails_are_dated_at_the_runs_now(workdir: Path) -> None:
    """`drip send --now T` replays T: the Date header says T, not the wall clock (#24)."""
    assert drip("subscribe", "d@example.com", "--confirmed", "--now", MORNING).exit_code == 0
    assert drip("send", "--now", MORNING).exit_code == 0
    [eml] = list((workdir / "outbox").glob("*.eml"))
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert message["Date"].datetime == datetime.fromisoformat(MORNING)
