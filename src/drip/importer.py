"""Import subscribers from a CSV file: validate every row, import the valid ones in batches.

The file is read and checked whole first (decoded strictly as UTF-8, parsed strictly as CSV), so
a file that cannot be imported as a whole imports nothing. Then each batch of rows is one
transaction of a few statements (one look-up, one multi-row INSERT ... ON CONFLICT DO NOTHING,
one bulk confirm), so 100,000 rows take seconds on SQLite and a concurrent `drip send` waits at
most one batch.
Existing enrolments are never changed, except that pending ones are confirmed by a confirmed
import; unsubscribed, bounced and complained addresses are never re-activated.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from drip import store
from drip.addresses import check_timezone, clean_name, normalize_email
from drip.errors import InvalidAddressError, UsageError
from drip.models import SUPPRESSED_STATUSES, SubscriberStatus
from drip.store.subscribers import KEPT_STATUSES

COLUMNS = ("email", "name", "timezone", "status")
EXPORT_COLUMNS = (
    "email",
    "name",
    "timezone",
    "status",
    "created_at",
    "confirmed_at",
    "consent_at",
    "consent_source",
)
"""What `drip subscribers export` writes, in this order. Importing it gives back the same
readers: email, name and timezone as written, `status` as `KEPT_STATUSES` says; the consent
columns are the operator's record and are accepted quietly (the import records its own)."""
QUIET_COLUMNS = frozenset(EXPORT_COLUMNS) - frozenset(COLUMNS)
ERASED_REASON = (
    "this address was erased at the person's request (GDPR) and may never be imported or"
    " mailed again; remove it from your list"
)
BATCH_SIZE = 1_000


@dataclass
class ImportReport:
    """What an import did (or, with dry_run, would do). Line numbers are 1-based file lines."""

    dry_run: bool = False
    rows: int = 0
    """Data rows read (blank lines not counted)."""
    imported: int = 0
    """New enrolments created ('active' when confirmed, else 'pending')."""
    confirmed: int = 0
    """Existing pending enrolments confirmed by a confirmed import."""
    present: int = 0
    """Addresses already enrolled, left as they were."""
    suppressed: list[int] = field(default_factory=list)
    """Lines whose address unsubscribed, bounced or complained: not re-activated."""
    merged: list[tuple[int, int]] = field(default_factory=list)
    """(line, first line) for repeated addresses; the first occurrence wins."""
    invalid: list[tuple[int, str]] = field(default_factory=list)
    """(line, reason) for rows that were not imported."""
    ignored_columns: list[str] = field(default_factory=list)
    """Header columns drip does not know, as named there: not imported (an export's consent
    columns are known and not listed)."""
    kept: dict[str, int] = field(default_factory=dict)
    """New enrolments that kept the file's `status` (pending, completed, unsubscribed, bounced,
    complained: see `KEPT_STATUSES`), per status; not counted in `imported`."""


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    subscriber: store.NewSubscriber
    status: SubscriberStatus | None = None
    """From the file's `status` column, when it is one an import keeps (KEPT_STATUSES)."""


@dataclass(frozen=True)
class _Header:
    columns: dict[str, int]
    """The index of each known column (email, and name / timezone when present)."""
    width: int
    """How many fields the header row has: every row must have as many."""
    ignored: list[str]
    """Other columns, as the header names them: ignored."""


SAVE_AS_UTF8 = (
    "in Excel use File > Save As > 'CSV UTF-8 (Comma delimited) (*.csv)', or convert it with"
    " iconv -f CP932 -t UTF-8 FILE > FILE-utf8.csv; nothing was imported"
)


def read_csv_text(path: Path) -> str:
    """The whole file, decoded strictly as UTF-8 (a BOM is dropped), before anything is written.

    Raises `UsageError` for a directory, a missing or unreadable file, and a file that is not
    UTF-8: a Shift_JIS/CP932 one (what Excel saves as plain "CSV") is named as such, also when
    it holds only half-width katakana (whose bytes happen to be valid UTF-8: `ﾐｶ` reads `ж`);
    UTF-16, binary and .xlsx files are "not a UTF-8 CSV".
    """
    try:
        data = path.read_bytes()
    except IsADirectoryError as exc:
        raise UsageError(f"{path}: is a directory; give the CSV file") from exc
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such file") from exc
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if data.startswith(b"PK\x03\x04"):
        raise UsageError(f"{path}: not a UTF-8 CSV but an Excel workbook (.xlsx); {SAVE_AS_UTF8}")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data:
        raise UsageError(
            f"{path}: not a UTF-8 CSV (it holds NUL bytes: UTF-16 or a binary file); {SAVE_AS_UTF8}"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if _decodes_as_cp932(data):
            raise UsageError(_cp932_message(path)) from exc
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"{path}:{line}: not a UTF-8 CSV (byte 0x{data[exc.start]:02X} on line {line} is not"
            f" UTF-8); {SAVE_AS_UTF8}"
        ) from exc
    if not data.startswith(codecs.BOM_UTF8) and _half_width_kana_in_cp932(data, text):
        raise UsageError(_cp932_message(path))
    return text


def _cp932_message(path: Path) -> str:
    return (
        f"{path}: not a UTF-8 CSV: it looks like Shift_JIS/CP932, what Excel saves as plain"
        f" 'CSV'; {SAVE_AS_UTF8}"
    )


def _decodes_as_cp932(data: bytes) -> bool:
    try:
        data.decode("cp932")
    except UnicodeDecodeError:
        return False
    return True


def _half_width_kana_in_cp932(data: bytes, text: str) -> bool:
    """True for valid UTF-8 that is really CP932 half-width katakana (ASCII and ｱ-ﾝ only): read
    as UTF-8 every such pair is a Cyrillic, Greek ... letter, but real names in those scripts
    (Иван: capitals) and any real Japanese (three-byte UTF-8) do not decode to kana alone."""
    if text.isascii() or any(ord(ch) >= 0x800 for ch in text):
        return False
    try:
        as_cp932 = data.decode("cp932")
    except UnicodeDecodeError:
        return False
    return all(ch.isascii() or "\uff61" <= ch <= "\uff9f" for ch in as_cp932)


def _header(path: Path, header: list[str] | None) -> _Header:
    if header is None or not any(cell.strip() for cell in header):
        raise UsageError(
            f"{path}: no header row; the first line must name the columns, e.g. email,name,timezone"
        )
    names = [cell.strip().lower() for cell in header]
    repeated = sorted({name for name in names if name in COLUMNS and names.count(name) > 1})
    if repeated:
        raise UsageError(f"{path}:1: column(s) {', '.join(repeated)} appear more than once")
    if "email" not in names:
        found = ", ".join(repr(cell.strip()) for cell in header)
        raise UsageError(
            f"{path}:1: no 'email' column (the header names {found}); the first line must name"
            " the columns, e.g. email,name,timezone"
        )
    return _Header(
        columns={name: index for index, name in enumerate(names) if name in COLUMNS},
        width=len(names),
        ignored=[
            cell.strip()
            for cell in header
            if cell.strip().lower() not in COLUMNS and cell.strip().lower() not in QUIET_COLUMNS
        ],
    )


def _status(cells: list[str], header: _Header) -> SubscriberStatus | None:
    """The row's `status` when the import keeps it (a pending, finished or suppressed reader
    stays so); None for active and paused ones (they start as any imported row) and when there
    is no such column. ValueError naming the states for any other value."""
    if "status" not in header.columns:
        return None
    text = cells[header.columns["status"]].strip().lower()
    if not text:
        return None
    try:
        status = SubscriberStatus(text)
    except ValueError:
        known = ", ".join(member.value for member in SubscriberStatus)
        raise ValueError(f"has status {text!r}; use one of {known} or leave it empty") from None
    return status if status in KEPT_STATUSES else None


def _validate(cells: list[str], header: _Header, default_timezone: str) -> store.NewSubscriber:
    """Raises InvalidAddressError (or ValueError for the row's shape) with the reason."""
    if len(cells) != header.width:
        raise ValueError(f"has {len(cells)} field(s) but the header has {header.width}")
    if any("\n" in cell or "\r" in cell for cell in cells):
        raise ValueError(
            "has a field holding a line break: a quote opened on this line closes on a later"
            " one, swallowing the rows between; fix the quotes"
        )
    columns = header.columns
    raw_email = cells[columns["email"]]
    if not raw_email.strip():
        raise ValueError("has no email address")
    email = normalize_email(raw_email)
    name = clean_name(cells[columns["name"]]) if "name" in columns else None
    zone = cells[columns["timezone"]].strip() if "timezone" in columns else ""
    return store.NewSubscriber(email, name, check_timezone(zone or default_timezone))


def _records(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of every record, parsed strictly; `UsageError` naming the line of a
    record that is not valid CSV (an unterminated quote, text after a closing quote)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise UsageError(
                f"{path}:{line}: not valid CSV ({exc}): a quote opened on this line is never"
                " closed, or text follows a closing quote; fix the quotes; nothing was imported"
            ) from exc
        yield line, cells


def _read_csv(path: Path) -> tuple[str, _Header]:
    """Read, decode and parse the whole file (without validating rows) before anything is
    written: the text and its header. `UsageError` for a file that cannot be imported at all."""
    text = read_csv_text(path)
    records = _records(path, text)
    first = next(records, None)
    header = _header(path, first[1] if first is not None else None)
    for _ in records:
        pass
    return text, header


def _rows(
    path: Path, text: str, header: _Header, default_timezone: str, report: ImportReport
) -> Iterator[_Row]:
    """Valid, first-seen rows of the file; invalid and repeated rows go into `report`."""
    records = _records(path, text)
    next(records)  # the header
    first_seen: dict[str, int] = {}
    for line, cells in records:
        if not any(cell.strip() for cell in cells):
            continue
        report.rows += 1
        try:
            subscriber = _validate(cells, header, default_timezone)
            status = _status(cells, header)
        except (InvalidAddressError, ValueError) as exc:
            report.invalid.append((line, str(exc)))
            continue
        first = first_seen.setdefault(subscriber.email, line)
        if first != line:
            report.merged.append((line, first))
            continue
        yield _Row(line, subscriber, status)


def _batches(rows: Iterator[_Row], size: int) -> Iterator[list[_Row]]:
    batch: list[_Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sort_batch(
    session: Session,
    course_id: str,
    batch: list[_Row],
    first_send_at: Callable[[str], datetime] | None,
    report: ImportReport,
) -> tuple[
    list[store.NewSubscriber],
    list[tuple[int, datetime | None]],
    dict[SubscriberStatus, list[store.NewSubscriber]],
]:
    """The batch's new subscribers (starting at `first_send_at(timezone)` when given), the
    pending ones to confirm (only when `first_send_at` is given) and the new ones that keep the
    file's status, per status; suppressed and present rows are counted in `report`; erased
    addresses (the suppression list) are refused as invalid with the reason. A row whose file
    status is kept never confirms an existing pending reader: the file says it never did."""
    emails = [row.subscriber.email for row in batch]
    existing = store.existing_subscribers(session, course_id, emails)
    erased = store.suppressed_emails(session, emails)
    new: list[store.NewSubscriber] = []
    to_confirm: list[tuple[int, datetime | None]] = []
    kept: dict[SubscriberStatus, list[store.NewSubscriber]] = {}
    for row in batch:
        found = existing.get(row.subscriber.email)
        if row.subscriber.email in erased:
            report.invalid.append((row.line, ERASED_REASON))
        elif found is None and row.status is not None:
            kept.setdefault(row.status, []).append(row.subscriber)
        elif found is None:
            subscriber = row.subscriber
            if first_send_at is not None:
                subscriber = store.NewSubscriber(
                    subscriber.email,
                    subscriber.name,
                    subscriber.timezone,
                    first_send_at(subscriber.timezone),
                )
            new.append(subscriber)
        elif found.status in SUPPRESSED_STATUSES:
            report.suppressed.append(row.line)
        elif (
            found.status is SubscriberStatus.PENDING
            and first_send_at is not None
            and row.status is None
        ):
            to_confirm.append((found.id, first_send_at(found.timezone)))
        else:
            report.present += 1
    return new, to_confirm, kept


def import_subscribers(
    sessions: Callable[[], Session],
    path: Path,
    *,
    course_id: str,
    default_timezone: str,
    first_lesson: str,
    now: datetime,
    confirmed: bool,
    first_send_at: Callable[[str], datetime] | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import the subscribers listed in the CSV file `path` into `course_id`.

    The header names `email` and optionally `name` and `timezone` (default: `default_timezone`).
    With `confirmed`, new rows start 'active' at `first_send_at(timezone)` and existing pending
    ones are confirmed the same way (with their stored timezone); without it new rows are
    'pending'. The consent source recorded is "import:<file name>". `sessions` makes a Session;
    each batch commits on its own. With `dry_run` nothing is written and the report says what
    would happen.

    The whole file is decoded (strictly, as UTF-8) and parsed (strictly, as CSV) before anything
    is written: `UsageError` for a directory, a missing or unreadable file, a file that is not
    UTF-8 (a Shift_JIS/CP932 one is named as such), a record that is not valid CSV (an
    unterminated quote: its line is named) or a bad header; then nothing is imported. Columns
    other than email, name and timezone are ignored (`report.ignored_columns`), quietly for the
    consent columns of an export (EXPORT_COLUMNS); a `status` column keeps pending, completed
    and suppressed readers so (`report.kept`; a bad value is an invalid row). Invalid rows do
    not raise: they are listed in the report with their line and reason. `progress` is called
    with the number of valid, first-seen rows handled after each batch.
    """
    if confirmed and first_send_at is None:
        raise ValueError("a confirmed import needs first_send_at")
    text, header = _read_csv(path)
    report = ImportReport(dry_run=dry_run, ignored_columns=header.ignored)
    consent_source = f"import:{path.name}"
    starts = first_send_at if confirmed else None
    for batch in _batches(_rows(path, text, header, default_timezone, report), batch_size):
        with sessions() as session:
            new, to_confirm, kept = _sort_batch(session, course_id, batch, starts, report)
            if dry_run:
                report.imported += len(new)
                report.confirmed += len(to_confirm)
                for status, rows in kept.items():
                    report.kept[status.value] = report.kept.get(status.value, 0) + len(rows)
                if progress is not None:
                    progress(len(batch))
                continue
            inserted = store.insert_subscribers(
                session,
                course_id,
                new,
                now=now,
                consent_source=consent_source,
                confirmed=confirmed,
                first_lesson=first_lesson,
            )
            confirmed_now = store.confirm_pending(
                session, to_confirm, now=now, first_lesson=first_lesson
            )
            kept_now: dict[str, int] = {}
            for status, rows in kept.items():
                kept_now[status.value] = store.insert_subscribers(
                    session,
                    course_id,
                    rows,
                    now=now,
                    consent_source=consent_source,
                    confirmed=False,
                    first_lesson=first_lesson,
                    status=status,
                )
            session.commit()
        report.imported += inserted
        report.confirmed += confirmed_now
        for status_name, count in kept_now.items():
            report.kept[status_name] = report.kept.get(status_name, 0) + count
        # Added or confirmed by someone else between the look-up and the write.
        report.present += len(new) - inserted + len(to_confirm) - confirmed_now
        report.present += sum(len(rows) for rows in kept.values()) - sum(kept_now.values())
        if progress is not None:
            progress(len(batch))
    return report


def export_row(view: store.SubscriberView) -> list[str]:
    """One reader as the row `drip subscribers export` writes (EXPORT_COLUMNS; moments in ISO
    8601 UTC, an empty cell for none)."""

    def moment(value: datetime | None) -> str:
        return value.isoformat() if value is not None else ""

    return [
        view.email,
        view.name or "",
        view.timezone,
        view.status.value,
        moment(view.created_at),
        moment(view.confirmed_at),
        moment(view.consent_at),
        view.consent_source,
    ]
