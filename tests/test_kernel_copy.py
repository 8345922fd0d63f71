"""The one-pass writer (tensor bytes copied inside the kernel, every check fed by one read of the source)
writes exactly the files of the tensor-by-tensor path, and still refuses damaged or non-finite weights."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import time
from collections import Counter, OrderedDict
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import FIXTURES, GPT2_BPE
from fairseq_to_hf import convert, hashing, writer
from fairseq_to_hf.errors import CheckpointFormatError, ConversionError
from fairseq_to_hf.hashing import HashAlongside
from fairseq_to_hf.plan import list_heads
from fairseq_to_hf.reader.checkpoint import read_checkpoint
from test_bad_input import edited_mlm_checkpoint

MODELS = sorted(path.parent.name for path in FIXTURES.glob("*/model.pt"))
SENTENCEPIECE = FIXTURES / "xlmr_mlm" / "sentencepiece.bpe.model"


@pytest.fixture
def kernel_copies(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Bytes copied by os.copy_file_range (the real call, counted)."""
    copied: Counter = Counter()
    real = os.copy_file_range

    def counting(*args, **kwargs):
        count = real(*args, **kwargs)
        copied["bytes"] += count
        return count

    monkeypatch.setattr(os, "copy_file_range", counting)
    return copied


def tokenizer_files(fixture: str) -> dict[str, Path]:
    """The tokenizer of each fixture: its alias ids give the embeddings and the LM bias extra rows."""
    if fixture.startswith(("xlmr", "xmod", "camembert")):
        return {"sentencepiece_model": SENTENCEPIECE}
    if read_checkpoint(FIXTURES / fixture / "model.pt").bpe.get("_name") in (None, "gpt2"):
        return {"encoder_json": GPT2_BPE / "encoder.json", "vocab_bpe": GPT2_BPE / "vocab.bpe"}
    return {}  # the model folder ships its own BPE files


def convert_fixture(fixture: str, out: Path, one_pass: bool, monkeypatch: pytest.MonkeyPatch, **options) -> None:
    monkeypatch.setattr(writer, "_ONE_PASS", one_pass)
    heads = list_heads(read_checkpoint(FIXTURES / fixture / "model.pt"))
    options.setdefault("verify", False)
    if fixture == "xmod_prenorm":  # no en_XX among its languages
        options.setdefault("default_language", "de_DE")
    convert(FIXTURES / fixture, out, all_heads=len(heads) > 1, **tokenizer_files(fixture), **options)


def written_weights(out: Path) -> dict[str, bytes]:
    """Every safetensors file and index under `out`, by relative path, and the source sha256 reported."""
    files = {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*"))
             if path.name.endswith(".safetensors") or path.name == writer.INDEX_FILE}
    files.update({f"sha256 in {path.relative_to(out)}": json.loads(path.read_text())["source"]["sha256"].encode()
                  for path in out.rglob("conversion_report.json") if "source" in json.loads(path.read_text())})
    return files


def unchanged_bytes(out: Path) -> int:
    """Bytes of the tensors under `out` without rows past fairseq's vocabulary (alias rows)."""
    total = 0
    for path in out.rglob("model*.safetensors"):
        config = json.loads((path.parent / "config.json").read_text())
        report = json.loads((path.parent / "conversion_report.json").read_text())
        aliases = (report.get("tokenizer") or {}).get("alias_count", 0)
        with safe_open(path, "pt") as tensors:
            for name in tensors.keys():
                tensor = tensors.get_slice(name)
                shape = tensor.get_shape()
                if not (aliases and shape and shape[0] == config["vocab_size"]):
                    total += math.prod(shape) * {"F32": 4, "F16": 2, "BF16": 2}[tensor.get_dtype()]
    return total


def cast_for(fixture: str) -> str:
    return "float32" if fixture.endswith("fp16") else "float16"


@pytest.mark.parametrize("fixture", MODELS)
@pytest.mark.parametrize("variant", ["as stored", "cast and sharded"])
def test_one_pass_writes_the_files_of_the_tensor_by_tensor_path(fixture: str, variant: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                kernel_copies: Counter) -> None:
    options = {} if variant == "as stored" else {"dtype": cast_for(fixture), "max_shard_size": "20KB"}
    convert_fixture(fixture, tmp_path / "before", False, monkeypatch, **options)
    assert not kernel_copies
    convert_fixture(fixture, tmp_path / "one_pass", True, monkeypatch, **options)
    before, one_pass = written_weights(tmp_path / "before"), written_weights(tmp_path / "one_pass")
    assert any(name.endswith(".safetensors") for name in before)
    if variant != "as stored":
        assert any(name.endswith(".index.json") for name in before)
    assert before.keys() == one_pass.keys()
    for name in before:
        assert one_pass[name] == before[name], f"{fixture} {variant}: {name} differs"
    if variant == "as stored":
        # Most tensors go through the kernel (those with alias rows, the embeddings and LM bias, do not;
        # nor do the few made here: token type embeddings, computed position tables).
        assert kernel_copies["bytes"] > unchanged_bytes(tmp_path / "one_pass") // 2


def test_one_pass_feeds_the_verification_and_copies_in_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  kernel_copies: Counter) -> None:
    convert_fixture("roberta_mlm", tmp_path / "before", False, monkeypatch, verify=True)
    convert_fixture("roberta_mlm", tmp_path / "one_pass", True, monkeypatch, verify=True)
    assert written_weights(tmp_path / "one_pass") == written_weights(tmp_path / "before")
    assert kernel_copies["bytes"] > 0
    report = json.loads((tmp_path / "one_pass" / "conversion_report.json").read_text())
    assert report["outputs"][0]["verification"]["passed"]


def damaged_copy(fixture: str, folder: Path, tensor: str) -> Path:
    """The fixture folder with one byte of `tensor`'s stored bytes flipped (its CRC-32 left as it was)."""
    shutil.copytree(FIXTURES / fixture, folder)
    lazy = read_checkpoint(folder / "model.pt").tensors[tensor]
    start, _ = lazy.storage.index.locations[lazy.storage.key]
    data = bytearray((folder / "model.pt").read_bytes())
    data[start + lazy.storage_range[0] + 7] ^= 0x10
    (folder / "model.pt").write_bytes(bytes(data))
    return folder


@pytest.mark.parametrize("tensor", ["encoder.sentence_encoder.layers.1.fc1.weight",
                                    "encoder.sentence_encoder.layers.0.self_attn.q_proj.weight"])
def test_a_damaged_storage_is_refused_on_the_one_pass_path(tensor: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           kernel_copies: Counter) -> None:
    src = damaged_copy("roberta_mlm", tmp_path / "src", tensor)
    out = tmp_path / "out"
    with pytest.raises(CheckpointFormatError, match="is damaged \\(its CRC-32 does not match\\)"):
        convert(src, out, verify=False)
    assert kernel_copies["bytes"] > 0  # tensors before the damaged one were copied in the kernel
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["src"]


def test_non_finite_weights_are_refused_on_the_one_pass_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             kernel_copies: Counter) -> None:
    def edit(state: OrderedDict) -> None:
        state["encoder.sentence_encoder.layers.1.fc1.weight"][-1, -1] = float("nan")
        state["encoder.sentence_encoder.layers.0.fc2.weight"][0, 0] = float("-inf")

    src = edited_mlm_checkpoint(tmp_path / "src", edit)
    refusals = {}
    for one_pass in (False, True):
        monkeypatch.setattr(writer, "_ONE_PASS", one_pass)
        with pytest.raises(ConversionError, match="2 source tensors hold NaN or Inf values") as caught:
            convert(src, tmp_path / "out", verify=False)
        refusals[one_pass] = caught.value.details
        assert not (tmp_path / "out").exists()
    assert refusals[True] == refusals[False]
    assert kernel_copies["bytes"] > 0
    convert(src, tmp_path / "out", verify=False, allow_non_finite=True)
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_where_the_kernel_cannot_copy_the_bytes_are_written_from_user_space(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    refused: Counter = Counter()

    def across_filesystems(*args, **kwargs):
        refused["calls"] += 1
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    convert_fixture("roberta_legacy_v09", tmp_path / "before", False, monkeypatch)
    monkeypatch.setattr(os, "copy_file_range", across_filesystems)
    convert_fixture("roberta_legacy_v09", tmp_path / "one_pass", True, monkeypatch)
    assert written_weights(tmp_path / "one_pass") == written_weights(tmp_path / "before")
    assert refused["calls"] == 1  # not asked again once refused


def test_the_pass_checks_ahead_while_the_kernel_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass must not stop after the region following the one being copied, or checking and
    copying take turns instead of overlapping: while the first copy is held, it goes on three regions
    (or to the last one)."""
    import threading
    import time

    scanned: Counter = Counter()
    real_scan, real_write, real_copy = writer._OnePass._scan, writer._OnePass.write, os.copy_file_range

    def counting_scan(self, *args, **kwargs):
        if scanned["regions"]:
            time.sleep(0.02)  # a slow pass: the writer's first copy starts before it is far on
        result = real_scan(self, *args, **kwargs)
        scanned["regions"] += 1
        return result

    def counting_write(self, *args, **kwargs):
        scanned["total"] = len(self.regions)
        return real_write(self, *args, **kwargs)

    ahead_during_first_copy = []

    def waiting_copy(*args, **kwargs):
        if not ahead_during_first_copy:  # hold the first copy until the pass is 3 regions further on
            seen = scanned["regions"]
            wanted = min(seen + 3, scanned["total"])
            deadline = time.monotonic() + 10
            while scanned["regions"] < wanted and time.monotonic() < deadline:
                time.sleep(0.001)
            ahead_during_first_copy.append((scanned["regions"] - seen, wanted - seen))
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(writer._OnePass, "_scan", counting_scan)
    monkeypatch.setattr(writer._OnePass, "write", counting_write)
    monkeypatch.setattr(os, "copy_file_range", waiting_copy)
    convert_fixture("roberta_mlm", tmp_path / "out", True, monkeypatch)
    assert not any(thread.name == "source-pass" for thread in threading.enumerate())  # joined
    assert scanned["total"] > 3
    (ahead, wanted), = ahead_during_first_copy[:1]
    assert wanted == 3 and ahead >= wanted, (ahead, wanted)


def test_verification_takes_the_values_without_copying_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference gets the pass's values on mappings of the source, and the block-by-block model maps
    OUT's tensors where the writer left them: neither reads into buffers of its own."""
    from fairseq_to_hf.verify import streamed_model

    buffers: Counter = Counter()
    real_buffer, real_pread = writer._OnePass._buffer, streamed_model.pread_fully

    def counting_buffer(self, nbytes):
        buffers["pass"] += 1
        return real_buffer(self, nbytes)

    def counting_pread(*args, **kwargs):
        buffers["verification"] += 1
        return real_pread(*args, **kwargs)

    monkeypatch.setattr(writer._OnePass, "_buffer", counting_buffer)
    monkeypatch.setattr(streamed_model, "pread_fully", counting_pread)
    convert_fixture("roberta_mlm", tmp_path / "mapped", True, monkeypatch, verify=True, verify_streamed=True)
    assert not buffers
    report = json.loads((tmp_path / "mapped" / "conversion_report.json").read_text())
    assert report["outputs"][0]["verification"]["passed"]
    assert report["outputs"][0]["verification"]["loaded_with"] == "block by block"


def test_where_nothing_can_be_mapped_verification_reads_the_bytes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from fairseq_to_hf.verify import streamed_model

    convert_fixture("roberta_mlm", tmp_path / "mapped", True, monkeypatch)
    monkeypatch.setattr(writer._MappedSource, "held", lambda self, start, end: None)
    monkeypatch.setattr(streamed_model, "_mapped", lambda *args: None)
    convert_fixture("roberta_mlm", tmp_path / "read", True, monkeypatch, verify=True, verify_streamed=True)
    assert written_weights(tmp_path / "read") == written_weights(tmp_path / "mapped")
    report = json.loads((tmp_path / "read" / "conversion_report.json").read_text())
    assert report["outputs"][0]["verification"]["passed"]


@pytest.mark.parametrize("verify", [False, True], ids=["no-verify", "verified"])
@pytest.mark.parametrize("source", ["mapped", "read", "cast"])
def test_the_reported_sha256_is_that_of_the_checkpoint_file(verify: bool, source: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no child process hashes the file, the pass computes the sha256 on a thread of its own, from
    pieces still held until hashed: many small pieces must be hashed whole and in file order, whether
    they lie on the mapping, were read into buffers of their own, or into the (pooled, reused) buffers
    of tensors the writer casts."""
    import hashlib

    monkeypatch.setattr(hashing.Sha256InChild, "start", classmethod(lambda cls, path: None))
    hashed_in_pass = Counter()
    real_update = HashAlongside.update
    monkeypatch.setattr(HashAlongside, "update",
                        lambda self, piece, done=None: (hashed_in_pass.update(bytes=len(piece)),
                                                        real_update(self, piece, done)))
    monkeypatch.setattr(writer, "SCAN_CHUNK", 4096)
    if source in ("read", "cast"):
        monkeypatch.setattr(writer._MappedSource, "held", lambda self, start, end: None)
    if source == "read":
        monkeypatch.setattr(writer._MappedSource, "_mapped", lambda self, start, end: None)
    options = {}
    if source == "cast":
        options["dtype"] = "float16"
        # A hasher that lags: a buffer given back to the pool before its pieces are hashed would be
        # hashed with another region's bytes in it.
        monkeypatch.setattr(writer.BufferPool, "MIN_BYTES", 0)  # the fixture's tensors are small
        hash_piece = HashAlongside._hash
        monkeypatch.setattr(HashAlongside, "_hash", lambda self, *args: (time.sleep(0.002), hash_piece(self, *args)))
    convert_fixture("roberta_mlm", tmp_path / "out", True, monkeypatch, verify=verify, **options)
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    checkpoint = FIXTURES / "roberta_mlm" / "model.pt"
    assert report["source"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert hashed_in_pass["bytes"] == checkpoint.stat().st_size
