"""The source checkpoint's sha256, for the model card.

A sha256 is one sequential stream, slower per byte than the rest of a conversion's per-byte work
(copy, CRC-32, NaN/Inf check) together, so it runs where it delays nothing: in a child process
started before the conversion imports torch and reads the checkpoint, on the core that work leaves
idle (Sha256InChild). Where no child can be started, the writer's pass feeds the digest from the
bytes it reads anyway (HashAlongside, StorageIndex.sha256), and a conversion whose writer did not
read the whole file that way hashes it when asked.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .reader.files import IDENTITY_FIELDS

if TYPE_CHECKING:  # the command line starts a hash before torch is imported
    from .reader.checkpoint import Checkpoint
    from .reader.tensors import StorageIndex

CHUNK = 16 << 20  # hashlib releases the GIL on large buffers

# The child: stdlib only, no site (it starts in ~20 ms). It maps the file and hashes it in place
# (reading into a buffer would add a copy costing more than the hash here), drops each chunk's
# pages from its mapping once hashed (its RSS stays one chunk), stops when its parent is gone, and
# prints the digest with the file's identity (reader.files.file_identity) before and after, so a file
# changed meanwhile is seen.
_CHILD_CODE = f"""
import errno, hashlib, mmap, os, resource, signal, stat, sys
# Ended by its parent, by Ctrl-C with it, or on its own: never a core file in the user's folder.
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGQUIT, signal.SIG_IGN)
path, parent, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def identity(status):
    return ":".join(str(getattr(status, name)) for name in {IDENTITY_FIELDS!r})
digest = hashlib.sha256()
# Non-blocking: a FIFO swapped in for the file must not hold the child in open() once its parent is gone.
with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
    status = os.fstat(file.fileno())
    if not stat.S_ISREG(status.st_mode):
        sys.exit(1)
    before, size = identity(status), status.st_size
    if size:
        with mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) as mapped:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(mapped)
            for offset in range(0, size, chunk):
                if os.getppid() != parent:
                    sys.exit(1)
                length = min(chunk, size - offset)
                try:  # MADV_POPULATE_READ: a file shrunk meanwhile fails here (EFAULT), not with SIGBUS below
                    mapped.madvise(22, offset, length)
                except OSError as error:
                    if error.errno == errno.EFAULT:
                        sys.exit(1)
                digest.update(view[offset:offset + length])
                mapped.madvise(mmap.MADV_DONTNEED, offset, length)
            view.release()
    print(digest.hexdigest(), before, identity(os.fstat(file.fileno())))
"""


class Sha256InChild:
    """The sha256 of a file, computed by a child process while this one goes on.

    `result(identity)` waits for it: the hex digest, or None when the child failed or hashed another
    file than the one of `identity` (files.file_identity of the file converted), or the file changed
    while it was hashed; the caller then hashes the file itself. Use as a context manager: leaving
    it ends a child still running.
    """

    def __init__(self, path: Path, process: subprocess.Popen) -> None:
        self.path, self._process = path, process
        self._output: tuple[str, str, str] | None = None  # digest, identity before and after hashing
        self._done = False

    @classmethod
    def start(cls, path: str | Path) -> Sha256InChild | None:
        """None where no child can be started (no interpreter path, no process left): hash in process."""
        path = Path(path)
        if not sys.executable or getattr(sys, "frozen", False):  # a frozen program would run itself
            return None
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _CHILD_CODE, os.fspath(path), str(os.getpid()), str(CHUNK)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except (OSError, ValueError, subprocess.SubprocessError):
            return None
        return cls(path, process)

    def __enter__(self) -> Sha256InChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def result(self, identity: str | None) -> str | None:
        if not self._done:
            output, _ = self._process.communicate()
            self._done = True
            fields = output.decode("ascii", "replace").split()
            if self._process.returncode == 0 and len(fields) == 3 and len(fields[0]) == 64:
                self._output = (fields[0], fields[1], fields[2])
        if self._output is None or identity is None:
            return None
        digest, before, after = self._output
        return digest if before == after == identity else None

    def stop(self) -> None:
        """Ends the child if it still runs, and reaps it."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._done = True  # a result not taken before is not wanted any more


_early: Sha256InChild | None = None


def start_early(path: str | Path) -> None:
    """Starts hashing `path` before the conversion is set up (the command line, before importing
    torch); the conversion of that file takes it over (background_sha256). Starting another ends it."""
    global _early
    stop_early()
    _early = Sha256InChild.start(path)


def stop_early() -> None:
    """Ends a hash started early and never taken over."""
    global _early
    if _early is not None:
        _early.stop()
        _early = None


def background_sha256(path: Path) -> Sha256InChild | None:
    """The hash of `path` started early, if it is this file, else a new one (None if none can start)."""
    global _early
    early, _early = _early, None
    if early is not None:
        try:
            same = os.path.samefile(early.path, path)
        except OSError:
            same = False
        if same:
            return early
        early.stop()
    return Sha256InChild.start(path)


@contextmanager
def sha256_in_background(path: Path, wanted: bool = True) -> Iterator[Sha256InChild | None]:
    """The child hashing `path` (background_sha256) for the time of the block, ended when it is left;
    None when not `wanted` (nothing will be written) or where no child can start."""
    child = background_sha256(path) if wanted else None
    try:
        yield child
    finally:
        if child is not None:
            child.stop()


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


def sha256_of(index: StorageIndex) -> str:
    """The checkpoint's sha256, read now: refused if the file is no longer, or stops being, the one converted."""
    digest = hashlib.sha256()
    with index.open_unchanged(buffering=0) as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
        index.check_unchanged(file.fileno())
    return digest.hexdigest()


class SourceChecksum:
    """`result()`: the checkpoint's sha256, from the child hashing it, else from the writer's pass if
    it made one, else read now."""

    def __init__(self, checkpoint: Checkpoint, child: Sha256InChild | None = None) -> None:
        self._checkpoint, self._child = checkpoint, child
        self._digest: str | None = None

    @property
    def needs_pass(self) -> bool:
        """Whether the writer's pass should feed the digest: no child is hashing the file."""
        return self._child is None

    def result(self) -> str:
        if self._digest is None:
            self._digest = self._compute()
        return self._digest

    def _compute(self) -> str:
        index = self._checkpoint.storages
        if self._child is not None:
            digest = self._child.result(index.identity)
            if digest is not None:
                return digest
        if index.sha256 is not None:
            return index.sha256
        return sha256_of(index)
