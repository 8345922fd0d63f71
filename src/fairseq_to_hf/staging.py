"""OUT appears complete or not at all, and nothing the user had is touched on the way.

The output is built in a folder beside OUT (`.OUT.partial-*`) and moved into place at the very end
with one rename that cannot clobber: `renameat2(RENAME_NOREPLACE)` when OUT was absent, so a folder
that appeared meanwhile (another run, the user) stays as it is; `RENAME_EXCHANGE` with `--force`, so
the old OUT is swapped out in one step, and only if it is still the folder that was checked at the
start. Before any work, OUT is refused when it is (or holds) one of the inputs, is a symbolic link,
holds the current folder, or has a name no filesystem here accepts; and `--force` replaces a folder
inside the model folder only if it is an earlier conversion's output.

The converting process holds a lock on its staging folder. A run that was killed outright (SIGKILL,
power loss) leaves its folder unlocked; the next run to the same OUT removes it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import interrupts
from .errors import ConversionError, OutputError

NAME_MAX = 255  # bytes in one path component on Linux filesystems
_STAGING_NAME_BYTES = 160  # of OUT's name in the staging folder's, which adds a prefix and a suffix
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# An unlocked staging folder younger than this may be one whose run has not locked it yet.
ABANDONED_AFTER_SECONDS = 60


@dataclass(frozen=True)
class OutputTarget:
    """OUT, checked: where the result goes and which existing folder, if any, it may replace."""

    path: Path  # absolute
    replaces: tuple[int, int, int] | None = None  # identity of the folder --force replaces (see _identity)


def output_target(out: str | Path, *, force: bool, inputs: Iterable[Path] = (), model_folder: Path | None = None,
                  output_marker: str | None = None) -> OutputTarget:
    """Checks OUT before any work; `inputs` are every file and folder the run reads.

    `model_folder`: the folder SRC named, whose files are the user's: --force replaces a folder inside
    it only if that folder, or one of its subfolders, holds `output_marker` (the file every conversion
    writes), so is an earlier conversion's output.
    """
    if not os.fspath(out):  # Path("") would be the current folder
        raise ConversionError("is an empty path", path="OUT", hint="name the folder to write the model into")
    path = Path(os.path.abspath(out))
    if path.parent == path:
        raise OutputError("is the root of the filesystem", path=path, hint="name a new folder for the output")
    too_long = [part for part in path.parts if len(os.fsencode(part)) > NAME_MAX]
    if too_long:
        raise OutputError(f"has a name of {len(os.fsencode(too_long[0]))} bytes; filesystems take at most {NAME_MAX}",
                          path=f"{too_long[0][:40]}...", hint="choose a shorter name for OUT")
    _refuse_overlap(path, inputs)
    try:
        status = path.lstat()
    except FileNotFoundError:
        status = None
    except OSError as error:
        raise OutputError(f"cannot be checked ({error.strerror})", path=path, hint="choose another folder") from None
    replaces = None
    if status is not None:
        if path.is_symlink():
            raise OutputError(f"is a symbolic link (to {os.readlink(path)})", path=path,
                              hint="name the folder itself, or a new folder, as OUT")
        if not path.is_dir():
            raise OutputError("exists and is not a folder", path=path, hint="choose a folder path")
        if not force:
            raise OutputError("already exists", path=path, hint="choose a new folder or pass --force to replace it")
        if _holds(path, Path(os.getcwd())):
            raise OutputError("holds the current folder, which --force would replace", path=path,
                              hint="run the command from another folder, or choose another OUT")
        if model_folder is not None and _holds(model_folder, path) and not _holds_marker(path, output_marker):
            raise OutputError(f"is inside the model folder {model_folder} and was not written by fairseq-to-hf: "
                              "--force would delete its files", path=path,
                              hint="choose an OUT outside the model folder, or move that folder away yourself")
        locked = _unremovable(path)
        if locked is not None:
            raise OutputError(f"cannot be replaced: {locked} is a folder whose entries you cannot delete",
                              path=path, hint="make it writable or remove OUT yourself, then run again")
        replaces = _identity(path)
    parent = path.parent
    if not parent.is_dir():
        raise OutputError("its parent folder does not exist", path=path, hint=f"create {parent} first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {parent}", path=path, hint="choose a folder you can write to")
    return OutputTarget(path, replaces)


def _holds_marker(folder: Path, marker: str | None) -> bool:
    """`folder`, or a folder in it, holds a file named `marker`."""
    if marker is None:
        return False
    try:
        return (folder / marker).is_file() or any(
            (Path(entry.path) / marker).is_file() for entry in os.scandir(folder) if entry.is_dir())
    except OSError:
        return False


def _unremovable(folder: Path) -> Path | None:
    """A folder inside `folder` (or itself) whose entries this user cannot list or delete, which would
    leave the replaced OUT half-removed beside the new one; None where all of it can go."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return folder
    if entries and not os.access(folder, os.W_OK | os.X_OK):
        return folder
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            found = _unremovable(Path(entry.path))
            if found is not None:
                return found
    return None


def _holds(folder: Path, path: Path) -> bool:
    """`path` is `folder` or inside it, symbolic links resolved."""
    folder, path = Path(os.path.realpath(folder)), Path(os.path.realpath(path))
    return path == folder or folder in path.parents


def _refuse_overlap(out: Path, inputs: Iterable[Path]) -> None:
    clash = next((path for path in inputs if _holds(out, path)), None)
    if clash is not None:
        what = "is" if _holds(clash, out) else f"holds {clash},"
        raise ConversionError(f"{what} an input of this conversion, which writing OUT would destroy", path=out,
                              hint="choose an OUT outside the model folder")


@contextmanager
def staged_output(target: OutputTarget) -> Iterator[Path]:
    """Yields an empty folder beside OUT and moves it onto OUT when the block completes.

    On any error or interrupt the staging folder is removed and OUT is left as it was. A full disk at
    any point of the writing is an OutputError (exit 3), whatever wrote the file.
    """
    out = target.path
    _remove_abandoned(out)
    try:
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(out), dir=out.parent))
        lock = _lock(staging)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; OUT gets the usual permissions
    except OSError as error:
        raise OutputError(f"cannot create a folder beside it ({error.strerror})", path=out,
                          hint="choose a folder you can write to") from None
    try:
        try:
            yield staging
        except OSError as error:
            raise _writing_error(error, out) from None
        with interrupts.deferred(reraise=False):
            _publish(staging, target)
    finally:
        with interrupts.deferred():
            if os.path.lexists(staging):
                shutil.rmtree(staging, ignore_errors=True)
            if lock is not None:
                os.close(lock)


def _staging_prefix(out: Path) -> str:
    return f".{_short(out.name)}.partial-"


def _lock(folder: Path) -> int | None:
    """An open descriptor holding an exclusive lock on `folder`, or None where locks are not supported.

    The lock lives as long as the process: the kernel drops it however the process ends.
    """
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def _remove_abandoned(out: Path) -> None:
    """Removes the staging folders of earlier runs to OUT that died without cleaning up.

    Only folders with OUT's staging prefix, older than ABANDONED_AFTER_SECONDS and not locked by a
    living run; anything that cannot be checked is left alone.
    """
    prefix = _staging_prefix(out)
    try:
        entries = [entry for entry in os.scandir(out.parent) if entry.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < ABANDONED_AFTER_SECONDS:
                continue
        except OSError:
            continue
        lock = _lock(Path(entry.path))
        if lock is None:  # a living run holds it, or it cannot be locked here
            continue
        try:
            with interrupts.deferred():
                shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(lock)


def _writing_error(error: OSError, out: Path) -> OutputError:
    if error.errno in _DISK_FULL:
        return OutputError("the disk filled up while writing", path=out,
                           hint="free some space or write elsewhere; nothing was kept")
    return OutputError(f"writing failed ({error.strerror or error})", path=out)


def _short(name: str) -> str:
    return os.fsencode(name)[:_STAGING_NAME_BYTES].decode(errors="ignore")


def _publish(staging: Path, target: OutputTarget) -> None:
    """Moves the complete staging folder onto OUT; afterwards `staging` holds what OUT held, if anything."""
    out = target.path
    try:
        if target.replaces is None or not os.path.lexists(out):
            _rename_no_replace(staging, out)
            return
        if _identity(out) != target.replaces:
            raise OutputError("was replaced by another folder, or changed, while converting; it was left as it is",
                              path=out, hint="nothing was written; run the conversion again")
        _exchange(staging, out)
        swapped_out = _identity(staging)  # a rename changes the change time: compare device and inode
        if swapped_out is None or swapped_out[:2] != target.replaces[:2]:  # a folder that appeared in between
            _exchange(staging, out)
            raise OutputError("was replaced by another folder, or changed, while converting; it was left as it is",
                              path=out, hint="nothing was written; run the conversion again")
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise OutputError("appeared while converting (another run, or made meanwhile); it was left as it is",
                              path=out, hint="nothing was written; choose another OUT, or --force to replace it") from None
        raise OutputError(f"cannot be put in place ({error.strerror or error})", path=out,
                          hint="nothing was written; choose another OUT") from None


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Device, inode and change time: a folder made in the place of a deleted one often gets its inode
    number back, and its change time differs (so does that of a folder whose entries changed)."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    return (status.st_dev, status.st_ino, status.st_ctime_ns)


def _renameat2(source: Path, destination: Path, flags: int) -> bool:
    """True when done; False when this kernel, libc or filesystem has no such rename."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(destination))


def _rename_no_replace(source: Path, destination: Path) -> None:
    if _renameat2(source, destination, _RENAME_NOREPLACE):
        return
    if os.path.lexists(destination):  # without renameat2 there is a short window between check and rename
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(destination))
    os.rename(source, destination)


def _exchange(staging: Path, out: Path) -> None:
    """Swaps the two folders; without RENAME_EXCHANGE, in two renames that are undone if the second fails."""
    if _renameat2(staging, out, _RENAME_EXCHANGE):
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{_short(out.name)}.previous-", dir=out.parent))
    try:
        os.rename(out, aside / "old")
        try:
            os.rename(staging, out)
        except OSError:
            os.rename(aside / "old", out)
            raise
        os.rename(aside / "old", staging)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
