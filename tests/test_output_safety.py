"""OUT is all or nothing: whatever goes wrong, one clear line, a documented exit code, nothing left over.

Every test runs the real command line in a subprocess (`python -m fairseq_to_hf convert SRC OUT`):
unreadable input, an OUT that exists or cannot be written, a disk that fills up in the middle of
model.safetensors, and SIGINT/SIGTERM while the weights are written or verified. Afterwards OUT is
either absent or exactly what it was before, and no staging folder (`.OUT.partial-*`,
`.OUT.previous-*`) is left beside it. Exit codes are the documented ones: 2 bad input, 3 output
problems, 130 interrupted.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES
from fairseq_to_hf.reader import read_checkpoint

MLM = FIXTURES / "roberta_mlm"
EXIT_BAD_INPUT, EXIT_OUTPUT, EXIT_INTERRUPTED = 2, 3, 130
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
Preexec = Callable[[], None]


# ---- running the command line ------------------------------------------------------------------------

def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "fairseq_to_hf", "convert", *map(str, args)]


def run_cli(*args: str | Path, preexec: Preexec | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=300, preexec_fn=preexec)


def without_permission_override() -> None:
    """In the child, before exec: drop root's power to ignore file permissions (chmod then applies).

    Capabilities removed from the bounding set are not regained by the exec'd Python, even as uid 0.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def permissions_apply() -> Preexec | None:
    """How to run the CLI so that chmod restrictions bind it; skips when that is impossible here."""
    if os.geteuid() != 0:
        return None
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=without_permission_override,
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root without the right to drop CAP_DAC_OVERRIDE: permissions cannot be tested")
    return without_permission_override


def file_size_limit(limit: int) -> Preexec:
    """In the child: files stop growing at `limit` bytes and write() fails with EFBIG (a full disk)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


# ---- what must hold afterwards -------------------------------------------------------------------------

def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_message(result: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    """The exit code, and exactly one message line (the last one), without a traceback."""
    stderr = result.stderr
    assert result.returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    messages = [line for line in stderr.splitlines() if line.startswith("fairseq-to-hf: ")]
    assert len(messages) == 1 and stderr.rstrip().endswith(messages[0]), stderr
    for phrase in phrases:
        assert phrase in messages[0], stderr


def assert_failed_cleanly(result: subprocess.CompletedProcess, out: Path, code: int, *phrases: str,
                          previous: dict[str, bytes] | None = None) -> None:
    """One message, OUT absent (or exactly as it was), and no staging folder beside it."""
    assert_one_message(result, code, *phrases)
    if previous is None:
        assert not out.exists(), "a partial OUT was left"
    else:
        assert snapshot(out) == previous, "the existing OUT was changed"
    assert leftovers(out) == [], f"staging folders left beside OUT: {leftovers(out)}"


def existing_out(out: Path) -> dict[str, bytes]:
    out.mkdir()
    (out / "mine.txt").write_text("the user's previous conversion")
    return snapshot(out)


# ---- unreadable input ----------------------------------------------------------------------------------

def test_unreadable_checkpoint(tmp_path: Path) -> None:
    preexec = permissions_apply()
    src = tmp_path / "src"
    shutil.copytree(MLM, src)
    (src / "model.pt").chmod(0)
    out = tmp_path / "out"
    result = run_cli(src, out, "--no-verify", preexec=preexec)
    assert_failed_cleanly(result, out, EXIT_BAD_INPUT, "model.pt", "cannot be read", "Permission denied")


def test_unreadable_source_folder(tmp_path: Path) -> None:
    preexec = permissions_apply()
    src = tmp_path / "src"
    shutil.copytree(MLM, src)
    src.chmod(0)
    out = tmp_path / "out"
    try:
        result = run_cli(src, out, "--no-verify", preexec=preexec)
    finally:
        src.chmod(0o755)
    assert_failed_cleanly(result, out, EXIT_BAD_INPUT, "cannot be read", "Permission denied")


def test_checkpoint_that_fails_to_read(tmp_path: Path) -> None:
    # Readable by permissions, yet read() fails with EIO: what a failing disk or network mount does.
    if not Path("/proc/self/mem").exists():
        pytest.skip("needs Linux /proc/self/mem, whose first page cannot be read")
    src = tmp_path / "src"
    shutil.copytree(MLM, src)
    (src / "model.pt").unlink()
    (src / "model.pt").symlink_to("/proc/self/mem")
    out = tmp_path / "out"
    result = run_cli(src, out, "--no-verify")
    assert_failed_cleanly(result, out, EXIT_BAD_INPUT, "cannot be read")


# ---- OUT exists or cannot be written ------------------------------------------------------------------

def test_existing_out_is_refused_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    previous = existing_out(out)
    result = run_cli(MLM, out, "--no-verify")
    assert_failed_cleanly(result, out, EXIT_OUTPUT, "already exists", "--force", previous=previous)


def test_force_replaces_out_only_once_the_new_one_is_complete(tmp_path: Path) -> None:
    out = tmp_path / "out"
    existing_out(out)
    process = subprocess.Popen(command(MLM, out, "--force"), stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    while process.poll() is None:  # watch OUT for the whole run: old, then (atomically) new
        try:
            names = {p.name for p in out.iterdir()}
        except FileNotFoundError:  # between the two renames that swap the folders
            names = set()
        if "mine.txt" in names:
            seen.add("old")
        elif names:
            assert {"model.safetensors", "config.json"} <= names, f"OUT seen half-written: {names}"
            seen.add("new")
        time.sleep(0.002)
    assert process.wait() == 0, process.stderr.read() if process.stderr else ""
    assert "old" in seen
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").exists()
    assert leftovers(out) == []


def test_out_whose_parent_is_a_file(tmp_path: Path) -> None:
    parent = tmp_path / "not-a-folder"
    parent.write_text("a file")
    out = parent / "out"
    result = run_cli(MLM, out, "--no-verify")
    assert_one_message(result, EXIT_OUTPUT, str(out))
    assert parent.read_text() == "a file" and [p.name for p in tmp_path.iterdir()] == ["not-a-folder"]


def test_out_in_a_read_only_folder(tmp_path: Path) -> None:
    preexec = permissions_apply()
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    out = parent / "out"
    try:
        result = run_cli(MLM, out, "--no-verify", preexec=preexec)
        assert_failed_cleanly(result, out, EXIT_OUTPUT, "cannot write")
    finally:
        parent.chmod(0o755)


# ---- the disk fills up --------------------------------------------------------------------------------

def model_bytes() -> int:
    return sum(t.nbytes for t in read_checkpoint(MLM / "model.pt").tensors.values())


@pytest.mark.parametrize("force", [False, True], ids=["new-out", "force"])
def test_disk_full_in_the_middle_of_the_weights(tmp_path: Path, force: bool) -> None:
    limit = model_bytes() // 2  # model.safetensors is about model_bytes(): the limit hits mid-file
    out = tmp_path / "out"
    previous = existing_out(out) if force else None
    result = run_cli(MLM, out, "--no-verify", *(["--force"] if force else []), preexec=file_size_limit(limit))
    assert_failed_cleanly(result, out, EXIT_OUTPUT, "disk filled up", previous=previous)


# ---- interrupted --------------------------------------------------------------------------------------

LAYERS, WIDTH, FFN = 6, 768, 3072  # about 170 MB of float32: writing and verifying take a while


def widened(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple({32: WIDTH, 64: FFN}.get(dim, dim) for dim in shape)


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """roberta_mlm's fairseq 0.12 keys and hyper-parameters, at BERT-base width and 6 layers."""
    small = read_checkpoint(MLM / "model.pt")
    generator = torch.Generator().manual_seed(0)
    layer = re.compile(r"(encoder\.sentence_encoder\.layers\.)\d+(\..*)")
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, lazy in small.tensors.items():
        match = layer.fullmatch(name)
        names = [f"{match[1]}{i}{match[2]}" for i in range(LAYERS)] if match else [name]
        if match and not name.startswith(f"{match[1]}0."):
            continue  # layer 0's tensors stand for every layer
        for target in names:
            shape = widened(lazy.shape)
            if target.endswith("version"):
                state[target] = lazy.load()
            elif "layer_norm" in target or "layernorm" in target:
                state[target] = torch.ones(shape) if target.endswith("weight") else torch.zeros(shape)
            else:
                state[target] = torch.randn(shape, generator=generator) * 0.02
    state["encoder.lm_head.weight"] = state["encoder.sentence_encoder.embed_tokens.weight"]  # tied
    hparams = dict(small.hparams, encoder_layers=LAYERS, encoder_embed_dim=WIDTH, encoder_ffn_embed_dim=FFN,
                   encoder_attention_heads=12)
    folder = tmp_path_factory.mktemp("big") / "src"
    folder.mkdir()
    torch.save({"model": state, "args": argparse.Namespace(**hparams)}, folder / "model.pt")
    shutil.copy(MLM / "dict.txt", folder / "dict.txt")
    return folder


class Watcher:
    """Runs the CLI, collects its stderr lines as they come, and signals it at the chosen moment."""

    def __init__(self, src: Path, out: Path, *extra: str) -> None:
        self.out = out
        self.lines: list[str] = []
        self.process = subprocess.Popen(command(src, out, *extra), stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def staged_weights(self) -> Path | None:
        return next(iter(self.out.parent.glob(f".{self.out.name}.partial-*/model.safetensors")), None)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                pytest.fail(f"the conversion ended before {what}: " + "\n".join(self.lines))
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.001)

    def finish(self, signum: int) -> subprocess.CompletedProcess:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=120)
        self.reader.join(timeout=10)
        return subprocess.CompletedProcess(self.process.args, code, "", "\n".join(self.lines) + "\n")


SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


@pytest.mark.parametrize("signum", SIGNALS)
def test_interrupted_while_writing_the_weights(tmp_path: Path, big_source: Path, signum: int) -> None:
    out = tmp_path / "out"
    run = Watcher(big_source, out)

    def well_into_the_weights() -> bool:
        weights = run.staged_weights()
        try:
            return weights is not None and weights.stat().st_size >= 16 << 20
        except FileNotFoundError:
            return False

    run.wait_until(well_into_the_weights, "16 MiB of model.safetensors were written")
    assert not any(line.startswith("verifying") for line in run.lines), "the weights were already complete"
    result = run.finish(signum)
    assert_failed_cleanly(result, out, EXIT_INTERRUPTED, "interrupted", "nothing was written")


@pytest.mark.parametrize("signum", SIGNALS)
def test_interrupted_while_verifying(tmp_path: Path, big_source: Path, signum: int) -> None:
    out = tmp_path / "out"
    run = Watcher(big_source, out)
    run.wait_until(lambda: any(line.startswith("verifying") for line in run.lines), "verification started")
    result = run.finish(signum)
    assert_failed_cleanly(result, out, EXIT_INTERRUPTED, "interrupted", "nothing was written")


def test_interrupted_replacement_keeps_the_old_out(tmp_path: Path, big_source: Path) -> None:
    out = tmp_path / "out"
    previous = existing_out(out)
    run = Watcher(big_source, out, "--force")
    run.wait_until(lambda: run.staged_weights() is not None, "the new folder was being written")
    result = run.finish(signal.SIGINT)
    assert_failed_cleanly(result, out, EXIT_INTERRUPTED, "interrupted", previous=previous)
