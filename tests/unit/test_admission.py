"""Upload admission: places per account and in all, and the fair hand-out of codec workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from imagegate.errors import Unavailable
from imagegate.uploader.admission import Admission, Ticket


def test_places_per_account_and_in_all() -> None:
    adm = Admission(workers=2, queue=2, account_workers=1, account_queue=1)
    a1, a2 = adm.admit("a"), adm.admit("a")
    with pytest.raises(Unavailable, match="this account") as exc:
        adm.admit("a")
    assert exc.value.status == 503 and int(exc.value.headers["Retry-After"]) > 0
    b1, b2 = adm.admit("b"), adm.admit("b")
    with pytest.raises(Unavailable, match="capacity"):
        adm.admit("c")
    for ticket in (a1, a2, b1, b2):
        ticket.release()
        ticket.release()  # idempotent: a place is given back once
    assert adm.admitted == 0
    with adm.admit("c"):
        assert adm.admitted == 1
    assert adm.admitted == 0


async def _settle(done: Callable[[], bool]) -> None:
    """Let other tasks run until ``done`` (no clock involved: a bounded number of turns)."""
    for _ in range(1000):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the tasks never got there")


def _grew(items: list[str]) -> Callable[[], bool]:
    count = len(items)
    return lambda: len(items) > count


async def _hold(ticket: Ticket, order: list[str], name: str, done: asyncio.Event) -> None:
    with ticket:
        async with ticket.worker():
            order.append(name)
            await done.wait()


def test_a_flooder_never_holds_every_worker_and_others_go_first() -> None:
    async def scenario() -> None:
        adm = Admission(workers=2, queue=10, account_workers=1, account_queue=5)
        order: list[str] = []
        release = {name: asyncio.Event() for name in ("a1", "a2", "a3", "b1")}
        tasks = [
            asyncio.create_task(_hold(adm.admit("a"), order, n, release[n]))
            for n in ("a1", "a2", "a3")
        ]
        await asyncio.sleep(0)
        assert order == ["a1"]  # the flooder holds one worker, not both
        assert (adm.running, adm.waiting) == (1, 2)
        tasks.append(asyncio.create_task(_hold(adm.admit("b"), order, "b1", release["b1"])))
        await asyncio.sleep(0)
        assert order == ["a1", "b1"]  # the other account gets the free worker at once
        release["a1"].set()
        await _settle(lambda: len(order) == 3)
        assert order == ["a1", "b1", "a2"]
        for event in release.values():
            event.set()
        await asyncio.gather(*tasks)
        assert order == ["a1", "b1", "a2", "a3"]
        assert (adm.admitted, adm.waiting, adm.running) == (0, 0, 0)

    asyncio.run(scenario())


def test_one_worker_alternates_between_accounts() -> None:
    """With a single worker (so one account may hold it), waiting accounts take turns: the
    one served longest ago goes next, not the one that queued first."""

    async def scenario() -> None:
        adm = Admission(workers=1, queue=10, account_workers=1, account_queue=5)
        order: list[str] = []
        events = {n: asyncio.Event() for n in ("a1", "a2", "a3", "b1", "b2")}
        tasks = [
            asyncio.create_task(_hold(adm.admit(n[0]), order, n, events[n]))
            for n in ("a1", "a2", "a3", "b1", "b2")
        ]
        await _settle(lambda: len(order) == 1)
        while len(order) < 5:
            events[order[-1]].set()
            await _settle(_grew(order))
        events[order[-1]].set()
        await asyncio.gather(*tasks)
        assert order == ["a1", "b1", "a2", "b2", "a3"]

    asyncio.run(scenario())


def test_cancelled_waiters_leave_the_line_and_give_back_their_place() -> None:
    async def scenario() -> None:
        adm = Admission(workers=1, queue=5, account_workers=1, account_queue=5)
        order: list[str] = []
        first_done = asyncio.Event()
        first = asyncio.create_task(_hold(adm.admit("a"), order, "a1", first_done))
        queued = asyncio.create_task(_hold(adm.admit("b"), order, "b1", asyncio.Event()))
        await asyncio.sleep(0)
        assert (adm.admitted, adm.waiting, adm.running) == (2, 1, 1)
        queued.cancel()  # the client left while waiting
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert (adm.admitted, adm.waiting, adm.running) == (1, 0, 1)
        first_done.set()
        await first
        assert order == ["a1"]
        running = asyncio.create_task(_hold(adm.admit("c"), order, "c1", asyncio.Event()))
        await asyncio.sleep(0)
        assert adm.running == 1
        running.cancel()  # the client left while processing
        with pytest.raises(asyncio.CancelledError):
            await running
        assert (adm.admitted, adm.waiting, adm.running) == (0, 0, 0)

    asyncio.run(scenario())


def test_the_listener_hears_every_change_of_places_held() -> None:
    """variants/yielding.py stops the variant workers while this count is above 0."""
    heard: list[int] = []
    adm = Admission(workers=1, queue=1, account_workers=1, account_queue=1, listener=heard.append)
    a = adm.admit("a")
    with adm.admit("b"), pytest.raises(Unavailable):
        adm.admit("c")  # refused: no place taken, nothing to hear
    a.release()
    a.release()  # given back once: heard once
    assert heard == [1, 2, 1, 0]
