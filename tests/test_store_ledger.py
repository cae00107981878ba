"""The store's ledger on SQLite and PostgreSQL: claims, marking sending, outcomes, in doubt."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tests.store_support import COURSE, LEASE, LESSONS, T0, add, claim, delivery, view

from drip import store
from drip.models import deliveries, subscribers
from drip.store import ledger


def test_claims_respect_due_time_order_and_limit(session: Session) -> None:
    ids = {}
    for minutes in (30, 10, 20, 0, 40):
        ids[minutes] = add(session, f"m{minutes}@example.com", at=T0 + timedelta(minutes=minutes))
    add(session, "later@example.com", at=T0 + timedelta(days=1))
    add(session, "pending@example.com", confirmed=False)
    paused = add(session, "paused@example.com", at=T0)
    store.pause(session, paused.subscriber_id, T0)
    session.commit()
    now = T0 + timedelta(minutes=35)
    assert store.count_due(session, COURSE, now) == 4
    assert store.due_by_lesson(session, COURSE, now) == {"welcome": 4}

    first = claim(session, now, limit=3)
    assert [c.subscriber_id for c in first.claims] == [ids[m].subscriber_id for m in (0, 10, 20)]
    assert first.newly_in_doubt == 0
    assert all(c.lesson == "welcome" and c.attempts == 1 for c in first.claims)
    assert first.claims[0].email == "m0@example.com" and first.claims[0].timezone == "Asia/Tokyo"
    second = claim(session, now, limit=3)
    assert [c.subscriber_id for c in second.claims] == [ids[30].subscriber_id]
    assert claim(session, now).claims == []
    assert store.count_due(session, COURSE, now) == 0

    row = delivery(session, first.claims[0].delivery_id)
    assert row["status"] == "claimed" and row["run_id"] == "run-1" and row["attempts"] == 1
    assert row["claimed_at"] == now and row["lease_until"] == now + LEASE
    assert view(session, ids[0].subscriber_id).next_send_at == now + LEASE
    assert store.delivery_counts(session, COURSE) == {
        "claimed": 4,
        "sending": 0,
        "sent": 0,
        "retry": 0,
        "failed": 0,
        "in_doubt": 0,
    }


def test_two_concurrent_claimers_never_share_a_subscriber(engine: Engine) -> None:
    with Session(engine) as session:
        for number in range(200):
            add(session, f"c{number}@example.com", at=T0 - timedelta(seconds=number))
        session.commit()
    barrier = threading.Barrier(2)
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def claimer(run_id: str) -> None:
        try:
            with Session(engine) as session:
                barrier.wait(timeout=10)
                batch = claim(session, T0, limit=150, run_id=run_id)
                results[run_id] = [c.subscriber_id for c in batch.claims]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"run-{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    one, two = results["run-1"], results["run-2"]
    assert not set(one) & set(two)
    assert len(one) + len(two) == 200 and len(set(one) | set(two)) == 200
    with Session(engine) as session:
        assert store.delivery_counts(session, COURSE)["claimed"] == 200


def test_a_claim_made_sending_is_in_doubt_after_a_crash_and_released_by_a_stop(
    session: Session,
) -> None:
    """`claim_due(sending=True)` (a bulk window, handed over right after the commit) makes the
    rows 'sending' at once, new and reclaimed alike: if its run dies they become in doubt after
    the lease and are never claimed again; if its run stops, they are released unsent."""
    crashed = add(session, "crashed@example.com")
    stopped = add(session, "stopped@example.com")
    session.commit()
    [first] = claim(session, T0, limit=1, run_id="dies").claims
    assert first.subscriber_id == crashed.subscriber_id
    store.release_claims(session, "dies", T0)  # its ledger row is claimed again below
    session.commit()

    def claim_sending(now: datetime, run_id: str) -> store.ClaimBatch:
        batch = store.claim_due(
            session, course_id=COURSE, now=now, limit=1, run_id=run_id, lease=LEASE, sending=True
        )
        session.commit()
        return batch

    [again] = claim_sending(T0, "dies").claims
    [fresh] = claim_sending(T0, "stops").claims
    assert (again.delivery_id, again.subscriber_id) == (first.delivery_id, crashed.subscriber_id)
    assert fresh.subscriber_id == stopped.subscriber_id
    for made in (again, fresh):
        assert delivery(session, made.delivery_id)["status"] == "sending"
    assert store.release_claims(session, "stops", T0) == 1
    session.commit()
    assert delivery(session, fresh.delivery_id)["status"] == "retry"
    after = claim(session, T0 + LEASE, run_id="next")
    assert [c.subscriber_id for c in after.claims] == [stopped.subscriber_id]
    assert after.newly_in_doubt == 1
    assert delivery(session, again.delivery_id)["status"] == "in_doubt"


def test_a_crashed_claim_becomes_in_doubt_and_is_never_reclaimed(session: Session) -> None:
    added = add(session, "a@example.com")
    session.commit()
    [crashed] = claim(session, T0, run_id="crashed").claims
    assert store.mark_sending(session, [crashed.delivery_id], T0) == [crashed.delivery_id]
    # Within the lease nothing happens, even if the subscriber is made due again.
    session.execute(update(subscribers).values(next_send_at=T0))
    session.commit()
    during = claim(session, T0 + timedelta(minutes=5), run_id="other")
    assert (during.claims, during.newly_in_doubt) == ([], 0)
    assert view(session, added.subscriber_id).next_send_at == T0 + LEASE

    after = claim(session, T0 + LEASE, run_id="next")
    assert (after.claims, after.newly_in_doubt) == ([], 1)
    row = delivery(session, crashed.delivery_id)
    assert row["status"] == "in_doubt" and "crashed" in str(row["detail"])
    assert view(session, added.subscriber_id).next_send_at is None
    assert claim(session, T0 + timedelta(days=5)).claims == []
    [doubt] = store.list_in_doubt(session, COURSE)
    assert (doubt.delivery_id, doubt.email, doubt.lesson, doubt.run_id) == (
        crashed.delivery_id,
        "a@example.com",
        "welcome",
        "crashed",
    )
    # Made due again by hand (e.g. a resume): still not sent twice.
    session.execute(update(subscribers).values(next_send_at=T0))
    session.commit()
    assert claim(session, T0 + timedelta(days=6)) == store.ClaimBatch([], 0)
    assert view(session, added.subscriber_id).next_send_at is None


def test_retry_rows_are_reclaimed_when_due_again(session: Session) -> None:
    added = add(session, "a@example.com")
    session.commit()
    [first] = claim(session, T0).claims
    retry_at = T0 + timedelta(minutes=2)
    assert store.record_retry(session, [(first.delivery_id, retry_at, "503 from provider")]) == 1
    session.commit()
    assert delivery(session, first.delivery_id)["status"] == "retry"
    assert view(session, added.subscriber_id).next_send_at == retry_at
    assert claim(session, T0 + timedelta(minutes=1)).claims == []
    [again] = claim(session, retry_at, run_id="run-2").claims
    assert (again.delivery_id, again.attempts) == (first.delivery_id, 2)
    row = delivery(session, first.delivery_id)
    assert (row["status"], row["run_id"], row["attempts"]) == ("claimed", "run-2", 2)


def test_record_sent_moves_the_subscriber_on_and_completes_the_course(session: Session) -> None:
    added = add(session, "a@example.com")
    session.commit()
    now = T0
    for index, lesson in enumerate(LESSONS):
        [claimed] = claim(session, now, run_id=f"run-{index}").claims
        assert claimed.lesson == lesson
        following = LESSONS[index + 1] if index + 1 < len(LESSONS) else None
        next_at = now + timedelta(days=1) if following else None
        item = store.SentItem(claimed.delivery_id, f"pid-{index}", now, following, next_at)
        assert store.record_sent(session, [item], f"run-{index}") == 1
        session.commit()
        row = delivery(session, claimed.delivery_id)
        assert (row["status"], row["provider_id"], row["sent_at"]) == ("sent", f"pid-{index}", now)
        seen = view(session, added.subscriber_id)
        assert (seen.next_lesson, seen.next_send_at, seen.last_sent_at) == (following, next_at, now)
        now += timedelta(days=1)
    assert view(session, added.subscriber_id).status == "completed"
    assert claim(session, now + timedelta(days=30)).claims == []
    assert store.delivery_counts(session, COURSE)["sent"] == 3


def test_record_sent_ignores_another_runs_claim(session: Session) -> None:
    add(session, "a@example.com")
    session.commit()
    [claimed] = claim(session, T0, run_id="mine").claims
    item = store.SentItem(claimed.delivery_id, "pid", T0, "second", T0 + timedelta(days=1))
    assert store.record_sent(session, [item], "someone-else") == 0
    session.commit()
    assert delivery(session, claimed.delivery_id)["status"] == "claimed"


def test_failed_and_in_doubt_hold_the_subscriber(session: Session) -> None:
    failed = add(session, "f@example.com")
    doubt = add(session, "d@example.com")
    session.commit()
    claims = {c.subscriber_id: c for c in claim(session, T0).claims}
    now = T0 + timedelta(seconds=5)
    assert (
        store.record_failed(
            session, [(claims[failed.subscriber_id].delivery_id, "550 no such user")], now=now
        )
        == 1
    )
    assert (
        store.record_in_doubt(
            session, [(claims[doubt.subscriber_id].delivery_id, "timeout after send")], now=now
        )
        == 1
    )
    session.commit()
    failed_row = delivery(session, claims[failed.subscriber_id].delivery_id)
    assert (failed_row["status"], failed_row["detail"], failed_row["updated_at"]) == (
        "failed",
        "550 no such user",
        now,
    )
    doubt_row = delivery(session, claims[doubt.subscriber_id].delivery_id)
    assert (doubt_row["status"], doubt_row["detail"], doubt_row["updated_at"]) == (
        "in_doubt",
        "timeout after send",
        now,
    )
    for sid in (failed.subscriber_id, doubt.subscriber_id):
        assert view(session, sid).next_send_at is None
        assert view(session, sid).status == "active"
    assert claim(session, T0 + timedelta(days=10)).claims == []
    counts = store.delivery_counts(session, COURSE)
    assert (counts["failed"], counts["in_doubt"], counts["sending"]) == (1, 1, 0)
    # record_in_doubt only applies to a claim in flight.
    assert store.record_in_doubt(session, [(failed_row["id"], "late")]) == 0  # type: ignore[list-item]


def test_release_claims_gives_back_only_this_runs_unsent_claims(session: Session) -> None:
    for number in range(3):
        add(session, f"r{number}@example.com")
    add(session, "other@example.com", at=T0 + timedelta(minutes=1))
    session.commit()
    mine = claim(session, T0, run_id="mine").claims
    [theirs] = claim(session, T0 + timedelta(minutes=1), run_id="theirs").claims
    sent = store.SentItem(mine[0].delivery_id, "pid", T0, "second", T0 + timedelta(days=1))
    store.record_sent(session, [sent], "mine")
    later = T0 + timedelta(minutes=3)
    assert store.release_claims(session, "mine", later) == 2
    session.commit()
    assert [delivery(session, c.delivery_id)["status"] for c in mine] == ["sent", "retry", "retry"]
    assert delivery(session, theirs.delivery_id)["status"] == "claimed"
    assert [view(session, c.subscriber_id).next_send_at for c in mine[1:]] == [later, later]
    again = claim(session, later, run_id="next").claims
    assert sorted(c.delivery_id for c in again) == sorted(c.delivery_id for c in mine[1:])


def test_an_unsubscribe_between_claim_and_record_wins(session: Session) -> None:
    added = add(session, "u@example.com")
    session.commit()
    [claimed] = claim(session, T0).claims
    store.unsubscribe(session, added.subscriber_id, T0 + timedelta(seconds=1))
    session.commit()
    now = T0 + timedelta(seconds=2)
    item = store.SentItem(claimed.delivery_id, "pid", now, "second", T0 + timedelta(days=1))
    assert store.record_sent(session, [item], "run-1") == 1
    session.commit()
    seen = view(session, added.subscriber_id)
    assert (seen.status, seen.next_send_at, seen.last_sent_at) == ("unsubscribed", None, now)
    assert delivery(session, claimed.delivery_id)["status"] == "sent"
    assert claim(session, T0 + timedelta(days=5)).claims == []


def test_a_pause_during_the_send_keeps_progress_so_resume_sends_the_next_lesson(
    session: Session,
) -> None:
    added = add(session, "p@example.com")
    session.commit()
    [claimed] = claim(session, T0).claims
    store.pause(session, added.subscriber_id, T0)
    item = store.SentItem(claimed.delivery_id, "pid", T0, "second", T0 + timedelta(days=1))
    store.record_sent(session, [item], "run-1")
    session.commit()
    paused = view(session, added.subscriber_id)
    assert (paused.status, paused.next_send_at, paused.next_lesson) == ("paused", None, "second")
    later = T0 + timedelta(days=3)
    store.resume(session, added.subscriber_id, now=later, next_send_at=later)
    session.commit()
    [next_claim] = claim(session, later, run_id="run-2").claims
    assert next_claim.lesson == "second"


def test_resume_after_the_last_lesson_completes(session: Session) -> None:
    added = add(session, "p@example.com")
    session.commit()
    [claimed] = claim(session, T0).claims
    store.pause(session, added.subscriber_id, T0)
    store.record_sent(session, [store.SentItem(claimed.delivery_id, None, T0, None, None)], "run-1")
    store.resume(session, added.subscriber_id, now=T0, next_send_at=T0)
    session.commit()
    seen = view(session, added.subscriber_id)
    assert (seen.status, seen.next_send_at) == ("completed", None)


def test_a_sent_lesson_that_becomes_due_again_is_held_not_resent(session: Session) -> None:
    added = add(session, "s@example.com")
    session.commit()
    [claimed] = claim(session, T0).claims
    store.record_sent(
        session, [store.SentItem(claimed.delivery_id, "p", T0, "second", None)], "run-1"
    )
    # Corrupt the progress on purpose: the subscriber points at the lesson already sent.
    session.execute(update(subscribers).values(next_lesson="welcome", next_send_at=T0))
    session.commit()
    assert claim(session, T0 + timedelta(minutes=1), run_id="run-2") == store.ClaimBatch([], 0)
    assert view(session, added.subscriber_id).next_send_at is None
    assert store.delivery_counts(session, COURSE)["sent"] == 1


def test_resolve_in_doubt(session: Session) -> None:
    yes = add(session, "yes@example.com")
    no = add(session, "no@example.com")
    session.commit()
    claims = {c.subscriber_id: c for c in claim(session, T0).claims}
    store.record_in_doubt(
        session, [(c.delivery_id, "connection reset after send") for c in claims.values()]
    )
    session.commit()
    later = T0 + timedelta(days=1)
    store.resolve_in_doubt(
        session,
        claims[yes.subscriber_id].delivery_id,
        sent=True,
        now=later,
        next_lesson="second",
        next_send_at=later + timedelta(days=1),
    )
    store.resolve_in_doubt(
        session,
        claims[no.subscriber_id].delivery_id,
        sent=False,
        now=later,
        next_lesson=None,
        next_send_at=later,
    )
    session.commit()
    assert delivery(session, claims[yes.subscriber_id].delivery_id)["status"] == "sent"
    seen = view(session, yes.subscriber_id)
    assert (seen.next_lesson, seen.next_send_at) == ("second", later + timedelta(days=1))
    assert delivery(session, claims[no.subscriber_id].delivery_id)["status"] == "retry"
    assert store.list_in_doubt(session, COURSE) == []
    [again] = claim(session, later, run_id="run-2").claims
    assert (again.subscriber_id, again.lesson, again.attempts) == (no.subscriber_id, "welcome", 2)
    with pytest.raises(store.StateError, match="not 'in_doubt'"):
        store.resolve_in_doubt(
            session, again.delivery_id, sent=True, now=later, next_lesson=None, next_send_at=None
        )
    with pytest.raises(store.NotFoundError):
        store.resolve_in_doubt(
            session, 999_999, sent=True, now=later, next_lesson=None, next_send_at=None
        )


def test_a_late_provider_acceptance_settles_an_in_doubt_delivery(session: Session) -> None:
    added = add(session, "late@example.com")
    session.commit()
    [claimed] = claim(session, T0, run_id="slow").claims
    store.mark_sending(session, [claimed.delivery_id], T0)
    assert claim(session, T0 + LEASE, run_id="next").newly_in_doubt == 1
    item = store.SentItem(claimed.delivery_id, "pid", T0 + LEASE, "second", T0 + timedelta(days=1))
    assert store.record_sent(session, [item], "slow") == 1
    session.commit()
    assert delivery(session, claimed.delivery_id)["status"] == "sent"
    assert view(session, added.subscriber_id).next_lesson == "second"


def test_claims_and_records_in_bulk(session: Session) -> None:
    for number in range(2_500):
        add(session, f"bulk{number}@example.com", at=T0 - timedelta(seconds=number % 7))
    session.commit()
    batch = claim(session, T0, limit=3_000)
    assert len(batch.claims) == 2_500
    items = [
        store.SentItem(c.delivery_id, f"p{c.delivery_id}", T0, "second", T0 + timedelta(days=1))
        for c in batch.claims
    ]
    assert store.record_sent(session, items, "run-1") == 2_500
    session.commit()
    assert store.delivery_counts(session, COURSE)["sent"] == 2_500
    assert store.count_due(session, COURSE, T0 + timedelta(days=1)) == 2_500


def test_recorded_instants_are_stored_as_the_orm_stores_them(session: Session) -> None:
    # record_sent/retry bind plain tuples: their datetimes must be in the same stored form as
    # everything else (SQLite compares the text), so an equality on a typed value finds them.
    for number in range(3):
        add(session, f"form{number}@example.com")
    session.commit()
    first, second, third = claim(session, T0).claims
    store.mark_sending(session, [first.delivery_id, second.delivery_id], T0)
    later = T0 + timedelta(days=1)
    sent = store.SentItem(first.delivery_id, "pid", T0, "second", later)
    assert store.record_sent(session, [sent], "run-1") == 1
    retried_at = T0 + timedelta(minutes=1)
    assert store.record_retry(session, [(second.delivery_id, later, "busy")], now=retried_at) == 1
    session.commit()
    conn = session.connection()
    on_time = conn.execute(
        select(subscribers.c.id).where(subscribers.c.next_send_at == later)
    ).scalars()
    assert sorted(on_time) == sorted([first.subscriber_id, second.subscriber_id])
    stamped = conn.execute(
        select(deliveries.c.id).where(deliveries.c.sent_at == T0, deliveries.c.updated_at == T0)
    ).scalars()
    assert list(stamped) == [first.delivery_id]
    retried = delivery(session, second.delivery_id)
    assert (retried["status"], retried["detail"], retried["updated_at"]) == (
        "retry",
        "busy",
        retried_at,
    )
    assert view(session, third.subscriber_id).next_send_at == T0 + LEASE


def test_a_claim_never_handed_to_a_transport_is_claimed_again_after_its_lease(
    session: Session,
) -> None:
    added = add(session, "a@example.com")
    session.commit()
    [dead] = claim(session, T0, run_id="dead").claims
    session.commit()
    assert claim(session, T0 + timedelta(minutes=1), run_id="other").claims == []
    after = claim(session, T0 + LEASE, run_id="next")
    assert after.newly_in_doubt == 0
    [again] = after.claims
    assert (again.delivery_id, again.subscriber_id) == (dead.delivery_id, added.subscriber_id)
    assert delivery(session, dead.delivery_id)["run_id"] == "next"


def test_mark_sending_only_moves_claimed_rows(session: Session) -> None:
    add(session, "a@example.com")
    session.commit()
    [claimed] = claim(session, T0).claims
    assert store.mark_sending(session, [claimed.delivery_id], T0) == [claimed.delivery_id]
    assert store.mark_sending(session, [claimed.delivery_id], T0) == []
    assert delivery(session, claimed.delivery_id)["status"] == "sending"


def test_mark_sending_skips_subscribers_who_unsubscribed_since_the_claim(session: Session) -> None:
    stays = add(session, "stays@example.com")
    leaves = add(session, "leaves@example.com", at=T0 + timedelta(seconds=1))
    session.commit()
    claims = {c.subscriber_id: c for c in claim(session, T0 + timedelta(minutes=1)).claims}
    session.commit()
    store.unsubscribe(session, leaves.subscriber_id, T0 + timedelta(minutes=2))
    session.commit()
    ids = [claims[stays.subscriber_id].delivery_id, claims[leaves.subscriber_id].delivery_id]
    assert store.mark_sending(session, ids, T0 + timedelta(minutes=3)) == [ids[0]]
    assert delivery(session, ids[1])["status"] == "retry"
    assert claim(session, T0 + timedelta(days=3)).claims == []


def test_deferred_subscribers_are_rescheduled_not_claimed(session: Session) -> None:
    quiet = add(session, "quiet@example.com")
    fine = add(session, "fine@example.com", at=T0 + timedelta(seconds=1))
    session.commit()
    later = T0 + timedelta(hours=8)

    def defer(timezone: str, lesson: str) -> datetime | None:
        return later if timezone == "Asia/Tokyo" and lesson == "welcome" and seen.pop() else None

    seen = [False, True]  # the first subscriber asked is deferred, the second is not
    batch = store.claim_due(
        session,
        course_id=COURSE,
        now=T0 + timedelta(minutes=1),
        limit=10,
        run_id="r",
        lease=LEASE,
        defer=defer,
    )
    assert [c.subscriber_id for c in batch.claims] == [fine.subscriber_id]
    assert view(session, quiet.subscriber_id).next_send_at == later
    assert store.delivery_counts(session, COURSE)["claimed"] == 1


@pytest.mark.parametrize("shared_provider_id", [True, False])
def test_record_sent_set_based_when_a_batch_shares_its_values(
    session: Session, shared_provider_id: bool
) -> None:
    """40 subscribers, one bulk answer (shared provider id) or one per subscriber, two next-send
    times, one paused: the grouped and the per-row UPDATEs give each row exactly its own values."""
    added = [add(session, f"r{index}@example.com") for index in range(40)]
    session.commit()
    claims = claim(session, T0).claims
    assert len(claims) == 40
    paused = added[7].subscriber_id
    assert store.pause(session, paused, T0)
    session.commit()
    early, late = T0 + timedelta(days=1), T0 + timedelta(days=2)
    items = [
        store.SentItem(
            c.delivery_id,
            "bulk-pid" if shared_provider_id else f"pid-{c.delivery_id}",
            T0,
            "second",
            (early if c.subscriber_id % 2 else late)
            + (timedelta(0) if shared_provider_id else timedelta(seconds=c.subscriber_id)),
        )
        for c in claims
    ]
    assert store.record_sent(session, items, "run-1") == 40
    session.commit()
    for item, claimed in zip(items, claims, strict=True):
        row = delivery(session, claimed.delivery_id)
        assert (row["status"], row["provider_id"], row["sent_at"]) == ("sent", item.provider_id, T0)
        seen = view(session, claimed.subscriber_id)
        if claimed.subscriber_id == paused:
            # Paused since the claim: progress recorded, not rescheduled.
            assert (seen.status, seen.next_send_at) == ("paused", None)
        else:
            assert (seen.status, seen.next_lesson, seen.next_send_at, seen.last_sent_at) == (
                "active",
                "second",
                item.next_send_at,
                T0,
            )


def test_a_run_never_takes_over_another_runs_claim_within_its_lease(session: Session) -> None:
    """A pause and resume make the subscriber due again while run 1 still holds its claim: run
    2 must leave the claim alone (mutation survivor: claimed rows reclaimable inside the lease)."""
    added = add(session, "held@example.com")
    session.commit()
    [first] = claim(session, T0, run_id="run-1").claims
    one_minute = T0 + timedelta(minutes=1)
    assert store.pause(session, added.subscriber_id, one_minute)
    assert store.resume(session, added.subscriber_id, now=one_minute, next_send_at=one_minute)
    session.commit()
    assert store.count_due(session, COURSE, T0 + timedelta(minutes=2)) == 1

    assert claim(session, T0 + timedelta(minutes=2), run_id="run-2") == store.ClaimBatch([], 0)
    row = delivery(session, first.delivery_id)
    assert (row["status"], row["run_id"], row["attempts"]) == ("claimed", "run-1", 1)
    assert (row["claimed_at"], row["lease_until"]) == (T0, T0 + LEASE)
    # Due again when run 1's lease ends, not before.
    assert view(session, added.subscriber_id).next_send_at == T0 + LEASE


def test_the_ledger_holds_one_row_per_subscriber_and_lesson(session: Session) -> None:
    """The unique (subscriber_id, lesson) constraint that makes a lesson go out at most once."""
    add(session, "once@example.com")
    session.commit()
    [claimed] = claim(session, T0).claims
    again = {
        "subscriber_id": claimed.subscriber_id,
        "course_id": COURSE,
        "lesson": claimed.lesson,
        "status": "claimed",
        "run_id": "run-2",
        "attempts": 1,
        "claimed_at": T0,
        "lease_until": T0 + LEASE,
        "updated_at": T0,
    }
    with pytest.raises(IntegrityError):
        session.execute(insert(deliveries).values(again))
    session.rollback()
    assert store.delivery_counts(session, COURSE)["claimed"] == 1


def test_hostile_provider_text_is_recorded_not_refused(session: Session) -> None:
    """A 550 reply or a 400 body with NUL and other controls made PostgreSQL refuse the record,
    turning a refused message into one in doubt; an absurdly long one is cut, not refused."""
    first = add(session, "nul@example.com")
    second = add(session, "sent@example.com")
    session.commit()
    claims = {c.subscriber_id: c for c in claim(session, T0).claims}
    hostile = "550 5.1.1 \x00no\x1b[31m such\x07 user\r\n" + "x" * 10_000
    now = T0 + timedelta(seconds=5)
    assert (
        store.record_failed(session, [(claims[first.subscriber_id].delivery_id, hostile)], now=now)
        == 1
    )
    item = store.SentItem(
        claims[second.subscriber_id].delivery_id, "id\x00\x01-1", now, "second", now
    )
    assert store.record_sent(session, [item], "run-1") == 1
    session.commit()
    detail = delivery(session, claims[first.subscriber_id].delivery_id)["detail"]
    assert detail.startswith("550 5.1.1 no[31m such user\n") and len(detail) == 2_000
    assert delivery(session, claims[second.subscriber_id].delivery_id)["provider_id"] == "id-1"


@pytest.mark.postgres
def test_a_claim_never_waits_on_rows_another_run_is_claiming(postgres_database: str) -> None:
    """Run 1 holds its claim transaction open; run 2 claims meanwhile. With FOR UPDATE SKIP
    LOCKED run 2 takes the other rows at once; without it, it would wait on run 1's locks (here
    it would hit the 2 s lock_timeout and fail)."""
    import time

    from sqlalchemy import event, text
    from tests.conftest import _truncate

    from drip.db import make_engine

    _truncate(postgres_database)
    engine = make_engine(postgres_database)

    @event.listens_for(engine, "connect")
    def _no_waiting(dbapi_connection: object, record: object) -> None:
        with dbapi_connection.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute("SET lock_timeout = '2s'")

    try:
        with Session(engine) as session:
            for number in range(20):
                add(session, f"w{number}@example.com", at=T0 - timedelta(seconds=number))
            session.commit()
        with Session(engine) as first, Session(engine) as second:
            one = store.claim_due(
                first, course_id=COURSE, now=T0, limit=10, run_id="run-1", lease=LEASE
            )  # not committed: run 1's rows stay locked
            started = time.monotonic()
            two = store.claim_due(
                second, course_id=COURSE, now=T0, limit=20, run_id="run-2", lease=LEASE
            )
            waited = time.monotonic() - started
            second.commit()
            first.commit()
        assert waited < 1.0, f"run 2 waited {waited:.1f} s on run 1's rows"
        ids_one = {c.subscriber_id for c in one.claims}
        ids_two = {c.subscriber_id for c in two.claims}
        assert len(ids_one) == 10 and len(ids_two) == 10 and not ids_one & ids_two
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one() == 20
    finally:
        engine.dispose()


def test_record_sent_records_only_this_runs_claims_and_logs_the_rest(
    session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    assert store.record_sent(session, [], "run-1") == 0
    add(session, "a@example.com")
    add(session, "b@example.com", at=T0 + timedelta(seconds=1))
    session.commit()
    a, b = claim(session, T0 + timedelta(minutes=1)).claims
    later = T0 + timedelta(days=1)
    caplog.set_level(logging.WARNING, logger=ledger.__name__)
    unknown = store.SentItem(999_999, "p0", T0, "second", later)
    mine = store.SentItem(a.delivery_id, "p1", T0, "second", later)
    # An unknown delivery first: the one after it is still recorded.
    assert store.record_sent(session, [unknown, mine], "run-1") == 1
    others = store.SentItem(b.delivery_id, "p2", T0, "second", later)
    assert store.record_sent(session, [others], "run-2") == 0
    assert [r.getMessage() for r in caplog.records] == [
        "delivery 999999 reported sent but is unknown; not recorded",
        f"delivery {b.delivery_id} reported sent but is 'claimed' (run-1); not recorded",
    ]


def test_a_lesson_found_sent_after_the_reader_moved_on_only_stamps_the_send(
    session: Session,
) -> None:
    added = add(session, "a@example.com")
    session.commit()
    [first] = claim(session, T0).claims
    assert store.record_in_doubt(session, [(first.delivery_id, "timeout")], now=T0) == 1
    conn = session.connection()
    conn.execute(
        update(subscribers)
        .where(subscribers.c.id == added.subscriber_id)
        .values(next_lesson="second")
    )
    sent_at = T0 + timedelta(hours=1)
    item = store.SentItem(first.delivery_id, "p1", sent_at, "second", sent_at)
    assert store.record_sent(session, [item], "run-9") == 1
    session.commit()
    seen = view(session, added.subscriber_id)
    assert (seen.status, seen.next_lesson, seen.last_sent_at) == ("active", "second", sent_at)


def test_an_unsubscribe_between_the_look_up_and_the_update_wins(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """record_sent reads the readers' state, then updates only rows still 'active' (PostgreSQL
    locks the rows; the guard holds whatever the isolation): here the unsubscribe lands just
    after the look-up."""
    going = add(session, "going@example.com")
    ending = add(session, "ending@example.com", at=T0 + timedelta(seconds=1))
    session.commit()
    g, e = claim(session, T0 + timedelta(minutes=1)).claims
    looked_up = ledger._settling

    def then_unsubscribed(conn: Any, delivery_ids: Any) -> Any:
        state = looked_up(conn, delivery_ids)
        conn.execute(update(subscribers).values(status="unsubscribed"))
        return state

    monkeypatch.setattr(ledger, "_settling", then_unsubscribed)
    later = T0 + timedelta(days=1)
    items = [
        store.SentItem(g.delivery_id, "p1", T0, "second", later),
        store.SentItem(e.delivery_id, "p2", T0, None, None),  # the last lesson: would complete
    ]
    assert store.record_sent(session, items, "run-1") == 2
    session.commit()
    for sid in (going.subscriber_id, ending.subscriber_id):
        seen = view(session, sid)
        assert (seen.status, seen.next_lesson) == ("unsubscribed", "welcome")


def test_a_claim_of_nothing_and_ties_in_due_time(session: Session) -> None:
    """limit 0 claims nothing; readers due at the same moment are claimed in id order; a claim
    carries what the send needs (address, zone, lesson, attempts)."""
    assert claim(session, T0, limit=0) == store.ClaimBatch([], 0)
    first = add(session, "first@example.com")
    add(session, "second@example.com")
    session.commit()
    sent_at = T0 - timedelta(days=2)
    session.connection().execute(
        update(subscribers)
        .where(subscribers.c.id == first.subscriber_id)
        .values(last_sent_at=sent_at)
    )
    session.commit()
    batch = claim(session, T0, limit=1)
    assert batch == store.ClaimBatch(batch.claims, 0, 0)
    [only] = batch.claims
    assert only.subscriber_id == first.subscriber_id
    assert (only.email, only.timezone, only.lesson, only.attempts) == (
        "first@example.com",
        "Asia/Tokyo",
        "welcome",
        1,
    )


def test_a_claim_refills_past_rows_it_cannot_take_and_counts_every_one(session: Session) -> None:
    """The first rounds of a claim meet rows it cannot take (a dead run's 'sending' rows, rows
    `defer` moves, a lesson already sent): it picks again until `limit` claims or nothing is
    due, never claims more than `limit`, and counts every in-doubt and rescheduled row."""
    early = [add(session, f"d{i}@example.com", at=T0 + timedelta(seconds=i)) for i in range(3)]
    session.commit()
    dead = claim(session, T0 + timedelta(minutes=1), limit=3, run_id="dead")
    store.mark_sending(session, [c.delivery_id for c in dead.claims], T0)
    session.commit()  # the run dies here: 3 rows 'sending', their lease runs out
    later = T0 + LEASE + timedelta(minutes=5)
    deferred = [
        add(session, f"q{i}@example.com", at=later - timedelta(minutes=4, seconds=-i))
        for i in range(2)
    ]
    fine = [
        add(session, f"ok{i}@example.com", at=later - timedelta(minutes=2, seconds=-i))
        for i in range(4)
    ]
    session.commit()
    asked: list[str] = []
    deferred_ids = {added.subscriber_id for added in deferred}

    def defer(timezone: str, lesson: str) -> datetime | None:
        asked.append(lesson)
        # The first two claimable rows (the deferred ones) may not go out now.
        return later + timedelta(hours=1) if len(asked) <= 2 else None

    batch = store.claim_due(
        session, course_id=COURSE, now=later, limit=2, run_id="run-2", lease=LEASE, defer=defer
    )
    session.commit()
    # Picks: 2 dead rows; a dead row and a deferred one; a deferred one and a claim; one more
    # claim. Never more than asked for, though it had to pick 4 times.
    assert len(batch.claims) == 2
    assert {c.subscriber_id for c in batch.claims} <= {added.subscriber_id for added in fine}
    assert batch.newly_in_doubt == 3 and batch.rescheduled == 2
    for sid in deferred_ids:
        assert view(session, sid).next_send_at == later + timedelta(hours=1)
    assert {view(session, added.subscriber_id).is_held for added in early} == {True}


def test_readers_due_at_the_same_moment_are_claimed_lowest_id_first(session: Session) -> None:
    """The id tie-break is explicit: rows rewritten in reverse order (so that PostgreSQL's heap
    and index hold them newest-first) are still claimed in id order, a batch at a time."""
    added = [add(session, f"tie{i:02d}@example.com", at=T0 - LEASE) for i in range(40)]
    session.commit()
    for item in reversed(added):  # an indexed column changes: new index entries, newest last
        session.connection().execute(
            update(subscribers)
            .where(subscribers.c.id == item.subscriber_id)
            .values(next_send_at=T0)
        )
        session.commit()
    ids = sorted(item.subscriber_id for item in added)
    first = claim(session, T0, limit=10)
    second = claim(session, T0, limit=10, run_id="run-2")
    assert [c.subscriber_id for c in first.claims] == ids[:10]
    assert [c.subscriber_id for c in second.claims] == ids[10:20]


def test_a_reader_due_again_for_a_sent_lesson_with_nothing_left_completes_at_the_claim(
    session: Session,
) -> None:
    """A course reordered under a reader can leave them due for a lesson they already had and
    none they have not: the claim completes them then and there, stamped with its `now`."""
    added = add(session, "done@example.com")
    session.commit()
    [claimed] = claim(session, T0).claims
    store.record_sent(
        session, [store.SentItem(claimed.delivery_id, "p", T0, "second", None)], "run-1"
    )
    session.execute(update(subscribers).values(next_lesson="welcome", next_send_at=T0))
    session.commit()
    later = T0 + timedelta(hours=1)
    asked: list[tuple[str, datetime | None, frozenset[str]]] = []

    def move_on(
        timezone: str,
        lesson: str,
        last_sent_at: datetime | None,
        sent: frozenset[str],
        send_time: str | None,
    ) -> tuple[str | None, datetime | None]:
        asked.append((lesson, last_sent_at, sent))
        return (None, None)  # every lesson of the (reordered) course is among `sent`

    batch = store.claim_due(
        session,
        course_id=COURSE,
        now=later,
        limit=10,
        run_id="run-2",
        lease=LEASE,
        move_on=move_on,
    )
    session.commit()
    assert batch == store.ClaimBatch([], 0)
    assert asked == [("welcome", T0, frozenset({"welcome"}))]  # last sent: the first send
    done = view(session, added.subscriber_id)
    assert done.status is store.SubscriberStatus.COMPLETED
    assert done.status_changed_at == later
    assert (done.next_lesson, done.next_send_at) == (None, None)
