"""Opening the user's input files: regular files only, of a size no real input reaches.

A path may name a folder, a FIFO (reading it waits for a writer that never comes) or a device such as
/dev/zero (reading it never ends). Each is refused with what it is, before anything is read: the file is
opened without blocking and checked with fstat, so the check is on the file that is then read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ConversionError

# Far above any real one (XLM-R's dict.txt is 5 MB, its sentencepiece model 5 MB, GPT-2's encoder.json 1 MB).
MAX_TEXT_INPUT_BYTES = 256 << 20


def _open_regular(path: Path, what: str) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ConversionError(f"is a symbolic link to {os.readlink(path)}, which does not exist (expected {what})",
                                  path=path, hint="point it at the file, or pass the file's own path") from None
        raise ConversionError(f"not found (expected {what})", path=path) from None
    except IsADirectoryError:
        raise ConversionError(f"is a directory, not {what}", path=path) from None
    except OSError as error:
        raise ConversionError(f"cannot be read ({error.strerror})", path=path) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket")
        raise ConversionError(f"is {kind}, not {what}", path=path, hint="pass a regular file")
    return fd, info


# Which file, in which state: a file replaced (another inode) or rewritten (size, mtime) differs.
IDENTITY_FIELDS = ("st_dev", "st_ino", "st_size", "st_mtime_ns")


def file_identity(status: os.stat_result) -> str:
    return ":".join(str(getattr(status, name)) for name in IDENTITY_FIELDS)


def check_input_file(path: str | Path, what: str) -> None:
    """Refuses anything but a regular file (the checkpoint: no size limit, it is read by its own reader)."""
    fd, _ = _open_regular(Path(path), what)
    os.close(fd)


def read_input_file(path: str | Path, what: str, limit: int = MAX_TEXT_INPUT_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; `what` names it in messages ("a dict.txt")."""
    path = Path(path)
    fd, info = _open_regular(path, what)
    too_large = ConversionError(f"is larger than {limit >> 20} MiB, more than any {what.removeprefix('a ')} "
                                "could be", path=path, hint="is this the right file?")
    with os.fdopen(fd, "rb") as file:
        if info.st_size > limit:
            raise too_large
        try:
            data = file.read(limit + 1)  # +1: a file that grew since fstat
        except OSError as error:
            raise ConversionError(f"cannot be read ({error.strerror})", path=path) from None
    if len(data) > limit:
        raise too_large
    return data
