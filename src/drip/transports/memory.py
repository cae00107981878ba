"""An in-memory transport for tests: records what it was given and answers as scripted."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from drip.errors import FatalTransportError
from drip.message import OutgoingEmail
from drip.transports.base import Outcome, SendResult, TransportBase

#: What a script step can be: an outcome, a full result (its delivery_id is replaced by the
#: email's), an exception to raise (a `FatalTransportError`), or a function of the email.
Answer = Outcome | SendResult | Callable[[OutgoingEmail], SendResult]
ScriptStep = Answer | FatalTransportError


class MemoryTransport(TransportBase):
    """Keeps every email in `attempts` and the accepted ones in `sent`; sends nothing anywhere.

    Answers, in order of precedence: `by_delivery_id[email.delivery_id]` (every time that id is
    sent), else the next step of the queue given as `script` / added with `add_script` (each
    step is used once), else `default`. A `FatalTransportError` step is raised with the results
    of the call so far attached, like the real transports do. Thread-safe, so concurrency tests
    can share one instance.
    """

    name = "memory"

    def __init__(
        self,
        script: Iterable[ScriptStep] = (),
        *,
        default: Outcome = Outcome.SENT,
        by_delivery_id: Mapping[str, ScriptStep] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._script: deque[ScriptStep] = deque(script)
        self.default = default
        self.by_delivery_id: dict[str, ScriptStep] = dict(by_delivery_id or {})
        self.attempts: list[OutgoingEmail] = []
        self.sent: list[OutgoingEmail] = []
        self.results: list[SendResult] = []
        self.calls = 0
        self.closed = False

    def add_script(self, *steps: ScriptStep) -> None:
        """Queue more answers after those already queued."""
        with self._lock:
            self._script.extend(steps)

    @property
    def sent_ids(self) -> list[str]:
        """Delivery ids of the accepted emails, in the order they were accepted."""
        with self._lock:
            return [email.delivery_id for email in self.sent]

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """Answer each email as scripted; see `Transport.send`."""
        with self._lock:
            self.calls += 1
            results: list[SendResult] = []
            for email in emails:
                self.attempts.append(email)
                step = self._next_step(email)
                if isinstance(step, FatalTransportError):
                    raise FatalTransportError(str(step), results)
                result = self._result(email, step)
                results.append(result)
                self.results.append(result)
                if result.outcome is Outcome.SENT:
                    self.sent.append(email)
            return results

    def _next_step(self, email: OutgoingEmail) -> ScriptStep:
        if email.delivery_id in self.by_delivery_id:
            return self.by_delivery_id[email.delivery_id]
        if self._script:
            return self._script.popleft()
        return self.default

    def _result(self, email: OutgoingEmail, step: Answer) -> SendResult:
        if isinstance(step, Outcome):
            provider_id = f"memory-{len(self.sent) + 1}" if step is Outcome.SENT else None
            return SendResult(email.delivery_id, step, provider_id=provider_id, detail="scripted")
        if isinstance(step, SendResult):
            return replace(step, delivery_id=email.delivery_id)
        return replace(step(email), delivery_id=email.delivery_id)

    def close(self) -> None:
        """Mark the transport closed (tests check that callers close what they open)."""
        self.closed = True
