"""The error types that reach users, and the exit codes they map to.

Every problem a user can fix (a wrong path, a checkpoint of another model, a dict.txt that does not fit)
is raised as a `ConversionError` subclass whose message is complete on its own: what is wrong, which
file, what to do. The command line prints it as one line (plus an indented list when several problems
were collected) and exits with the class's code; no traceback is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_OUTPUT = 3
EXIT_INTERNAL = 70  # a bug, reported in one line like everything else
EXIT_INTERRUPTED = 130


class ConversionError(Exception):
    """A problem with the input or the request; nothing was written."""

    exit_code = EXIT_BAD_INPUT  # an instance may carry another (a batch ends with its first failure's)

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        hint: str | None = None,
        details: Iterable[str] = (),
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.hint = hint
        self.details = list(details)
        super().__init__(self.render())

    def render(self) -> str:
        line = self.message
        if self.path:
            line = f"{self.path}: {line}"
        if self.hint:
            line = f"{line}; {self.hint}"
        return "\n".join([escape_controls(line), *(f"  - {escape_controls(detail)}" for detail in self.details)])


class UnsafeCheckpointError(ConversionError):
    """The pickle asked for something the reader refuses to run or build."""


class CheckpointFormatError(ConversionError):
    """The file is not a readable torch checkpoint, or its bytes are damaged."""


class UnsupportedModelError(ConversionError):
    """A readable fairseq checkpoint whose model this tool cannot convert exactly."""


class OutputError(ConversionError):
    """OUT cannot be written: it exists, is not writable, or the disk filled up."""

    exit_code = EXIT_OUTPUT


class VerificationError(ConversionError):
    """The converted model or tokenizer does not compute what fairseq computes."""

    exit_code = EXIT_VERIFY_FAILED


_TERMINAL_CODES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # colours and cursor moves some libraries print


def escape_controls(text: str) -> str:
    """`text` with every control character shown escaped (a path or a name may hold a newline or a
    terminal code): a message stays one line and cannot move the terminal's cursor or colours."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def library_message(error: BaseException, limit: int = 200) -> str:
    """Another library's exception as part of one line of ours: its lines joined, without terminal codes,
    cut at `limit` characters; its type where it says nothing."""
    text = " ".join(_TERMINAL_CODES.sub("", str(error)).split())
    line = escape_controls(text) if text else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "..."


class ProblemList:
    """Collects problems found while checking, so they are reported together."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, problem: str) -> None:
        self.items.append(problem)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(
        self,
        error_type: type[ConversionError],
        summary: str,
        *,
        path: str | Path | None = None,
        hint: str | None = None,
    ) -> None:
        if not self.items:
            return
        count = len(self.items)
        if count == 1:
            raise error_type(f"{summary}: {self.items[0]}", path=path, hint=hint)
        raise error_type(f"{summary} ({count} problems)", path=path, hint=hint, details=self.items)
