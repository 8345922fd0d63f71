"""The source checkpoint's sha256, for the model card.

The writer's pass over the source reads every byte of the file once, in file order, and feeds the
digest as it goes (StorageIndex.sha256), so hashing costs no second read. A conversion whose writer
did not read the whole file that way hashes it when asked.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .reader.checkpoint import Checkpoint

CHUNK = 16 << 20  # hashlib releases the GIL on large buffers


class HashAlongside:
    """A sha256 computed on a thread of its own, so that hashing a piece overlaps the checks of the next.

    `update(piece, done)` queues `piece` after the pieces given before it and returns at once, unless
    MAX_QUEUED pieces already wait (each stays in memory until hashed); `done()` runs on the hashing
    thread once the piece is hashed, to release it. `wait()` returns once every queued piece is hashed
    and released, raising what a `done` raised. Use as a context manager, which ends the thread.
    """

    MAX_QUEUED = 4

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._slots = threading.BoundedSemaphore(self.MAX_QUEUED)
        self._last: Future[None] | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> HashAlongside:
        return self

    def __exit__(self, *exc: object) -> None:
        self._executor.shutdown(wait=True)

    def update(self, piece: memoryview, done: Callable[[], None] | None = None) -> None:
        self._slots.acquire()
        self._last = self._executor.submit(self._hash, piece, done)

    def wait(self) -> None:
        if self._last is not None:
            self._last.result()  # one worker: the last piece hashed means all were
            self._last = None
        if self._error is not None:
            raise self._error

    def hexdigest(self) -> str:
        self.wait()
        return self._digest.hexdigest()

    def _hash(self, piece: memoryview, done: Callable[[], None] | None) -> None:
        try:
            self._digest.update(piece)
        finally:
            self._slots.release()
            if done is not None:
                try:
                    done()
                except BaseException as error:  # noqa: BLE001 -- raised by wait(), on the caller's thread
                    self._error = self._error or error


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class SourceChecksum:
    """`result()`: the checkpoint's sha256, from the writer's pass if it made one, else read now."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self._checkpoint = checkpoint

    def result(self) -> str:
        storages = self._checkpoint.storages
        if storages is not None and storages.sha256 is not None:
            return storages.sha256
        return sha256_of(self._checkpoint.path)
