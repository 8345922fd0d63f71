"""Progress of writing tensors: a bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class WriteProgress:
    """Call `start(total_tensors, total_bytes)`, then `advance(nbytes)` per tensor, then `finish()`."""

    def __init__(self, stream: TextIO | None = None, *, bar: bool | None = None, every_seconds: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.every_seconds = every_seconds

    def start(self, label: str, total_tensors: int, total_bytes: int) -> None:
        self.label = label
        self.total_tensors, self.total_bytes = total_tensors, max(total_bytes, 1)
        self.tensors = self.bytes = 0
        self.started = self.last_line = time.monotonic()

    def advance(self, nbytes: int) -> None:
        self.tensors += 1
        self.bytes += nbytes
        now = time.monotonic()
        if self.bar:
            if now - self.last_line >= 0.2:  # redraw at most five times a second
                self.last_line = now
                self.stream.write("\r" + self._status(now))
                self.stream.flush()
        elif now - self.last_line >= self.every_seconds:
            self.last_line = now
            self.stream.write(self._status(now) + "\n")
            self.stream.flush()

    def finish(self) -> None:
        now = time.monotonic()
        if self.bar:
            self.stream.write("\r" + self._status(now) + "\n")
        elif now - self.started >= self.every_seconds:
            self.stream.write(self._status(now) + "\n")
        self.stream.flush()

    def _status(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        fraction = self.bytes / self.total_bytes
        rate = self.bytes / elapsed
        eta = (self.total_bytes - self.bytes) / rate if rate > 0 else 0.0
        filled = int(fraction * 24)
        bar = f"[{'#' * filled}{' ' * (24 - filled)}] " if self.bar else ""
        return (f"{self.label} {bar}{fraction:4.0%} {self.tensors}/{self.total_tensors} tensors, "
                f"{self.bytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB, {rate / 1e6:.0f} MB/s, "
                f"ETA {_duration(eta)}")
