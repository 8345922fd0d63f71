"""Sentencepiece models trained with options real fairseq users set: converted with fairseq's ids, or refused.

fairseq's ids for a line: [0] + dict.txt's id of each whitespace-separated token of
" ".join(sp.EncodeAsPieces(line)) (<unk> where absent) + [2].
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import sentencepiece

from conftest import FIXTURES
from fairseq_to_hf.reader import read_checkpoint
from test_bad_input import assert_refused, run_cli

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
FIXTURE = FIXTURES / "xlmr_mlm"


def _corpus(path: Path) -> Path:
    generator = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyzàéîõü日本語中文0123456789.,!?-"
    words = ["".join(generator.choice(alphabet) for _ in range(generator.randint(1, 8))) for _ in range(400)]
    lines = [" ".join(generator.choice(words) for _ in range(generator.randint(1, 12))) for _ in range(3000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def model_folder(tmp_path: Path, **options) -> tuple[Path, sentencepiece.SentencePieceProcessor]:
    """xlmr_mlm's checkpoint with a sentencepiece model trained with `options` and its dict.txt."""
    folder = tmp_path / "src"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("sentencepiece.bpe.model", "dict.txt"))
    rows = read_checkpoint(FIXTURE / "model.pt").tensors["encoder.sentence_encoder.embed_tokens.weight"].shape[0]
    lines = rows - len(SPECIALS) - 1  # the task adds <mask>
    options = {"vocab_size": min(lines, 200), **options}
    sentencepiece.SentencePieceTrainer.train(
        input=str(_corpus(tmp_path / "corpus.txt")), model_prefix=str(tmp_path / "spm"), minloglevel=2,
        hard_vocab_limit=False, character_coverage=1.0, **options)
    shutil.copy(tmp_path / "spm.model", folder / "sentencepiece.bpe.model")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))
    pieces = [processor.IdToPiece(i) for i in range(processor.GetPieceSize())
              if not (processor.IsControl(i) or processor.IsUnknown(i) or processor.IsUnused(i))][:lines]
    padding = [f"madeupword{number:04d} 0" for number in range(lines - len(pieces))]
    (folder / "dict.txt").write_text("".join(f"{piece} 1\n" for piece in pieces) + "\n".join(padding) + "\n",
                                     encoding="utf-8")
    return folder, processor


def fairseq_ids(folder: Path, processor, text: str) -> list[int]:
    symbols = [line.rsplit(" ", 1)[0] for line in (folder / "dict.txt").read_text(encoding="utf-8").splitlines()]
    index = {symbol: number for number, symbol in enumerate([*SPECIALS, *symbols])}
    return [0, *(index.get(token, 3) for token in " ".join(processor.EncodeAsPieces(text)).split()), 2]


@pytest.mark.parametrize("options, phrase", [
    ({"byte_fallback": True, "vocab_size": 340}, "spells unknown characters as byte pieces (byte_fallback)"),
    ({"model_type": "bpe", "user_defined_symbols": ["<url>"]}, "has user-defined symbols ('<url>')"),
    ({"user_defined_symbols": ["▁hello"]}, "has user-defined symbols ('▁hello')"),
    ({"treat_whitespace_as_suffix": True}, "puts whitespace at the end of pieces"),
], ids=["byte-fallback", "bpe-user-defined", "user-defined-with-prefix", "whitespace-as-suffix"])
def test_a_model_whose_ids_the_tokenizer_cannot_give_is_refused(tmp_path: Path, options: dict, phrase: str) -> None:
    folder, _ = model_folder(tmp_path, **options)
    out = tmp_path / "out"
    assert_refused(run_cli("convert", folder, out, "--no-verify"), out, 2, phrase, "sentencepiece.bpe.model")


@pytest.mark.parametrize("rule", ["nfkc", "identity", "nmt_nfkc"])
def test_a_text_ending_in_the_whitespace_symbol_gets_fairseqs_ids(tmp_path: Path, rule: str) -> None:
    from transformers import AutoTokenizer

    folder, processor = model_folder(tmp_path, normalization_rule_name=rule)
    out = tmp_path / "out"
    texts = tmp_path / "texts.txt"
    texts.write_text("hello▁\n▁\nabc ▁▁\n▁abc\nab▁cd\n", encoding="utf-8")
    result = run_cli("convert", folder, out, "--verify-text", texts)
    assert result.returncode == 0, result.stderr
    tokenizer = AutoTokenizer.from_pretrained(out)
    for text in texts.read_text(encoding="utf-8").splitlines():
        assert tokenizer(text, split_special_tokens=True)["input_ids"] == fairseq_ids(folder, processor, text), text


def test_a_difference_of_the_normalisers_outside_a_grapheme_cluster_is_not_excused(tmp_path: Path) -> None:
    """With remove_extra_whitespaces off, sentencepiece keeps the dummy prefix of a line whose characters it
    all deletes; the tokenizer gives nothing. That line must fail the verification, not pass as known."""
    folder, processor = model_folder(tmp_path, remove_extra_whitespaces=False)
    assert fairseq_ids(folder, processor, "\x1f") != [0, 2]
    texts = tmp_path / "texts.txt"
    texts.write_text("\x1f\n", encoding="utf-8")
    out = tmp_path / "out"
    assert_refused(run_cli("convert", folder, out, "--verify-text", texts), out, 1)
