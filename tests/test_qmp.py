"""The QMP bridge (vmid/runtime/qmp.py): one monitor's failure never ends the daemon's loop."""

from __future__ import annotations

import asyncio
import gc

import pytest
import trio
import trio_asyncio

from vmid.runtime import qmp

pytestmark = pytest.mark.timeout(30)


async def test_an_error_nobody_awaited_on_the_asyncio_side_never_ends_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As a qemu.qmp reader task that hit EOF when its monitor was dropped unawaited:
    trio-asyncio's default handler raised it into the loop, ending every VM's supervision."""

    async def reader() -> None:
        raise EOFError

    async def drop_a_failed_task() -> None:
        task = asyncio.ensure_future(reader())
        await asyncio.sleep(0.01)
        del task
        gc.collect()  # "Task exception was never retrieved": the loop's exception handler

    async with qmp.bridge():
        await trio_asyncio.aio_as_trio(drop_a_failed_task)()
        await trio.sleep(0.1)
    assert "Task exception was never retrieved: EOFError()" in caplog.text
