"""One blocking read shared by the tasks that ask for it at once: fifty VMIs starting together
read /proc a few times, not fifty (a read of every process's status also waits on the QEMUs
that are starting)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class _Round(Generic[T]):
    """The callers that share one read, and its result once it is done."""

    def __init__(self) -> None:
        self.result: tuple[T] | None = None


class Coalesced(Generic[T]):
    """`await get()`: the result of a call of `read` (in a worker thread) that began after
    `get` was called, never an older one; the callers that come while a read runs share the
    next one."""

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._lock = trio.Lock()
        self._next: _Round[T] | None = None

    def __repr__(self) -> str:
        return f"<Coalesced {getattr(self._read, '__name__', self._read)}>"

    async def get(self) -> T:
        round_ = self._next = self._next or _Round()
        async with self._lock:  # one read at a time
            if round_.result is None:  # nobody of this round has read yet: read for them all
                if self._next is round_:
                    self._next = None  # who comes from now on waits for a later read
                round_.result = (await trio.to_thread.run_sync(self._read),)
        return round_.result[0]
