"""The memory transport used by the other tests: scripted answers and what it recorded."""

from __future__ import annotations

from tests.transport_support import make_email

from drip.message import OutgoingEmail
from drip.transports import Outcome, SendResult
from drip.transports.memory import MemoryTransport


def test_memory_script_precedence_and_records() -> None:
    def slow(email: OutgoingEmail) -> SendResult:
        return SendResult("ignored", Outcome.RETRY, retry_after=60)

    memory = MemoryTransport(
        [Outcome.FAILED, slow], by_delivery_id={"d9": Outcome.IN_DOUBT}, default=Outcome.SENT
    )
    results = memory.send([make_email(9), make_email(1), make_email(2), make_email(3)])
    assert [(r.delivery_id, r.outcome) for r in results] == [
        ("d9", Outcome.IN_DOUBT),
        ("d1", Outcome.FAILED),
        ("d2", Outcome.RETRY),
        ("d3", Outcome.SENT),
    ]
    assert results[2].retry_after == 60
    assert memory.sent_ids == ["d3"] and len(memory.attempts) == 4 and memory.calls == 1
    with memory:
        pass
    assert memory.closed
