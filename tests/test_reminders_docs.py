"""The "Durable reminders" page's example: an idempotent handler, and re-arming."""

from __future__ import annotations

import datetime

import trio
import trio.testing
from example_support import load_example

from periodic.reminders import Reminder, Reminders
from periodic.stores import MemoryStore

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
example = load_example("reminder_emails")


async def test_a_delivery_seen_again_is_skipped_by_its_fence() -> None:
    mailer = example.Mailer()
    first = Reminder(key="invoice-42", fire_at=T0, payload={"invoice": 42}, fence=7)
    await mailer.on_reminder(first)
    await mailer.on_reminder(
        Reminder(key="invoice-42", fire_at=T0, payload=None, fence=7, attempt=2)
    )  # delivered again
    await mailer.on_reminder(Reminder(key="invoice-42", fire_at=T0, payload="old", fence=5))
    assert mailer.sent == [("invoice-42", {"invoice": 42})]
    await mailer.on_reminder(Reminder(key="invoice-42", fire_at=T0, payload="new", fence=9))
    assert mailer.sent == [("invoice-42", {"invoice": 42}), ("invoice-42", "new")]


async def test_a_handler_re_arms_daily_work(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()

    def wall() -> datetime.datetime:
        return T0 + datetime.timedelta(seconds=trio.current_time() - start)

    store = MemoryStore()
    runs: list[tuple[float, int]] = []
    reminders: Reminders

    async def handler(r: Reminder) -> None:
        runs.append((trio.current_time() - start, r.fence))
        await example.every_day(reminders, r)

    reminders = Reminders(store, handler, name="daily", wall_clock=wall)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        await nursery.start(reminders.serve)
        await reminders.remind("report", at=T0 + datetime.timedelta(hours=1))
        await trio.sleep(3 * 86400)
        nursery.cancel_scope.cancel()
    assert [t for t, _ in runs] == [3600.0, 90000.0, 176400.0]
    assert [f for _, f in runs] == sorted({f for _, f in runs})  # a new fence each day
