"""VMIs starting at once share one read of /proc (vmid/runtime/coalesce.py), and none gets a
read that began before it asked: a process started just before a launch is always seen."""

from __future__ import annotations

import threading

import pytest
import trio

from vmid.runtime.coalesce import Coalesced

pytestmark = pytest.mark.timeout(30)


async def test_callers_at_once_share_a_read_that_began_after_they_asked() -> None:
    began: list[int] = []  # how many processes each read saw start before it
    started = 0  # processes started so far
    reading, release = threading.Event(), threading.Event()

    def read() -> int:
        began.append(started)
        reading.set()
        release.wait(10)
        return len(began)

    shared = Coalesced(read)
    got: dict[int, int] = {}

    async def launch(index: int) -> None:
        got[index] = await shared.get()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(launch, 0)
        await trio.to_thread.run_sync(reading.wait, 10)  # the first read runs (held)
        started = 1  # a process starts: the next ten must see it
        for index in range(1, 11):
            nursery.start_soon(launch, index)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert began == [0, 1]  # two reads for eleven callers
    assert got[0] == 1
    assert {got[i] for i in range(1, 11)} == {2}  # each saw the process started before it asked


async def test_a_failed_read_is_read_again_by_the_next_caller() -> None:
    calls = []

    def read() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise PermissionError("/proc unreadable right now")
        return len(calls)

    shared = Coalesced(read)
    with pytest.raises(PermissionError, match="unreadable"):
        await shared.get()
    assert await shared.get() == 2
