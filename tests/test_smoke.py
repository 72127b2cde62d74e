import trio

from periodic import Periodic


async def test_ticks_on_the_grid(autojump_clock, events):
    times = []

    async def job():
        times.append(trio.current_time())

    async with trio.open_nursery() as n:
        await n.start(Periodic(run=job, every=2).serve)
        await trio.sleep(7)
        n.cancel_scope.cancel()
    assert times == [2.0, 4.0, 6.0]
