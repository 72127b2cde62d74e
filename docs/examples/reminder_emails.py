"""Durable reminders: an idempotent handler deduping by fence, and recurring work that
re-arms itself from the handler."""

from __future__ import annotations

import datetime as dt

from periodic.reminders import Reminder, Reminders


class Mailer:
    """Sends e-mails, and remembers the fence of each reminder it acted on: a reminder
    delivered again (a process died after sending, before the store heard) is skipped."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []
        # In a real application: a table, written in the same transaction as the effect.
        self.done_fences: dict[str, int] = {}

    async def on_reminder(self, r: Reminder) -> None:
        if self.done_fences.get(r.key, 0) >= r.fence:
            return  # this version (or a newer one) was handled already
        self.sent.append((r.key, r.payload))
        self.done_fences[r.key] = r.fence


def make_reminders(store: object, mailer: Mailer, **options: object) -> Reminders:
    return Reminders(store, mailer.on_reminder, name="mail", **options)  # type: ignore[arg-type]


async def every_day(reminders: Reminders, r: Reminder) -> None:
    """Recurring work: the handler sets its own key again for tomorrow (a new version,
    with a new fence) before it returns."""
    await reminders.remind(r.key, at=r.fire_at + dt.timedelta(days=1), payload=r.payload)
