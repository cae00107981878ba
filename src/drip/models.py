"""SQLAlchemy 2.0 models: subscribers, the delivery ledger and provider events.

The schema itself is created by the Alembic migrations in `drip.migrations`; these models must
match them (a test compares the two). Only `drip.store` builds queries against these tables.

Invariants the store keeps (and the send query relies on):
- `Subscriber.next_send_at` is NULL unless the subscriber is 'active' and has a `next_lesson`,
  so the partial index on (course_id, next_send_at) holds only candidates for sending.
- One `Delivery` row per (subscriber, lesson slug), ever: the ledger that makes a lesson go out at
  most once, whatever runs crash or overlap.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

# Defined in drip.statuses (no database imports there); importable from here as before.
from drip.statuses import SUPPRESSED_STATUSES as SUPPRESSED_STATUSES
from drip.statuses import DeliveryStatus as DeliveryStatus
from drip.statuses import SubscriberStatus as SubscriberStatus

# SQLite keeps datetimes as text and compares them as strings, so every value must be written in
# one fixed-width format; this is SQLAlchemy's default, pinned here so it can never drift.
SQLITE_DATETIME_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
)
SQLITE_SHA256_HEX = "drip_sha256_hex"
"""An SQL function on every SQLite connection drip opens (`drip.db`): the hex SHA-256 of a
text's UTF-8, NULL for NULL; PostgreSQL's encode(sha256(convert_to(x, 'UTF8')), 'hex')."""


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in Python, a naive UTC timestamp in the database.

    Writing a naive datetime raises ValueError: a naive value has no defined instant, and
    guessing would silently shift schedules. Values read back are aware (tzinfo=UTC).
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            pinned = sqlite.DATETIME(storage_format=SQLITE_DATETIME_FORMAT)  # type: ignore[no-untyped-call]
            return dialect.type_descriptor(pinned)
        return dialect.type_descriptor(DateTime(timezone=False))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise ValueError(f"expected an aware datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} refused: pass an aware datetime (UTC)"
            )
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def _check_in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(member.value) for member in values)})"


# Integer on SQLite so the primary key is the rowid (auto-increment without a sequence).
BigIntId = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012 (SQLAlchemy's API)


DUE_PREDICATE = "next_send_at IS NOT NULL"
"""The due index's predicate: the send query and `drip.idle.DUE` repeat it word for word."""
ATTENTION_PREDICATE = "status IN ('retry', 'failed', 'in_doubt')"
"""PostgreSQL's ix_deliveries_course_id_status holds these deliveries only: the ones listed or
settled by status (the idle probe, `drip deliveries`, the settling pass)."""
LEFT_PREDICATE = "status IN ('unsubscribed', 'bounced', 'complained')"
"""The readers who left for good (`SUPPRESSED_STATUSES`), word for word as `drip stats` asks:
SQLite uses a partial index only for a query that repeats its predicate."""
OPTED_IN_PREDICATE = "confirmed_at > created_at"
"""Readers who confirmed after signing up (double opt-in), as `drip stats` asks."""
CONFIRM_WAIT = {
    "sqlite": "julianday(confirmed_at) - julianday(created_at)",
    "postgresql": "confirmed_at - created_at",
}
"""The time from signup to confirm (SQLite: days as a float; PostgreSQL: an interval), word
for word as `drip stats` orders by it, so that the database reads it from the index."""


class Subscriber(Base):
    """One person's enrolment in one course. `email` is normalised lower-case."""

    __tablename__ = "subscribers"
    __table_args__ = (
        UniqueConstraint("course_id", "email", name="uq_subscribers_course_id_email"),
        CheckConstraint(_check_in("status", SubscriberStatus), name="status"),
        # The send query: "who in this course is due by now" must be an index probe even among a
        # million subscribers, so only rows that have a next send at all are indexed. It takes
        # them in (next_send_at, id) order: SQLite's entries end with the rowid (the id) anyway;
        # PostgreSQL needs id in the key, or it sorts every due row for each batch (migration
        # 0007), and the included columns make the dry run's count per lesson index-only.
        Index(
            "ix_subscribers_due",
            "course_id",
            "next_send_at",
            sqlite_where=text(DUE_PREDICATE),
        ).ddl_if(dialect="sqlite"),
        Index(
            "ix_subscribers_due",
            "course_id",
            "next_send_at",
            "id",
            postgresql_include=["next_lesson", "status"],
            postgresql_where=text(DUE_PREDICATE),
        ).ddl_if(dialect="postgresql"),
        Index("ix_subscribers_email", "email"),
        # The confirmation queue and the timed pauses: only rows that owe something are indexed.
        Index(
            "ix_subscribers_confirmation_owed",
            "course_id",
            "confirmation_wanted_at",
            sqlite_where="confirmation_wanted_at IS NOT NULL",
            postgresql_where="confirmation_wanted_at IS NOT NULL",
        ),
        Index(
            "ix_subscribers_pause_ends",
            "course_id",
            "paused_until",
            sqlite_where="paused_until IS NOT NULL",
            postgresql_where="paused_until IS NOT NULL",
        ),
        # The 30-day purge of signups never confirmed (and drip.idle's probe for it).
        Index(
            "ix_subscribers_pending",
            "course_id",
            "created_at",
            sqlite_where="status = 'pending'",
            postgresql_where="status = 'pending'",
        ),
        # `drip stats` among a million readers: signups per day read from an index, the readers
        # who left (a few per cent) from a partial one, and the median time to confirm read in
        # order from an index on the wait itself (an expression: each database's own).
        Index("ix_subscribers_signups", "course_id", "created_at", "confirmed_at"),
        Index(
            "ix_subscribers_left",
            "course_id",
            "next_lesson",
            "status",
            "status_changed_at",
            sqlite_where=text(LEFT_PREDICATE),
            postgresql_where=text(LEFT_PREDICATE),
        ),
        Index(
            "ix_subscribers_confirm_wait",
            "course_id",
            text(CONFIRM_WAIT["sqlite"]),
            "created_at",
            sqlite_where=text(OPTED_IN_PREDICATE),
        ).ddl_if(dialect="sqlite"),
        Index(
            "ix_subscribers_confirm_wait",
            "course_id",
            text(f"({CONFIRM_WAIT['postgresql']})"),
            postgresql_include=["created_at", "confirmed_at"],
            postgresql_where=text(OPTED_IN_PREDICATE),
        ).ddl_if(dialect="postgresql"),
        # Ids are in signed links: never hand a deleted (erased) reader's id to someone else.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    course_id: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    consent_at: Mapped[datetime]
    consent_source: Mapped[str] = mapped_column(String(300))
    confirmed_at: Mapped[datetime | None]
    paused_at: Mapped[datetime | None]
    status_changed_at: Mapped[datetime]
    confirmation_sent_at: Mapped[datetime | None]
    next_lesson: Mapped[str | None] = mapped_column(String(100))
    next_send_at: Mapped[datetime | None]
    last_sent_at: Mapped[datetime | None]
    held_reason: Mapped[str | None] = mapped_column(Text)
    """Why an 'active' subscriber with a next lesson has no next_send_at (held); meaningful
    only while that is so, and set by every code path that holds."""
    paused_until: Mapped[datetime | None]
    """A 'paused' reader's pause ends then (`drip send` resumes it); NULL: until resumed."""
    send_time: Mapped[str | None] = mapped_column(String(5))
    """The reader's own "HH:MM" for lessons after the first; NULL: the course's send_time."""
    confirmation_wanted_at: Mapped[datetime | None]
    """A double opt-in email is owed since then; NULL once sent (the confirmation queue)."""


class DeliveryOutcome(enum.IntFlag):
    """What the provider reported of a delivery, as bits of `Delivery.event_flags`: a bit is
    set once at least one event of its kind names the delivery (set semantics: a second open
    changes nothing, and so does the order the events come in)."""

    DELIVERED = 1
    OPENED = 2
    """Opened by a person: an open the provider does not flag as a machine open."""
    MACHINE_OPENED = 4
    """Opened by a machine (e.g. Apple Mail Privacy Protection fetching every image)."""
    CLICKED = 8
    BOUNCED = 16
    """A bounce or a drop."""
    COMPLAINED = 32


class Delivery(Base):
    """The ledger: one row per (subscriber, lesson) ever sent or being sent."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "lesson", name="uq_deliveries_subscriber_id_lesson"),
        CheckConstraint(_check_in("status", DeliveryStatus), name="status"),
        # By status per course: the rows an operator or the settling pass looks for. PostgreSQL
        # indexes only those (migration 0007), so a send's three writes of its row add no entry
        # here; SQLite rewrites an index only when its columns change, and would not use a
        # partial index for a status bound as a parameter.
        Index("ix_deliveries_course_id_status", "course_id", "status").ddl_if(dialect="sqlite"),
        Index(
            "ix_deliveries_course_id_status",
            "course_id",
            "status",
            postgresql_where=text(ATTENTION_PREDICATE),
        ).ddl_if(dialect="postgresql"),
        # release_claims looks up the open rows of one run; few rows are open at once.
        Index(
            "ix_deliveries_open_run",
            "run_id",
            sqlite_where="status IN ('claimed', 'sending')",
            postgresql_where="status IN ('claimed', 'sending')",
        ),
        # `drip stats`: the funnel is one GROUP BY (lesson, event_flags) in this index's order
        # (sent rows only, so claims and hand-overs never touch it; sent_at for --since).
        Index(
            "ix_deliveries_outcomes",
            "course_id",
            "lesson",
            "event_flags",
            "sent_at",
            sqlite_where="status = 'sent'",
            postgresql_where="status = 'sent'",
        ),
        # Ids travel with provider events: a late event must never land on another delivery.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("subscribers.id", ondelete="CASCADE")
    )
    course_id: Mapped[str] = mapped_column(String(100))
    lesson: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[datetime]
    lease_until: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    provider_id: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[str | None] = mapped_column(Text)
    """Why it is in this state (provider reply, error); never holds secrets."""
    updated_at: Mapped[datetime]
    event_flags: Mapped[int] = mapped_column(Integer, server_default="0")
    """`DeliveryOutcome` bits: what the provider's events reported of it, set as they arrive
    (whatever the delivery's status then)."""


class Event(Base):
    """An event reported by a provider (webhook), stored once per provider event id."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("provider", "provider_event_id", name="uq_events_provider_event"),
        Index("ix_events_delivery_id", "delivery_id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    provider_event_id: Mapped[str | None] = mapped_column(String(200))
    # No foreign key (migration 0006): the webhook's INSERT takes it from a join with the
    # ledger, and the GDPR erase deletes a delivery's events with it.
    delivery_id: Mapped[int | None] = mapped_column(BigIntId)
    subscriber_id: Mapped[int | None] = mapped_column(BigIntId)
    type: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    # PostgreSQL `json`, not `jsonb` (0006): written once, read whole or by one key.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON())


class Suppression(Base):
    """An erased address: only its SHA-256 is kept, so it is never mailed or imported again."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("email_hash", name="uq_suppressions_email_hash"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]


# The tables, for the Core statements of the store's hot paths.
subscribers = cast(Table, Subscriber.__table__)
deliveries = cast(Table, Delivery.__table__)
events = cast(Table, Event.__table__)
suppressions = cast(Table, Suppression.__table__)
