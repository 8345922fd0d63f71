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
import fcntl
import json
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

from conftest import FIXTURES, GPT2_BPE
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
    """The exit code, and exactly one message line (the last one but its `  - ` details), without a traceback."""
    stderr = result.stderr
    assert result.returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    messages = [line for line in stderr.splitlines() if line.startswith("fairseq-to-hf: ")]
    last = [line for line in stderr.splitlines() if not line.startswith("  - ")][-1]
    assert len(messages) == 1 and last == messages[0], stderr
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


def test_a_killed_run_is_cleaned_up_by_the_next(tmp_path: Path, big_source: Path) -> None:
    """SIGKILL leaves the staging folder (nothing can run); the next run to OUT removes it, but never
    the folder of a run still alive, nor one too young to have been locked yet."""
    out = tmp_path / "out"
    run = Watcher(big_source, out)
    run.wait_until(lambda: run.staged_weights() is not None, "model.safetensors was started")
    run.finish(signal.SIGKILL)
    [abandoned] = leftovers(out)
    young = tmp_path / f".{out.name}.partial-young"
    young.mkdir()
    alive = tmp_path / f".{out.name}.partial-alive"
    alive.mkdir()
    holder = os.open(alive, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    hour_ago = time.time() - 3600
    for folder in (tmp_path / abandoned, alive):
        os.utime(folder, (hour_ago, hour_ago))
    try:
        result = run_cli(MLM, out, "--no-verify")
        assert result.returncode == 0, result.stderr
        assert leftovers(out) == sorted([alive.name, young.name])
    finally:
        os.close(holder)
    assert (out / "model.safetensors").is_file()


def test_interrupted_replacement_keeps_the_old_out(tmp_path: Path, big_source: Path) -> None:
    out = tmp_path / "out"
    previous = existing_out(out)
    run = Watcher(big_source, out, "--force")
    run.wait_until(lambda: run.staged_weights() is not None, "the new folder was being written")
    result = run.finish(signal.SIGINT)
    assert_failed_cleanly(result, out, EXIT_INTERRUPTED, "interrupted", previous=previous)


# ---- OUT must never be an input, a link, or the folder the user is in ----------------------------------

def source_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(MLM, src)
    return src


@pytest.mark.parametrize("layout", ["src-as-out", "checkpoint-file-in-out", "out-holds-src", "dict-in-out"])
def test_out_that_is_or_holds_an_input_is_refused_even_with_force(tmp_path: Path, layout: str) -> None:
    src = source_copy(tmp_path)
    before = snapshot(tmp_path)
    args = {
        "src-as-out": (src, src),
        "checkpoint-file-in-out": (src / "model.pt", src),
        "out-holds-src": (src, tmp_path),
        "dict-in-out": (MLM, src, "--dict", src / "dict.txt"),
    }[layout]
    result = run_cli(*args, "--force", "--no-verify")
    assert_one_message(result, EXIT_BAD_INPUT, "input of this conversion")
    assert snapshot(tmp_path) == before, "an input was touched"


def test_force_with_out_the_current_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    previous = existing_out(out)
    result = subprocess.run(command(MLM.resolve(), ".", "--force", "--no-verify"), capture_output=True, text=True,
                            timeout=300, cwd=out)
    assert_failed_cleanly(result, out, EXIT_OUTPUT, "current folder", previous=previous)


def test_out_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere")  # dangling
    result = run_cli(MLM, out, "--no-verify")
    assert_one_message(result, EXIT_OUTPUT, "symbolic link")
    assert out.is_symlink() and not (tmp_path / "nowhere").exists() and leftovers(out) == []
    target = tmp_path / "elsewhere"
    previous = existing_out(target)
    out.unlink()
    out.symlink_to(target)
    result = run_cli(MLM, out, "--no-verify", "--force")
    assert_one_message(result, EXIT_OUTPUT, "symbolic link")
    assert out.is_symlink() and snapshot(target) == previous


def test_names_too_long_for_the_filesystem(tmp_path: Path) -> None:
    out = tmp_path / ("o" * 300)
    result = run_cli(MLM, out, "--no-verify")
    assert_one_message(result, EXIT_OUTPUT, "at most 255")
    assert list(tmp_path.iterdir()) == []
    result = run_cli(tmp_path / ("s" * 300), tmp_path / "out", "--no-verify")
    assert_one_message(result, EXIT_BAD_INPUT)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def mount_point(tmp_path: Path):
    """A real tmpfs mounted at tmp_path/mnt (root only); yields a function mounting it with a size."""
    mounted: list[Path] = []

    def mount(size: int, at: Path | None = None) -> Path:
        where = at or tmp_path / "mnt"
        where.mkdir(exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_force_on_an_out_that_cannot_be_moved(tmp_path: Path, mount_point) -> None:
    out = mount_point(1 << 20, tmp_path / "out")  # a mount point: rename(2) refuses to move it
    (out / "mine.txt").write_text("the user's previous conversion")
    previous = snapshot(out)
    result = run_cli(MLM, out, "--force", "--no-verify")
    assert_failed_cleanly(result, out, EXIT_OUTPUT, "cannot be put in place", previous=previous)


def output_files_in_writing_order(tmp_path: Path, *args: str | Path) -> list[tuple[str, int]]:
    out = tmp_path / "reference-out"
    result = run_cli(*args[:1], out, *args[1:])
    assert result.returncode == 0, result.stderr
    order = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "conversion_report.json", "README.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted(order)
    return [(name, (out / name).stat().st_size) for name in order]


def test_disk_full_at_every_file_of_the_output(tmp_path: Path, mount_point) -> None:
    """A real tmpfs too small for the folder: whichever file fills it, exit 3 and nothing left behind."""
    args = (MLM, "--no-verify", "--encoder-json", GPT2_BPE / "encoder.json", "--vocab-bpe", GPT2_BPE / "vocab.bpe")
    files = output_files_in_writing_order(tmp_path, *args)
    page = 4096
    pages_before = 0
    for name, size in files:
        disk = mount_point(max(pages_before, 1) * page, tmp_path / f"disk-{name}")
        out = disk / "out"
        result = run_cli(args[0], out, *args[1:])
        assert_failed_cleanly(result, out, EXIT_OUTPUT, "disk filled up")
        assert list(disk.iterdir()) == [], f"left on the disk when {name} did not fit"
        pages_before += -(-size // page)


# ---- whatever happens meanwhile, the final move clobbers nothing --------------------------------------

def test_a_folder_that_appears_at_out_meanwhile_is_kept(tmp_path: Path, big_source: Path) -> None:
    out = tmp_path / "out"
    run = Watcher(big_source, out, "--no-verify")
    run.wait_until(lambda: run.staged_weights() is not None, "the new folder was being written")
    out.mkdir()  # empty: a plain rename(2) would replace it silently
    code = run.process.wait(timeout=300)
    run.reader.join(timeout=10)
    result = subprocess.CompletedProcess(run.process.args, code, "", "\n".join(run.lines) + "\n")
    assert_one_message(result, EXIT_OUTPUT, "appeared while converting")
    assert out.is_dir() and list(out.iterdir()) == [] and leftovers(out) == []


def test_two_conversions_to_one_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    runs = [subprocess.Popen(command(MLM, out, "--no-verify"), stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(run.wait(timeout=300) for run in runs)
    messages = [run.stderr.read() for run in runs]
    assert codes[0] == 0, messages
    assert codes[1] in (0, EXIT_OUTPUT), messages  # the second to finish is refused...
    if codes[1] == EXIT_OUTPUT:
        assert any("appeared while converting" in message or "already exists" in message for message in messages)
    assert (out / "model.safetensors").exists() and leftovers(out) == []


def test_force_does_not_replace_a_folder_it_did_not_check(tmp_path: Path, big_source: Path) -> None:
    out = tmp_path / "out"
    existing_out(out)
    run = Watcher(big_source, out, "--no-verify", "--force")
    run.wait_until(lambda: run.staged_weights() is not None, "the new folder was being written")
    shutil.rmtree(out)
    previous = existing_out(out)  # another folder in its place
    code = run.process.wait(timeout=300)
    run.reader.join(timeout=10)
    result = subprocess.CompletedProcess(run.process.args, code, "", "\n".join(run.lines) + "\n")
    assert_failed_cleanly(result, out, EXIT_OUTPUT, "replaced by another folder", previous=previous)


# ---- signals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT], ids=["SIGHUP", "SIGQUIT"])
def test_hangup_and_quit_clean_up_like_ctrl_c(tmp_path: Path, big_source: Path, signum: int) -> None:
    out = tmp_path / "out"
    run = Watcher(big_source, out)
    run.wait_until(lambda: run.staged_weights() is not None, "the new folder was being written")
    result = run.finish(signum)
    assert_failed_cleanly(result, out, EXIT_INTERRUPTED, "interrupted", "nothing was written")


def test_repeated_ctrl_c_does_not_cut_the_cleanup_short(tmp_path: Path, big_source: Path) -> None:
    out = tmp_path / "out"
    run = Watcher(big_source, out, "--no-verify")

    def well_into_the_weights() -> bool:
        weights = run.staged_weights()
        try:
            return weights is not None and weights.stat().st_size >= 64 << 20
        except FileNotFoundError:
            return False

    run.wait_until(well_into_the_weights, "64 MiB of model.safetensors were written")
    deadline = time.monotonic() + 1.0
    while run.process.poll() is None and time.monotonic() < deadline:  # an impatient user
        run.process.send_signal(signal.SIGINT)
        time.sleep(0.002)
    result = run.finish(signal.SIGINT) if run.process.poll() is None else subprocess.CompletedProcess(
        run.process.args, run.process.wait(), "", "")
    run.reader.join(timeout=10)
    result.stderr = "\n".join(run.lines) + "\n"
    assert_failed_cleanly(result, out, EXIT_INTERRUPTED, "interrupted")


@pytest.mark.parametrize("delay", [0.5, 1.0, 2.0])  # after the interpreter itself started
def test_ctrl_c_during_start_up_is_one_line(tmp_path: Path, delay: float) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(command(MLM, out), stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    result = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
    if process.returncode == 0:
        pytest.skip("the conversion finished before the signal")  # a very fast machine
    assert_failed_cleanly(result, out, EXIT_INTERRUPTED, "interrupted")


# ---- options are checked before any work ----------------------------------------------------------------

@pytest.mark.parametrize("option", [("--tolerance", "nan"), ("--tolerance", "-1"), ("--tolerance", "inf"),
                                    ("--max-shard-size", "1e400"), ("--max-shard-size", "0"),
                                    ("--max-shard-size", "-5GB"), ("--head", "x", "--all-heads"),
                                    ("--repo-id", "not a repo id"), ("--language", " ")])
def test_impossible_options_are_refused_before_any_work(tmp_path: Path, option: tuple[str, ...]) -> None:
    out = tmp_path / "out"
    result = run_cli(MLM, out, *option)
    assert_failed_cleanly(result, out, EXIT_BAD_INPUT, option[0].lstrip("-").split("-")[0])
    assert not any(line.startswith("read ") for line in result.stderr.splitlines()), "work had started"


def test_a_repo_id_with_a_newline_is_shown_escaped_on_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(MLM, out, "--repo-id", "user/model\nname")
    assert_failed_cleanly(result, out, EXIT_BAD_INPUT, "argument --repo-id: ", "'user/model\\nname'")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---- batch mode ---------------------------------------------------------------------------------------

def training_run(tmp_path: Path, checkpoints: dict[str, Path | bytes]) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(MLM / "dict.txt", run / "dict.txt")
    for name, content in checkpoints.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (run / name).write_bytes(content)
        else:
            shutil.copy(content, run / name)
    return run


@pytest.mark.parametrize("force", [False, True], ids=["new-out", "force"])
def test_batch_where_every_checkpoint_fails_writes_nothing(tmp_path: Path, force: bool) -> None:
    run = training_run(tmp_path, {"checkpoint1.pt": b"not a checkpoint", "checkpoint2.pt": b"nor this"})
    out = tmp_path / "out"
    previous = existing_out(out) if force else None
    result = run_cli(run, out, "--checkpoint", "checkpoint*.pt", "--no-verify", *(["--force"] if force else []))
    assert_failed_cleanly(result, out, EXIT_BAD_INPUT, "none of the 2 checkpoints converted", previous=previous)


def test_batch_failures_are_said_with_quiet(tmp_path: Path) -> None:
    run = training_run(tmp_path, {"checkpoint1.pt": MLM / "model.pt", "checkpoint2.pt": b"not a checkpoint"})
    out = tmp_path / "out"
    result = run_cli(run, out, "--checkpoint", "checkpoint*.pt", "--no-verify", "--quiet")
    assert result.returncode == EXIT_BAD_INPUT and (out / "checkpoint1" / "model.safetensors").exists()
    assert "converted 1 of 2 checkpoints" in result.stderr and "failed: checkpoint2.pt" in result.stderr
    (tmp_path / "all-bad").mkdir()
    nothing = run_cli(training_run(tmp_path / "all-bad", {"checkpoint1.pt": b"no", "checkpoint2.pt": b"nor this"}),
                      tmp_path / "out2", "--checkpoint", "checkpoint*.pt", "--no-verify", "--quiet")
    assert nothing.returncode == EXIT_BAD_INPUT
    assert "  - checkpoint1.pt: " in nothing.stderr and "  - checkpoint2.pt: " in nothing.stderr


def test_batch_dry_run_writes_nothing(tmp_path: Path) -> None:
    run = training_run(tmp_path, {"checkpoint1.pt": MLM / "model.pt", "checkpoint2.pt": MLM / "model.pt"})
    out = tmp_path / "out"
    result = run_cli(run, out, "--checkpoint", "checkpoint*.pt", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("plan for ") == 2 and not out.exists() and leftovers(out) == []
    assert "planned 2 of 2 checkpoints (--dry-run: nothing written)" in result.stderr and "converted" not in result.stderr


def test_batch_with_an_absolute_pattern_and_checkpoints_sharing_a_name(tmp_path: Path) -> None:
    run = training_run(tmp_path, {"run1/checkpoint_best.pt": MLM / "model.pt",
                                  "run2/checkpoint_best.pt": FIXTURES / "roberta_mlm_fp16" / "model.pt"})
    out = tmp_path / "out"
    result = run_cli(run, out, "--checkpoint", str(run / "run*" / "checkpoint_best.pt"), "--no-verify")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    written = sorted(str(p.relative_to(out)) for p in out.glob("*/*/model.safetensors"))
    assert written == ["run1/checkpoint_best/model.safetensors", "run2/checkpoint_best/model.safetensors"]


def test_batch_in_a_folder_whose_name_looks_like_a_pattern(tmp_path: Path) -> None:
    (tmp_path / "run[1]").mkdir()
    run = training_run(tmp_path / "run[1]", {"checkpoint1.pt": MLM / "model.pt", "checkpoint2.pt": MLM / "model.pt"})
    out = tmp_path / "out"
    result = run_cli(run, out, "--checkpoint", "checkpoint*.pt", "--no-verify", "--quiet")
    assert result.returncode == 0, result.stderr
    assert sorted(p.parent.name for p in out.glob("*/model.safetensors")) == ["checkpoint1", "checkpoint2"]


def test_closed_or_full_standard_streams_keep_the_exit_codes(tmp_path: Path) -> None:
    """`>&-`, `2>&-`, `>/dev/full`: no traceback, the documented code, and a --json report that cannot
    be printed says that the conversion itself is complete."""
    def run(*args, **streams) -> subprocess.CompletedProcess:
        return subprocess.run(command(*args), text=True, timeout=300, **streams)

    closed_stdout = run(MLM, tmp_path / "a", "--json", "--no-verify", stderr=subprocess.PIPE,
                        preexec_fn=lambda: os.close(1))
    assert closed_stdout.returncode == 0 and not closed_stdout.stderr.count("Traceback")
    assert (tmp_path / "a" / "model.safetensors").exists()
    closed_stderr = run(tmp_path / "missing", tmp_path / "b", stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    assert closed_stderr.returncode == EXIT_BAD_INPUT and closed_stderr.stdout == ""
    with open("/dev/full", "w") as full:
        full_stderr = run(tmp_path / "missing", tmp_path / "c", stdout=subprocess.PIPE, stderr=full)
        assert full_stderr.returncode == EXIT_BAD_INPUT and full_stderr.stdout == ""
        full_stdout = run(MLM, tmp_path / "d", "--json", "--no-verify", "--quiet", stdout=full, stderr=subprocess.PIPE)
    assert full_stdout.returncode == EXIT_OUTPUT
    assert full_stdout.stderr.startswith("fairseq-to-hf: error: stdout: cannot be written") and \
        "the conversion is complete" in full_stdout.stderr and full_stdout.stderr.count("\n") == 1
    assert (tmp_path / "d" / "conversion_report.json").exists()


def test_force_replaces_a_folder_inside_src_only_if_a_conversion_wrote_it(tmp_path: Path) -> None:
    """OUT inside the model folder: a new one is written, an earlier conversion's is replaced with --force,
    and a folder of the user's own (fairseq's input0/ of a fine-tuned model, say) is never deleted."""
    src = tmp_path / "src"
    shutil.copytree(MLM, src)
    users = src / "input0"
    users.mkdir()
    (users / "dict.txt").write_text("a 1\n")
    before = snapshot(src)
    result = run_cli(src, users, "--force", "--no-verify", "--quiet")
    assert_one_message(result, EXIT_OUTPUT, f"inside the model folder {src}", "not written by fairseq-to-hf",
                       str(users))
    assert snapshot(src) == before
    assert leftovers(users) == []
    converted = src / "hf"
    assert run_cli(src, converted, "--no-verify", "--quiet").returncode == 0
    again = run_cli(src, converted, "--force", "--no-verify", "--quiet")
    assert again.returncode == 0, again.stderr
    assert (converted / "model.safetensors").exists() and (users / "dict.txt").read_text() == "a 1\n"
    # SRC a checkpoint file: the folder it lies in may be any folder, whose subfolders --force may replace.
    existing_out(tmp_path / "other")
    assert run_cli(MLM / "model.pt", tmp_path / "other", "--force", "--no-verify", "--quiet",
                   "--dict", MLM / "dict.txt").returncode == 0


def exit_code_with_reader_gone(arguments: list[str]) -> int:
    """The exit code of the command line when whoever reads its stdout has stopped before it prints."""
    process = subprocess.Popen([sys.executable, "-m", "fairseq_to_hf", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    process.stdout.close()  # `... --json | head -0`
    return process.wait(timeout=300)


def test_a_reader_that_stops_reading_the_json_does_not_change_the_exit_code(tmp_path: Path) -> None:
    """`verify --json | head`: a model that does not match is still exit 1; a batch with a failure keeps its code."""
    good = tmp_path / "good"
    assert run_cli(MLM, good, "--no-verify", "--quiet").returncode == 0
    wrong = tmp_path / "wrong"
    shutil.copytree(good, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["layer_norm_eps"] = 0.5
    (wrong / "config.json").write_text(json.dumps(config))
    assert exit_code_with_reader_gone(["verify", str(MLM), str(good), "--json", "--quiet"]) == 0
    assert exit_code_with_reader_gone(["verify", str(MLM), str(wrong), "--json", "--quiet"]) == 1
    run = training_run(tmp_path, {"checkpoint1.pt": MLM / "model.pt", "checkpoint2.pt": b"not a checkpoint"})
    batch = ["convert", str(run), str(tmp_path / "batch"), "--checkpoint", "checkpoint*.pt", "--no-verify", "--json",
             "--quiet"]
    assert exit_code_with_reader_gone(batch) == EXIT_BAD_INPUT
    assert (tmp_path / "batch" / "checkpoint1" / "model.safetensors").exists()


def test_force_refuses_an_out_it_could_only_half_remove(tmp_path: Path) -> None:
    """A read-only folder inside the old OUT would leave the old OUT's remains beside the new one."""
    preexec = permissions_apply()
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "kept.txt").write_text("kept")
    (out / "sub").chmod(0o555)
    try:
        result = run_cli(MLM, out, "--force", "--no-verify", preexec=preexec)
        assert_one_message(result, EXIT_OUTPUT, "cannot be replaced", str(out / "sub"))
        assert (out / "sub" / "kept.txt").read_text() == "kept"
        assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    finally:
        (out / "sub").chmod(0o755)
