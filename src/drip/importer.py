"""Import subscribers from a CSV file: validate every row, import the valid ones in batches.

The file is streamed (never loaded whole); each batch of rows is one transaction of a few
statements (one look-up, one multi-row INSERT ... ON CONFLICT DO NOTHING, one bulk confirm), so
100,000 rows take seconds on SQLite and a concurrent `drip send` waits at most one batch.
Existing enrolments are never changed, except that pending ones are confirmed by a confirmed
import; unsubscribed, bounced and complained addresses are never re-activated.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from drip import store
from drip.addresses import InvalidAddressError, check_timezone, clean_name, normalize_email
from drip.errors import UsageError
from drip.models import SUPPRESSED_STATUSES, SubscriberStatus

COLUMNS = ("email", "name", "timezone")
BATCH_SIZE = 1_000
REPLACEMENT_CHARACTER = "\ufffd"


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


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    subscriber: store.NewSubscriber


def _open(path: Path) -> Iterator[str]:
    try:
        # utf-8-sig drops a BOM if present; undecodable bytes become U+FFFD and the row holding
        # them is reported invalid, instead of aborting the import half-way through.
        handle = path.open(encoding="utf-8-sig", errors="replace", newline="")
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such file") from exc
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    with handle:
        yield from handle


def _header(path: Path, header: list[str] | None) -> dict[str, int]:
    if header is None or not any(cell.strip() for cell in header):
        raise UsageError(
            f"{path}: no header row; the first line must name the columns, e.g. email,name,timezone"
        )
    names = [cell.strip().lower() for cell in header]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise UsageError(
            f"{path}:1: unknown column(s) {', '.join(repr(name) for name in unknown)}; the header"
            " may name only email, name and timezone"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"{path}:1: column(s) {', '.join(repeated)} appear more than once")
    if "email" not in names:
        raise UsageError(f"{path}:1: no 'email' column; the header must name one")
    return {name: index for index, name in enumerate(names)}


def _validate(
    cells: list[str], columns: dict[str, int], default_timezone: str
) -> store.NewSubscriber:
    """Raises InvalidAddressError (or ValueError for the row's shape) with the reason."""
    if len(cells) != len(columns):
        raise ValueError(f"has {len(cells)} field(s) but the header has {len(columns)}")
    if any(REPLACEMENT_CHARACTER in cell for cell in cells):
        raise ValueError("is not valid UTF-8; save the file as UTF-8")
    raw_email = cells[columns["email"]]
    if not raw_email.strip():
        raise ValueError("has no email address")
    email = normalize_email(raw_email)
    name = clean_name(cells[columns["name"]]) if "name" in columns else None
    zone = cells[columns["timezone"]].strip() if "timezone" in columns else ""
    return store.NewSubscriber(email, name, check_timezone(zone or default_timezone))


def _rows(path: Path, default_timezone: str, report: ImportReport) -> Iterator[_Row]:
    """Valid, first-seen rows of the file; invalid and repeated rows go into `report`."""
    reader = csv.reader(_open(path))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise UsageError(f"{path}:1: the header is not valid CSV ({exc})") from exc
    columns = _header(path, header)
    first_seen: dict[str, int] = {}
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report.invalid.append((line, f"is not valid CSV ({exc})"))
            continue
        if not any(cell.strip() for cell in cells):
            continue
        report.rows += 1
        try:
            subscriber = _validate(cells, columns, default_timezone)
        except (InvalidAddressError, ValueError) as exc:
            report.invalid.append((line, str(exc)))
            continue
        first = first_seen.setdefault(subscriber.email, line)
        if first != line:
            report.merged.append((line, first))
            continue
        yield _Row(line, subscriber)


def _batches(rows: Iterator[_Row], size: int) -> Iterator[list[_Row]]:
    batch: list[_Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


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
) -> ImportReport:
    """Import the subscribers listed in the CSV file `path` into `course_id`.

    The header names `email` and optionally `name` and `timezone` (default: `default_timezone`).
    With `confirmed`, new rows start 'active' at `first_send_at(timezone)` and existing pending
    ones are confirmed the same way (with their stored timezone); without it new rows are
    'pending'. The consent source recorded is "import:<file name>". `sessions` makes a Session;
    each batch commits on its own. With `dry_run` nothing is written and the report says what
    would happen.

    Raises `UsageError` for a missing or unreadable file or a bad header; invalid rows do not
    raise, they are listed in the report with their line and reason.
    """
    if confirmed and first_send_at is None:
        raise ValueError("a confirmed import needs first_send_at")
    report = ImportReport(dry_run=dry_run)
    consent_source = f"import:{path.name}"
    for batch in _batches(_rows(path, default_timezone, report), batch_size):
        with sessions() as session:
            existing = store.existing_subscribers(
                session, course_id, [row.subscriber.email for row in batch]
            )
            new: list[store.NewSubscriber] = []
            to_confirm: list[tuple[int, datetime | None]] = []
            for row in batch:
                found = existing.get(row.subscriber.email)
                if found is None:
                    subscriber = row.subscriber
                    if first_send_at is not None and confirmed:
                        subscriber = store.NewSubscriber(
                            subscriber.email,
                            subscriber.name,
                            subscriber.timezone,
                            first_send_at(subscriber.timezone),
                        )
                    new.append(subscriber)
                elif found.status in SUPPRESSED_STATUSES:
                    report.suppressed.append(row.line)
                elif found.status is SubscriberStatus.PENDING and first_send_at and confirmed:
                    to_confirm.append((found.id, first_send_at(found.timezone)))
                else:
                    report.present += 1
            if dry_run:
                report.imported += len(new)
                report.confirmed += len(to_confirm)
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
            session.commit()
        report.imported += inserted
        report.confirmed += confirmed_now
        # Added or confirmed by someone else between the look-up and the write.
        report.present += len(new) - inserted + len(to_confirm) - confirmed_now
    return report
