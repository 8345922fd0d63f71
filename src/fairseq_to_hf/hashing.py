"""The source checkpoint's sha256, for the model card.

The writer's pass over the source reads every byte of the file once, in file order, and feeds the
digest as it goes (StorageIndex.sha256), so hashing costs no second read. A conversion whose writer
did not read the whole file that way hashes it when asked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .reader.checkpoint import Checkpoint

CHUNK = 16 << 20  # hashlib releases the GIL on large buffers


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
