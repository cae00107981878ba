"""Secret hygiene, end to end: the main `drip` flows run with sentinel secrets against hostile
servers that quote those secrets back, and everything drip leaves behind is scanned.

Secrets: SENDGRID_API_KEY, DRIP_SECRET_KEY (strong enough to pass the strength check), the
password in DRIP_SMTP_URL (with characters URL-encoding changes), and on PostgreSQL the password
in DRIP_DATABASE_URL. All are set in every case, whichever transport the case uses. (A fifth, a
password in an http(s) URL setting, is used by the settings test at the end.)

Hostile servers (hooks in tests/fakes): the SendGrid fake's `echo:STATUS` / `echo-cut:STATUS` /
`echo-line` steps quote the bearer key back (plain, base64 of the key and of the Authorization
value, URL-encoded) in a 403/400/500 error message, in a 202's X-Message-Id, past the 300th
character of an error, or in an unreadable status line; the SMTP fake with `echo_credentials`
answers a refused login with a 535 quoting the password and the AUTH PLAIN blob, and quotes them
again in every refusal (550, 450).

Flows per case, through click's CliRunner: `db upgrade`; `subscribe` (pending: the confirmation
goes through the transport) and `subscribe --confirmed` twice; `send --limit 1`; `send --json`;
`deliveries in-doubt` and `failed` (text and --json); `subscribers list --json` and `--held`;
and in some cases `drip worker` as a real process for a moment (SIGTERM, or its own stop on a
refused login).

Scanned: every stdout and stderr, the exception of any command that raised, every log record
drip emits at INFO and above (caplog; the CLI logs at INFO), the worker's stdout and stderr,
every text column of every row of every table, and every file left in the case's directory
(the SQLite files byte for byte, the outbox's .eml files raw and MIME-decoded). Looked for, per
secret (`needles`): the secret, its first 8 characters (so any longer prefix), its URL- and
form-encodings, its base64 (standard and URL-safe, at each of the three alignments inside a
longer base64 blob, and its first 12 characters), and for the SMTP password the AUTH PLAIN blob
base64("\\0user\\0password").

`test_errors_about_settings_never_quote_a_secret` runs `send`, `subscribe` and `worker` with
broken settings (database unreachable or unparsable, bad SMTP URLs, a weak second signing key,
SendGrid URLs that are invalid or plain http, some holding a proxy password): their errors name
the setting, never a secret. It found that config quoted an http(s) URL setting whole in its
errors, user:password@ included (fixed: shown as ***@).

Every case must be clean: a leak fails the test with the secret, its form and where it was found.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import signal
import subprocess
import sys
import time
import traceback
import warnings
from base64 import b64encode, urlsafe_b64encode
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import MetaData, create_engine, make_url, select
from tests.conftest import _truncate
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.fakes.smtp_server import FakeSmtp
from tests.support import daytime_zone, drip_env

from drip.cli import main

API_KEY = "SG.Hq7vXk2Lp9Zt.W3nR8sYd5Fb1Mc6Gj4"
SIGNING_KEY = "Sk9fT3qLx7Vb2Nw8Rz4Yc6Hm1Jd5Pa0GeU"
SMTP_USER = "drip-mailer"
SMTP_PASSWORD = "Pw+7kQ/2xZ@9vL#4mN%8"
DB_PASSWORD = "Db4tR8yU2iO6pA3sE7"
URL_PASSWORD = "Px5wE9rT1yU7iO3pQ"
"""A password in an http(s) URL setting (a proxy in front of the API, say)."""
NOW = "2026-04-01T09:00:00+09:00"

SECRETS = {
    "SENDGRID_API_KEY": API_KEY,
    "DRIP_SECRET_KEY": SIGNING_KEY,
    "SMTP password": SMTP_PASSWORD,
    "database password": DB_PASSWORD,
    "URL password": URL_PASSWORD,
}


class TransportLeak(AssertionError):
    """Only secrets the hostile server quoted back leaked: the transport passed them through."""


# -- what is looked for ---------------------------------------------------------------------------


def _base64_cores(raw: bytes) -> Iterator[tuple[str, str]]:
    """base64 of `raw` on its own, and the part of a longer blob's base64 that encodes only
    `raw`, at each alignment (standard and URL-safe alphabets)."""
    for encode, alphabet in ((b64encode, "base64"), (urlsafe_b64encode, "base64url")):
        yield alphabet, encode(raw).decode()
        for pad in range(3):
            text = encode(b"\0" * pad + raw).decode()
            first = 1 if pad else 0  # the first group mixes the padding and the secret
            last = (pad + len(raw)) // 3  # groups made of secret bytes only
            yield f"{alphabet} (offset {pad})", text[4 * first : 4 * last]
    yield "base64 prefix", b64encode(raw).decode()[:12]


def needles(secret: str, user: str | None = None) -> list[tuple[str, str]]:
    """(form, text) pairs to look for: see the module docstring."""
    found = [
        ("plain", secret),
        ("8-character prefix", secret[:8]),
        ("URL-encoded", quote(secret, safe="")),
        ("form-encoded", quote_plus(secret)),
    ]
    found += list(_base64_cores(secret.encode()))
    if user is not None:
        found.append(("AUTH PLAIN blob", b64encode(f"\0{user}\0{secret}".encode()).decode()))
    return found


NEEDLES = {
    name: needles(secret, SMTP_USER if name == "SMTP password" else None)
    for name, secret in SECRETS.items()
}
assert all(len(text) >= 8 for forms in NEEDLES.values() for _, text in forms)


@dataclass(frozen=True)
class Leak:
    secret: str
    form: str
    place: str


def describe(leaks: list[Leak]) -> str:
    """One line per leaked secret: its forms, and where."""
    lines = []
    for secret in sorted({leak.secret for leak in leaks}):
        mine = [leak for leak in leaks if leak.secret == secret]
        forms = sorted({leak.form for leak in mine})
        places = sorted({leak.place for leak in mine})
        lines.append(f"{secret} leaked as {', '.join(forms)} in: {'; '.join(places)}")
    return "\n".join(lines)


def scan(place: str, text: str) -> list[Leak]:
    return [
        Leak(name, form, place)
        for name, forms in NEEDLES.items()
        for form, needle in forms
        if needle in text
    ]


# -- the cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    transport: str
    """DRIP_TRANSPORT: sendgrid, smtp or outbox."""
    sendgrid_step: str = "202"
    """Every SendGrid request is answered so (tests/fakes/sendgrid_server.py steps)."""
    client: str = "fast"
    smtp_step: str = "250"
    smtp_login_ok: bool = True
    worker: bool = False
    postgres: bool = False

    @property
    def echoed(self) -> set[str]:
        """The secrets this case's hostile server quotes back."""
        if self.transport == "sendgrid" and "echo" in self.sendgrid_step:
            return {"SENDGRID_API_KEY"}
        if self.transport == "smtp" and (self.smtp_step != "250" or not self.smtp_login_ok):
            return {"SMTP password"}
        return set()


def clean(case: Case) -> pytest.ParameterSet:
    return pytest.param(case, id=case.id)


# Each hostile case was a leak before the transports scrubbed encoded forms, prefixes left by
# a cut, provider ids and SMTP replies (issue 8 #9); they stay here so none comes back.
CASES = [
    clean(Case("outbox", "outbox", worker=True)),
    clean(Case("sendgrid-fast-202", "sendgrid")),
    clean(Case("sendgrid-fast-202-postgresql", "sendgrid", postgres=True)),
    clean(Case("sendgrid-official-202", "sendgrid", client="official")),
    clean(Case("smtp-250", "smtp")),
    *(
        clean(Case(f"sendgrid-{client}-{step.replace(':', '-')}", "sendgrid", step, client=client))
        for client in ("fast", "official")
        for step in ("echo:403", "echo:400", "echo-cut:400", "echo:202", "echo-line")
    ),
    clean(Case("sendgrid-fast-echo-500", "sendgrid", "echo:500", worker=True)),
    clean(Case("sendgrid-official-echo-500", "sendgrid", "echo:500", client="official")),
    clean(Case("smtp-535", "smtp", smtp_login_ok=False, worker=True)),
    clean(Case("smtp-550", "smtp", smtp_step="550")),
    clean(Case("smtp-450", "smtp", smtp_step="450")),
]
PLACES_PER_CASE = "stdout, stderr, exceptions, log records, worker output, database rows, files"


# -- running a case -------------------------------------------------------------------------------


@dataclass
class Captured:
    places: list[tuple[str, str]] = field(default_factory=list)
    exit_codes: dict[str, int] = field(default_factory=dict)

    def add(self, place: str, text: str) -> None:
        self.places.append((place, text))

    def result(self, label: str, result: Result) -> None:
        self.exit_codes[label] = result.exit_code
        self.add(f"{label}: stdout", result.stdout)
        self.add(f"{label}: stderr", result.stderr)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            self.add(f"{label}: exception", "".join(traceback.format_exception(*result.exc_info)))


COMMANDS = [
    ["subscribe", "pending@example.com", "--name", "秘密の読者", "--now", NOW],
    ["subscribe", "reader1@example.com", "--confirmed", "--now", NOW],
    ["subscribe", "reader2@example.com", "--confirmed", "--now", NOW],
    ["send", "--now", NOW, "--limit", "1"],
    ["send", "--json", "--now", NOW],
    ["deliveries", "in-doubt"],
    ["deliveries", "in-doubt", "--json"],
    ["deliveries", "failed"],
    ["deliveries", "failed", "--json"],
    ["subscribers", "list", "--json"],
    ["subscribers", "list", "--held"],
]


def run_worker(env: dict[str, str], cwd: Path, captured: Captured) -> None:
    """`drip worker` for a moment: a reader due now, one run, then SIGTERM (or its own stop)."""
    runner = CliRunner()
    subscribe = ["subscribe", "worker@example.com", "--confirmed", "--timezone", daytime_zone()]
    captured.result("subscribe (worker)", runner.invoke(main, subscribe, env=env))
    worker = subprocess.Popen(
        [sys.executable, "-m", "drip", "worker", "--interval", "1"],
        env=env,
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(2.5)
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=60)
    captured.exit_codes["worker"] = worker.returncode
    captured.add("worker: stdout", out)
    captured.add("worker: stderr", err)


def dump_database(url: str, captured: Captured) -> int:
    """Every text value of every row of every table; returns the number of rows."""
    engine = create_engine(url)
    rows = 0
    try:
        metadata = MetaData()
        with warnings.catch_warnings():
            # Expression indexes (ix_subscribers_confirm_wait) are not reflected; rows are.
            warnings.filterwarnings(
                "ignore", "Skipped unsupported reflection of expression-based index"
            )
            metadata.reflect(engine)
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(select(table)):
                    rows += 1
                    for column, value in row._mapping.items():
                        if isinstance(value, str | bytes):
                            text = value if isinstance(value, str) else value.decode("latin-1")
                            captured.add(f"database {table.name}.{column}", text)
    finally:
        engine.dispose()
    return rows


def dump_files(root: Path, captured: Captured) -> int:
    """Every file under `root` byte for byte (latin-1: nothing is lost), and each .eml's decoded
    parts. Returns the number of files."""
    files = [path for path in root.rglob("*") if path.is_file()]
    for path in files:
        data = path.read_bytes()
        where = f"file {path.relative_to(root)}"
        captured.add(where, data.decode("latin-1"))
        if path.suffix == ".eml":
            message = email.message_from_bytes(data, policy=email.policy.default)
            for part in message.walk():
                if not part.is_multipart():
                    captured.add(f"{where} (decoded part)", str(part.get_content()))
    return len(files)


def environment(case: Case, tmp: Path, sendgrid: FakeSendGrid, smtp: FakeSmtp, db: str) -> dict:
    smtp_url = smtp.url(SMTP_USER, quote(SMTP_PASSWORD, safe=""))
    return drip_env(
        DRIP_DATABASE_URL=db,
        DRIP_TRANSPORT=case.transport,
        SENDGRID_API_KEY=API_KEY,
        DRIP_SENDGRID_API_URL=sendgrid.url,
        DRIP_SENDGRID_CLIENT=case.client,
        DRIP_SECRET_KEY=SIGNING_KEY,
        DRIP_SMTP_URL=smtp_url,
        DRIP_OUTBOX_DIR=str(tmp / "outbox"),
    )


def run_case(case: Case, tmp: Path, database_url: str) -> Captured:
    captured = Captured()
    users = {SMTP_USER: SMTP_PASSWORD if case.smtp_login_ok else "not-the-password"}
    with (
        FakeSendGrid(api_key=API_KEY, default=case.sendgrid_step) as sendgrid,
        FakeSmtp(users=users, default=case.smtp_step, echo_credentials=True) as smtp,
    ):
        env = environment(case, tmp, sendgrid, smtp, database_url)
        runner = CliRunner()
        captured.result("db upgrade", runner.invoke(main, ["db", "upgrade"], env=env))
        for command in COMMANDS:
            captured.result(" ".join(command[:3]), runner.invoke(main, command, env=env))
        if case.worker:
            run_worker(env, tmp, captured)
        requests = len(sendgrid.requests) + smtp.transactions + smtp.auth_failures
    assert case.transport == "outbox" or requests > 0, "the hostile server was never asked"
    return captured


@pytest.fixture
def case_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The case's database: a SQLite file, or the PostgreSQL test database (emptied) reached
    with a sentinel password in the URL (the server trusts loopback, so any password works)."""
    case: Case = request.getfixturevalue("case")
    if not case.postgres:
        yield f"sqlite:///{tmp_path / 'cases' / 'drip.db'}"
        return
    url: str = request.getfixturevalue("postgres_database")
    _truncate(url)
    yield make_url(url).set(password=DB_PASSWORD).render_as_string(hide_password=False)


SCANNED: dict[str, dict[str, int]] = {}
"""Per case: places scanned, database rows, files, log records (the report quotes them)."""


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_no_secret_leaks(
    case: Case, case_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    root = tmp_path / "cases"
    root.mkdir(exist_ok=True)
    captured = run_case(case, root, case_database)
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        captured.add(f"log {record.name} {record.levelname}", text)
    rows = dump_database(case_database, captured)
    files = dump_files(root, captured)
    SCANNED[case.id] = {
        "places": len(captured.places),
        "rows": rows,
        "files": files,
        "log records": len(caplog.records),
    }
    print(json.dumps({case.id: SCANNED[case.id], "exit codes": captured.exit_codes}))
    assert captured.exit_codes["db upgrade"] == 0
    leaks = [leak for place, text in captured.places for leak in scan(place, text)]
    foreign = [leak for leak in leaks if leak.secret not in case.echoed]
    assert foreign == [], describe(foreign)
    if leaks:
        raise TransportLeak(describe(leaks))


def test_the_scan_finds_every_form_a_hostile_server_quotes() -> None:
    """The scan is only as good as its needles: each form the fakes echo is found."""
    from tests.fakes.sendgrid_server import echo_text
    from tests.fakes.smtp_server import echo_credentials_text

    found = {leak.form for leak in scan("echo", echo_text(API_KEY))}
    assert {"plain", "8-character prefix", "base64", "base64 (offset 1)"} <= found, found
    smtp = echo_credentials_text(SMTP_USER.encode(), SMTP_PASSWORD.encode())
    found = {leak.form for leak in scan("echo", smtp)}
    assert {"plain", "base64", "AUTH PLAIN blob", "URL-encoded"} <= found, found
    assert scan("cut", "k" * 290 + " " + API_KEY[:9]) != []
    assert scan("clean", "sent 1, retried 0; https://drip.example.jp/u/abc.def") == []


SMTP_AUTH = f"{SMTP_USER}:{quote(SMTP_PASSWORD, safe='')}"
BAD_SETTINGS = {
    "database unreachable": {
        "DRIP_DATABASE_URL": f"postgresql+psycopg://drip:{DB_PASSWORD}@127.0.0.1:9/drip"
    },
    "database URL unparsable": {
        "DRIP_DATABASE_URL": f"postgresql+psycopg://drip:{DB_PASSWORD}@[::1/drip"
    },
    "SMTP host invalid": {"DRIP_TRANSPORT": "smtp", "DRIP_SMTP_URL": f"smtp://{SMTP_AUTH}@a..b"},
    "SMTP password in clear to a remote host": {
        "DRIP_TRANSPORT": "smtp",
        "DRIP_SMTP_URL": f"smtp://{SMTP_AUTH}@192.0.2.2:25?starttls=0",
    },
    "SMTP URL unparsable": {"DRIP_TRANSPORT": "smtp", "DRIP_SMTP_URL": f"smtp://{SMTP_AUTH}@[::1"},
    "a weak second signing key": {"DRIP_SECRET_KEY": f"{SIGNING_KEY},weak"},
    "SendGrid over plain http": {"DRIP_SENDGRID_API_URL": "http://192.0.2.2:28080"},
    **{
        f"SendGrid URL with a proxy password, {how}": {"DRIP_SENDGRID_API_URL": url}
        for how, url in (
            ("invalid host", f"https://drip:{URL_PASSWORD}@a..b"),
            ("plain http", f"http://drip:{URL_PASSWORD}@192.0.2.2:3128"),
            ("unsafe character", f"https://drip:{URL_PASSWORD}@api.example.com/ x"),
            ("unclosed IPv6", f"https://drip:{URL_PASSWORD}@[::1"),
        )
    },
}


@pytest.mark.parametrize("broken", sorted(BAD_SETTINGS))
def test_errors_about_settings_never_quote_a_secret(
    broken: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Configuration and outage errors (src/drip/config.py, cli, db) name the setting, never
    its secret; checked for `send`, `subscribe` and `worker`, which read every setting."""
    caplog.set_level(logging.INFO)
    env = drip_env(
        DRIP_DATABASE_URL=f"sqlite:///{tmp_path / 'drip.db'}",
        DRIP_TRANSPORT="sendgrid",
        SENDGRID_API_KEY=API_KEY,
        DRIP_SECRET_KEY=SIGNING_KEY,
        DRIP_SMTP_URL=f"smtp://{SMTP_AUTH}@127.0.0.1:9",
    )
    env.update(BAD_SETTINGS[broken])
    captured = Captured()
    for command in (["send", "--now", NOW], ["subscribe", "x@example.com"], ["worker"]):
        result = CliRunner().invoke(main, command, env=env)
        captured.result(command[0], result)
        assert result.exit_code in (1, 2), (command, result.output)
    for record in caplog.records:
        captured.add(f"log {record.name}", record.getMessage())
    leaks = [leak for place, text in captured.places for leak in scan(place, text)]
    assert leaks == [], describe(leaks)
