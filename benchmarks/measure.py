"""Runs one command in a fresh process and measures its wall time and memory; the machine's facts.

Peak memory comes from two places:
- `ru_maxrss` of the child, from wait4: the kernel's exact high-water mark of its resident set (VmHWM).
  It counts file pages the process has mapped (e.g. safetensors' mmap) as well as its own memory.
- /proc/<pid>/status sampled every SAMPLE_SECONDS: the peaks of RssAnon (memory only the process
  holds: what must fit in RAM) and RssFile (mapped file pages: page cache the kernel can reclaim).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.05
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass
class Measurement:
    wall_s: float  # start to exit of the process
    sync_s: float  # the `sync` right after it: its dirty pages (and any other process's) reaching the disk
    max_rss: int  # bytes, ru_maxrss (VmHWM)
    peak_anon: int  # bytes, sampled peak RssAnon
    peak_file: int  # bytes, sampled peak RssFile
    returncode: int
    error: str | None = None  # last lines of stderr when the command failed

    def as_dict(self) -> dict:
        return asdict(self)


class _Sampler(threading.Thread):
    """Polls /proc/<pid>/status until the process is gone, keeping the peaks."""

    FIELDS = {"RssAnon:": "anon", "RssFile:": "file"}

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.peaks = {"anon": 0, "file": 0}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                text = self.path.read_text()
            except (FileNotFoundError, ProcessLookupError):
                return
            for line in text.splitlines():
                key = self.FIELDS.get(line.split(" ", 1)[0].split("\t", 1)[0])
                if key:
                    self.peaks[key] = max(self.peaks[key], int(line.split()[1]) * 1024)
            self.stopped.wait(SAMPLE_SECONDS)


def drop_page_cache() -> bool:
    """sync, then ask the kernel to drop clean page cache (needs root); False when not allowed."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def can_drop_page_cache() -> bool:
    return os.access(DROP_CACHES, os.W_OK)


def run_measured(command: list[str], *, log_path: Path, timeout: float | None = None,
                 env: dict[str, str] | None = None) -> Measurement:
    """Runs `command` (stdout and stderr to `log_path`) and measures it; never raises for a failing command."""
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
        sampler = _Sampler(process.pid)
        sampler.start()
        timer = _kill_after(process.pid, timeout) if timeout else None
        # wait4 rather than Popen.wait: it returns this child's own rusage, with its exact peak RSS.
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if timer:
            timer.cancel()
        sampler.stopped.set()
        sampler.join()
    synced = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - synced
    error = None
    if process.returncode != 0:
        error = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    return Measurement(wall_s=wall, sync_s=sync_s, max_rss=usage.ru_maxrss * 1024, peak_anon=sampler.peaks["anon"],
                       peak_file=sampler.peaks["file"], returncode=process.returncode, error=error)


def _kill_after(pid: int, seconds: float) -> threading.Timer:
    def kill() -> None:
        try:
            os.killpg(pid, 15)  # the process group we started (start_new_session), nothing else
        except ProcessLookupError:
            pass

    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    return timer


# ---- the machine ------------------------------------------------------------------------------------

def _meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def memory_available() -> int:
    return _meminfo("MemAvailable")


def machine_facts(workdir: Path) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    disk = shutil.disk_usage(workdir)
    device, fstype = _mount_of(workdir)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_bytes": _meminfo("MemTotal"),
        "ram_available_bytes": _meminfo("MemAvailable"),
        "swap_bytes": _meminfo("SwapTotal"),
        "disk": f"{device} ({fstype}), {disk.total / 1e9:.0f} GB, {disk.free / 1e9:.0f} GB free",
        "load_average": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _mount_of(path: Path) -> tuple[str, str]:
    """The device and filesystem type of the mount holding `path` (longest matching mount point)."""
    best = ("?", "?", "")
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount_point, fstype = line.split()[:3]
        if (resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")) \
                and len(mount_point) >= len(best[2]):
            best = (device, fstype, mount_point)
    return best[0], best[1]
