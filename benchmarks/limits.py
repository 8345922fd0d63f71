"""What this machine can do per byte: the floor under any conversion of a file already in the page cache.

`copy_file_range || (map + crc32 + sha256)` is the writer's work at its best: the kernel copy on one
thread while the other checks and hashes the same file, the floor of `convert --no-verify`'s growth.
The shifted copies write each byte SHIFT bytes past its offset in the file, as the writer must: a
tensor's place in the safetensors file is not its place in the checkpoint.

Each operation is run over the whole checkpoint file, `rounds` times, the operations interleaved round
by round (the machine is shared: drift hits every operation alike); medians and min-max in GB/s.

    python benchmarks/limits.py /tmp/bench/ckpt/large-float32/model.pt --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import statistics
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

CHUNK = 4 << 20  # as the writer's pass (writer.SCAN_CHUNK)
SHIFT = 100  # bytes between a byte's offset in the copy and in the file: not a multiple of the page size
# A shift the writer meets most: RoBERTa large's float32 tensors lie 64-byte aligned relative to their
# source, 640 or 3456 bytes into a page (the header's length and the tensors before them decide).
ALIGNED_SHIFT = 640
BOUNCE = 1 << 20
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


def operations(path: Path, scratch: Path) -> dict[str, Callable[[], None]]:
    size = path.stat().st_size
    buffer = torch.empty(CHUNK, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    os.preadv(os.open(path, os.O_RDONLY), [view], 0)  # a real chunk of the file, for the in-cache rates
    floats = buffer.view(torch.float32)
    chunks = range(size // CHUNK)

    def pread() -> None:
        with open(path, "rb", buffering=0) as file:
            for offset in range(0, size, CHUNK):
                os.preadv(file.fileno(), [view], offset)

    def mmap_populate() -> None:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
            for offset in range(0, size, CHUNK):
                length = min(CHUNK, size - offset)
                mapped.madvise(MADV_POPULATE_READ, offset, length)
                mapped.madvise(mmap.MADV_DONTNEED, offset, length)

    def crc32() -> None:
        crc = 0
        for _ in chunks:
            crc = zlib.crc32(view, crc)

    def sha256() -> None:
        digest = hashlib.sha256()
        for _ in chunks:
            digest.update(view)

    def nan_sum() -> None:
        for _ in chunks:
            float(floats.sum())

    def memcpy() -> None:
        source = torch.empty(size // 8, dtype=torch.uint8)
        target = torch.empty_like(source)
        source.fill_(1)
        target.fill_(0)
        started = time.perf_counter()
        for _ in range(8):
            target.copy_(source)
        memcpy.elapsed = time.perf_counter() - started

    def copy_file_range(shift: int = 0) -> None:
        """The file copied inside the kernel, each byte to `shift` bytes past its own offset."""
        with open(path, "rb", buffering=0) as source, open(scratch, "wb", buffering=0) as target:
            done = 0
            while done < size:
                done += os.copy_file_range(source.fileno(), target.fileno(), min(64 << 20, size - done), done,
                                           done + shift)
        scratch.unlink()

    def pwrite_from_mapping(shift: int) -> None:
        """The file written with pwrite from a shared mapping of it, 8 MiB a time, each piece's pages
        mapped before and dropped after: the other way to copy a tensor without a buffer of its own."""
        with open(path, "rb") as source, mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as mapped, \
                open(scratch, "wb", buffering=0) as target:
            for offset in range(0, size, 8 << 20):
                length = min(8 << 20, size - offset)
                mapped.madvise(MADV_POPULATE_READ, offset, length)
                with memoryview(mapped)[offset:offset + length] as piece:
                    done = 0
                    while done < length:
                        done += os.pwrite(target.fileno(), piece[done:], offset + shift + done)
                mapped.madvise(mmap.MADV_DONTNEED, offset, length)
        scratch.unlink()

    def bounced(shift: int) -> None:
        """The file read with preadv into a 1 MiB buffer placed `shift` bytes into a page, then written
        with pwrite `shift` bytes further on: two copies in the kernel, both between equally aligned pages."""
        buffer = torch.empty(BOUNCE + mmap.PAGESIZE, dtype=torch.uint8)
        start = (shift - buffer.data_ptr()) % mmap.PAGESIZE
        piece = memoryview(buffer.numpy())[start:start + BOUNCE]
        with open(path, "rb", buffering=0) as source, open(scratch, "wb", buffering=0) as target:
            for offset in range(0, size, BOUNCE):
                length = os.preadv(source.fileno(), [piece[:min(BOUNCE, size - offset)]], offset)
                done = 0
                while done < length:
                    done += os.pwrite(target.fileno(), piece[done:length], offset + shift + done)
        scratch.unlink()

    def checked_copy() -> None:
        """What the writer does, at best: the kernel copy on one thread, while another maps each piece of
        the file and feeds it to crc32 and sha256 (both release the GIL)."""
        def check() -> None:
            crc, digest = 0, hashlib.sha256()
            with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
                for offset in range(0, size, CHUNK):
                    length = min(CHUNK, size - offset)
                    mapped.madvise(MADV_POPULATE_READ, offset, length)
                    piece = memoryview(mapped)[offset:offset + length]
                    crc = zlib.crc32(piece, crc)
                    digest.update(piece)
                    piece.release()
                    mapped.madvise(mmap.MADV_DONTNEED, offset, length)

        checker = threading.Thread(target=check)
        checker.start()
        copy_file_range()
        checker.join()

    def cp() -> None:
        subprocess.run(["cp", str(path), str(scratch)], check=True)
        scratch.unlink()

    return {"pread into a 4 MiB buffer": pread, "mmap + MADV_POPULATE_READ": mmap_populate,
            "zlib.crc32 (in cache)": crc32, "hashlib.sha256 (in cache)": sha256,
            "torch sum, 1 thread (in cache)": nan_sum, "memcpy of fresh memory (RAM)": memcpy,
            "copy_file_range of the file": copy_file_range,
            f"copy_file_range, {SHIFT} bytes further on": partial(copy_file_range, SHIFT),
            f"pwrite from a mapping, {SHIFT} bytes further on": partial(pwrite_from_mapping, SHIFT),
            f"copy_file_range, {ALIGNED_SHIFT} bytes further on": partial(copy_file_range, ALIGNED_SHIFT),
            f"preadv + pwrite through a 1 MiB buffer, {ALIGNED_SHIFT} bytes further on":
                partial(bounced, ALIGNED_SHIFT),
            "copy_file_range || (map + crc32 + sha256)": checked_copy, "cp of the file": cp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = args.file.stat().st_size
    with tempfile.TemporaryDirectory(dir=args.file.parent) as folder:
        ops = operations(args.file, Path(folder) / "copy")
        timings: dict[str, list[float]] = {name: [] for name in ops}
        subprocess.run(["cat", str(args.file)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        for _ in range(args.rounds):
            for name, operation in ops.items():
                started = time.perf_counter()
                operation()
                elapsed = getattr(operation, "elapsed", time.perf_counter() - started)
                timings[name].append(elapsed)
                os.sync()
    print(f"{args.file} ({size / 1e9:.2f} GB), {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    print(f"| operation | median GB/s | min–max GB/s | median s/GB |\n| --- | --- | --- | --- |")
    for name, values in timings.items():
        rates = sorted(size / value / 1e9 for value in values)
        median = statistics.median(rates)
        print(f"| {name} | {median:.2f} | {rates[0]:.2f}–{rates[-1]:.2f} | {1 / median:.2f} |")


if __name__ == "__main__":
    main()
