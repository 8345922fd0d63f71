"""The source checkpoint's sha256, computed on a thread while the conversion runs."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

CHUNK = 16 << 20  # hashlib releases the GIL on large buffers, so hashing overlaps with converting


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_in_background(path: Path) -> Future[str]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    future = executor.submit(sha256_of, path)
    executor.shutdown(wait=False)
    return future
