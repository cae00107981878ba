"""The store's due query and counts on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from tests.store_support import COURSE, T0, add, claim, view

from drip import store
from drip.models import subscribers
from drip.store._sql import due_filter


def test_the_due_query_uses_the_partial_index(session: Session) -> None:
    query = select(subscribers.c.id).where(*due_filter(COURSE, T0))
    compiled = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        plan = " ".join(
            str(row) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
        )
    else:
        # On an empty table PostgreSQL's costs tie between every index that starts with
        # course_id (the stats indexes do too): give it a course's worth of readers, a few due,
        # and their statistics, as in production.
        connection.exec_driver_sql(
            "INSERT INTO subscribers (course_id, email, timezone, status, created_at, consent_at,"
            " consent_source, status_changed_at, next_lesson, next_send_at)"
            f" SELECT '{COURSE}', 'r' || i || '@example.com', 'Asia/Tokyo', 'active',"
            " '2026-03-01', '2026-03-01', 'test', '2026-03-01', 'welcome',"
            " CASE WHEN i < 5 THEN timestamp '2026-03-31' ELSE timestamp '2026-05-01' END"
            " FROM generate_series(1, 5000) AS i"
        )
        connection.exec_driver_sql("ANALYZE subscribers")
        plan = " ".join(str(row) for row in connection.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert "ix_subscribers_due" in plan, plan


def test_only_active_subscribers_are_ever_due_whatever_their_next_send_at(
    session: Session,
) -> None:
    """Defence in depth: rows that should have no next_send_at, given a stale one by hand, are
    never counted due and never claimed; only the active control row is."""
    active = add(session, "active@example.com")
    pending = add(session, "pending@example.com", confirmed=False)
    paused = add(session, "paused@example.com")
    unsubscribed = add(session, "unsubscribed@example.com")
    bounced = add(session, "bounced@example.com")
    complained = add(session, "complained@example.com")
    completed = add(session, "completed@example.com", at=T0 - timedelta(days=1))
    session.commit()
    [last] = claim(session, T0 - timedelta(days=1)).claims
    assert last.subscriber_id == completed.subscriber_id
    store.record_sent(session, [store.SentItem(last.delivery_id, "p", T0, None, None)], "run-1")
    store.pause(session, paused.subscriber_id, T0)
    store.unsubscribe(session, unsubscribed.subscriber_id, T0)
    store.mark_suppressed(session, "bounced@example.com", "bounced", T0)
    store.mark_suppressed(session, "complained@example.com", "complained", T0)
    session.commit()
    others = [pending, paused, unsubscribed, bounced, complained, completed]
    expected = ["pending", "paused", "unsubscribed", "bounced", "complained", "completed"]
    assert [view(session, added.subscriber_id).status for added in others] == expected

    stale = T0 - timedelta(days=3)
    session.execute(
        update(subscribers)
        .where(subscribers.c.id.in_([added.subscriber_id for added in others]))
        .values(next_lesson="second", next_send_at=stale)
    )
    session.commit()
    now = T0 + timedelta(days=1)
    assert store.count_due(session, COURSE, now) == 1
    assert store.due_by_lesson(session, COURSE, now) == {"welcome": 1}
    batch = claim(session, now, run_id="run-2")
    assert [c.subscriber_id for c in batch.claims] == [active.subscriber_id]
    assert batch.newly_in_doubt == 0
    counts = store.delivery_counts(session, COURSE)
    assert (counts["claimed"], counts["sent"], sum(counts.values())) == (1, 1, 2)
    for added in others:
        assert view(session, added.subscriber_id).next_send_at == stale
