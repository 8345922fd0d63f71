"""The source's sha256 is computed by a child process started before torch is imported, and whatever
happens to that child, the model card gets the digest of the file that was converted."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, GPT2_BPE
from fairseq_to_hf import cli, convert, hashing, pipeline
from fairseq_to_hf.errors import CheckpointFormatError
from fairseq_to_hf.hashing import Sha256InChild
from fairseq_to_hf.reader.files import file_identity
from fairseq_to_hf.writer import HashAlongside

MLM = FIXTURES / "roberta_mlm"
MLM_FP16 = FIXTURES / "roberta_mlm_fp16"
BPE = {"encoder_json": GPT2_BPE / "encoder.json", "vocab_bpe": GPT2_BPE / "vocab.bpe"}


def identity_of(path: Path) -> str:
    return file_identity(os.stat(path))


def digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reported_sha256(out: Path) -> str:
    return json.loads((out / "conversion_report.json").read_text())["source"]["sha256"]


def children_of_this_process() -> list[int]:
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        pids += [int(pid) for pid in (task / "children").read_text().split()]
    return pids


@pytest.mark.parametrize("content", [b"", b"x", bytes(range(256)) * 70_001], ids=["empty", "one byte", "17.9 MB"])
def test_the_child_gives_the_files_sha256(content: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "CHUNK", 1 << 20)  # several chunks, the last one short
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with Sha256InChild.start(path) as child:
        assert child.result(identity_of(path)) == hashlib.sha256(content).hexdigest()


def test_the_digest_of_another_file_than_the_one_converted_is_not_taken(tmp_path: Path) -> None:
    hashed, converted = tmp_path / "hashed.pt", tmp_path / "converted.pt"
    shutil.copyfile(MLM / "model.pt", hashed)
    shutil.copyfile(MLM / "model.pt", converted)  # the same bytes, another file
    with Sha256InChild.start(hashed) as child:
        assert child.result(identity_of(converted)) is None
        assert child.result(identity_of(hashed)) == digest_of(hashed)


def test_a_file_rewritten_before_it_was_converted_is_not_the_one_hashed(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    shutil.copyfile(MLM / "model.pt", path)
    with Sha256InChild.start(path) as child:
        child._process.wait()
        path.write_bytes(path.read_bytes()[:-1] + b"!")
        assert child.result(identity_of(path)) is None


def child_done_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child has hashed the checkpoint before the conversion goes on (on a busy machine it may
    otherwise open the file only after a swap, and hash the replacement)."""
    real_start = hashing.background_sha256

    def hashed_at_once(path: Path) -> Sha256InChild | None:
        child = real_start(path)
        child._process.wait()
        return child

    monkeypatch.setattr(hashing, "background_sha256", hashed_at_once)


def swapping(monkeypatch: pytest.MonkeyPatch, when: str, path: Path, replacement: Path) -> None:
    """Replaces the checkpoint at `path` by a copy of `replacement` just before it is read, or just
    after the weights were written (a trainer saving over it, `cp` or `mv` over it)."""
    def swap() -> None:
        shutil.copyfile(replacement, path.with_name("incoming.pt"))
        os.replace(path.with_name("incoming.pt"), path)

    name = {"before reading": "read_checkpoint", "after writing": "write_weights"}[when]
    real = getattr(pipeline, name)

    def swapped(*args, **kwargs):
        if when == "before reading":
            swap()
        result = real(*args, **kwargs)
        if when == "after writing":
            swap()
        return result

    monkeypatch.setattr(pipeline, name, swapped)


def source_folder(tmp_path: Path, checkpoint: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(checkpoint, src / "model.pt")
    shutil.copyfile(MLM / "dict.txt", src / "dict.txt")
    return src


@pytest.mark.parametrize("child", ["child", "no child"])
def test_a_checkpoint_replaced_after_it_was_converted_gets_the_digest_of_the_bytes_converted(
        child: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if child == "no child":
        monkeypatch.setattr(Sha256InChild, "start", classmethod(lambda cls, path: None))
    else:
        child_done_at_once(monkeypatch)
    src = source_folder(tmp_path, MLM / "model.pt")
    swapping(monkeypatch, "after writing", src / "model.pt", MLM_FP16 / "model.pt")
    convert(src, tmp_path / "out", verify=False, **BPE)
    assert reported_sha256(tmp_path / "out") == digest_of(MLM / "model.pt")


def test_a_checkpoint_replaced_while_the_child_hashed_it_gets_the_digest_of_the_bytes_converted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source_folder(tmp_path, MLM / "model.pt")
    swapping(monkeypatch, "before reading", src / "model.pt", MLM_FP16 / "model.pt")
    convert(src, tmp_path / "out", verify=False, **BPE)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"
    assert reported_sha256(tmp_path / "out") == digest_of(MLM_FP16 / "model.pt")


def test_a_checkpoint_converted_then_replaced_and_no_digest_left_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child hashed the file before it was replaced, the conversion read the replacement, and that
    too is gone before the end: no digest of the bytes converted can be had, so nothing is written."""
    src = source_folder(tmp_path, MLM / "model.pt")
    child_done_at_once(monkeypatch)  # it hashed the original before the swap
    swapping(monkeypatch, "before reading", src / "model.pt", MLM_FP16 / "model.pt")
    swapping(monkeypatch, "after writing", src / "model.pt", MLM / "model.pt")
    with pytest.raises(CheckpointFormatError, match="changed while it was being converted"):
        convert(src, tmp_path / "out", verify=False, **BPE)
    assert not (tmp_path / "out").exists()


def test_a_digest_read_in_process_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "_CHILD_CODE", "import sys; sys.exit(3)")
    reads = []
    real = hashing.sha256_of
    monkeypatch.setattr(hashing, "sha256_of", lambda index: (reads.append(index.path), real(index))[1])
    convert(FIXTURES / "roberta_two_heads", tmp_path / "out", verify=False, all_heads=True, **BPE)
    assert len(reads) == 1


@pytest.mark.parametrize("failure", ["exits with an error", "is killed", "prints nonsense"])
def test_a_failed_child_still_gives_the_card_the_right_digest(failure: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    code = {"exits with an error": "import sys; sys.exit(3)",
            "is killed": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            "prints nonsense": "print('0' * 64, 'a', 'a')"}[failure]
    monkeypatch.setattr(hashing, "_CHILD_CODE", code)
    convert(MLM, tmp_path / "out", verify=False)
    assert reported_sha256(tmp_path / "out") == digest_of(MLM / "model.pt")


def test_where_no_child_can_start_the_writers_pass_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "")
    hashed = []
    real_update = HashAlongside.update
    monkeypatch.setattr(HashAlongside, "update",
                        lambda self, piece, done=None: (hashed.append(len(piece)), real_update(self, piece, done)))
    convert(MLM, tmp_path / "out", verify=False)
    assert reported_sha256(tmp_path / "out") == digest_of(MLM / "model.pt")
    assert sum(hashed) == (MLM / "model.pt").stat().st_size


def test_with_a_child_the_pass_does_not_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HashAlongside, "update", lambda *args, **kwargs: pytest.fail("hashed in the pass"))
    convert(MLM, tmp_path / "out", verify=True)
    assert reported_sha256(tmp_path / "out") == digest_of(MLM / "model.pt")


def test_the_command_line_starts_hashing_before_it_imports_torch(tmp_path: Path) -> None:
    probe = f"""
import sys
from fairseq_to_hf import cli, hashing
started = []
real_start = hashing.Sha256InChild.start.__func__
hashing.Sha256InChild.start = classmethod(lambda cls, path: (started.append(("torch" in sys.modules, str(path))),
                                                              real_start(cls, path))[1])
code = cli.main(["convert", {str(MLM)!r}, {str(tmp_path / "out")!r}, "--no-verify", "--quiet"])
print(code, started)
"""
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == f"0 [(False, {str(MLM / 'model.pt')!r})]"
    assert reported_sha256(tmp_path / "out") == digest_of(MLM / "model.pt")


@pytest.mark.parametrize("case", ["bad input", "dry run", "converted"])
def test_no_child_is_left_running(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(MLM / "model.pt", src / "model.pt")
    if case != "bad input":  # without dict.txt, refused after the hash started
        shutil.copyfile(MLM / "dict.txt", src / "dict.txt")
    args = ["convert", str(src), str(tmp_path / "out"), "--no-verify", "--quiet"]
    code = cli.main(args + (["--dry-run"] if case == "dry run" else []))
    assert code == (2 if case == "bad input" else 0), capsys.readouterr().err
    assert hashing._early is None
    assert children_of_this_process() == []


def test_the_child_stops_when_its_parent_dies(tmp_path: Path) -> None:
    """A parent killed outright cannot stop its child: the child sees it gone and stops by itself
    (here within seconds, where hashing the whole sparse file would take a minute)."""
    huge = tmp_path / "huge.pt"
    with open(huge, "wb") as file:
        file.truncate(64 << 30)
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fairseq_to_hf.hashing import Sha256InChild; "
                               f"child = Sha256InChild.start({str(huge)!r}); print(child._process.pid, flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process_state(child_pid) not in (None, "Z"):  # Z: ended, not yet reaped
        time.sleep(0.05)
    assert process_state(child_pid) in (None, "Z")


def process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def test_a_fifo_in_place_of_the_file_ends_the_child_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with Sha256InChild.start(fifo) as child:
        assert child._process.wait(timeout=60) != 0
        assert child.result(identity_of(fifo)) is None


def test_a_checkpoint_truncated_while_hashed_ends_the_child_without_a_core_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where a core file would go
    huge = tmp_path / "model.pt"
    with open(huge, "wb") as file:
        file.truncate(64 << 30)
    with Sha256InChild.start(huge) as child:
        time.sleep(0.3)
        os.truncate(huge, 1 << 20)
        # exit 1 where MADV_POPULATE_READ saw the file end, SIGBUS where it ended right after
        assert child._process.wait(timeout=120) in (1, -signal.SIGBUS)
        assert child.result(identity_of(huge)) is None
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith("core")]
