"""The source checkpoint's sha256, for the model card.

The writer's pass over the source reads every byte of the file once, in file order, and feeds the
digest as it goes (StorageIndex.sha256), so hashing costs no second read. A conversion whose writer
did not read the whole file that way hashes it when asked.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .reader.checkpoint import Checkpoint

CHUNK = 16 << 20  # hashlib releases the GIL on large buffers


class HashAlongside:
    """A sha256 computed on a thread of its own, so that hashing a piece overlaps the other checks of it.

    `update(piece)` starts hashing `piece` after the pieces given before it; `wait()` returns once
    all of them are hashed, and the caller keeps each piece's memory valid until then. Use as a
    context manager, which ends the thread.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._last: Future[None] | None = None

    def __enter__(self) -> HashAlongside:
        return self

    def __exit__(self, *exc: object) -> None:
        self._executor.shutdown(wait=True)

    def update(self, piece: memoryview) -> None:
        self._last = self._executor.submit(self._digest.update, piece)

    def wait(self) -> None:
        if self._last is not None:
            self._last.result()  # one worker: the last piece hashed means all were
            self._last = None

    def hexdigest(self) -> str:
        self.wait()
        return self._digest.hexdigest()


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
