"""Loads the next block of work on a background thread while the current one is processed.

Converting and verifying alternate reading (disk, page faults, copies) with writing or matrix
products. All of these release the GIL, so loading item i + 1 while item i is processed hides most of
the reading. At most two items are held: the one in use and the one arriving.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


class Prefetcher(Generic[Item, Loaded]):
    """`take(item)` returns `load(item)`, and starts loading the item that follows it in `order`.

    An item asked for out of that order is loaded on the spot, so a wrong guess costs time, never
    correctness. Use as a context manager; leaving it waits for a load still running.
    """

    def __init__(self, order: Sequence[Item], load: Callable[[Item], Loaded]) -> None:
        self._order = order
        self._load = load
        self._pending: tuple[int, Future[Loaded]] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")

    def __enter__(self) -> Prefetcher[Item, Loaded]:
        if self._order:
            self._start(0)
        return self

    def __exit__(self, *exc: object) -> None:
        self._pending = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _start(self, position: int) -> None:
        self._pending = (position, self._executor.submit(self._load, self._order[position]))

    def take(self, item: Item) -> Loaded:
        pending, self._pending = self._pending, None
        if pending is not None and self._is(pending[0], item):
            position, loaded = pending[0], pending[1].result()
        else:
            if pending is not None and not pending[1].cancel():
                pending[1].exception()  # waits for the load already running, so two never overlap
            # Where `order` repeats, the next occurrence from the expected position on.
            start = pending[0] if pending is not None else 0
            around = [*range(start, len(self._order)), *range(start)]
            position = next((i for i in around if self._is(i, item)), None)
            loaded = self._load(item)
        if position is not None and position + 1 < len(self._order):
            self._start(position + 1)
        return loaded

    def _is(self, position: int, item: Item) -> bool:
        expected = self._order[position]
        return expected is item or expected == item
