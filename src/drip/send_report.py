"""What a `drip send` run did: the report the CLI prints (words or --json).

Kept apart from `drip.delivery` so that a run with nothing to do can print it without
importing the send engine (`drip.idle`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class SendReport:
    """What a `drip send` run did. `stopped` is set when the run had to stop early."""

    now: datetime
    dry_run: bool = False
    due: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    in_doubt: int = 0
    skipped: int = 0
    rescheduled: int = 0
    """Due, but moved to a later moment (a late run inside quiet hours or on a day off)."""
    per_lesson: dict[str, Counter[str]] = field(default_factory=dict)
    stopped: str | None = None
    note: str | None = None
    first_failure: str | None = None
    """The detail of the first temporary failure: shown when nothing at all was accepted."""
    confirmations: int = 0
    """Confirmation (double opt-in) emails the signup form had queued, sent by this run."""

    @property
    def warning(self) -> str | None:
        """Set when emails were handed over and not one was accepted (the transport is likely
        misconfigured or unreachable): the CLI prints it on stderr."""
        if self.sent or not (self.retried or self.failed):
            return None
        return (
            f"no email was accepted: {self.retried + self.failed} handed over, every one refused"
            f" or not delivered (first: {self.first_failure or 'no detail'}); check the transport"
            " settings and that the provider or relay is reachable"
        )

    def count(self, lesson: str, outcome: str, n: int = 1) -> None:
        """`n` more deliveries of `lesson` had `outcome` (sent, retried, failed, ...)."""
        self.per_lesson.setdefault(lesson, Counter())[outcome] += n
        setattr(self, outcome, getattr(self, outcome) + n)

    def summary(self) -> str:
        """The report in words, as `drip send` prints it (a few lines)."""
        if self.dry_run:
            lines = [f"dry run at {self.now.isoformat()}: {self.due} due"]
            lines += [
                f"  {slug}: {counts['due']}" for slug, counts in sorted(self.per_lesson.items())
            ]
            return "\n".join(lines)
        lines = [
            f"sent {self.sent}, retried {self.retried}, failed {self.failed},"
            f" in doubt {self.in_doubt}, skipped {self.skipped}, due before the run {self.due}"
        ]
        if self.rescheduled:
            lines[0] += (
                f"; rescheduled {self.rescheduled} (quiet hours or a day off where they live)"
            )
        for slug, counts in sorted(self.per_lesson.items()):
            parts = ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
            lines.append(f"  {slug}: {parts}")
        if self.confirmations:
            lines.append(f"confirmation emails sent: {self.confirmations}")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The report as `drip send --json` prints it."""
        return {
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "due": self.due,
            "sent": self.sent,
            "retried": self.retried,
            "failed": self.failed,
            "in_doubt": self.in_doubt,
            "skipped": self.skipped,
            "rescheduled": self.rescheduled,
            "per_lesson": {slug: dict(counts) for slug, counts in sorted(self.per_lesson.items())},
            "stopped": self.stopped,
            "note": self.note,
            "warning": self.warning,
            "confirmations": self.confirmations,
        }
