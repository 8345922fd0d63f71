"""Make the tokenizer fixtures of fairseq's other BPE kinds with the real fairseq (dev-only).

Run from the repository root with the interpreter of the fairseq venv (the one of
make_fixtures.py, plus `fastBPE`, `subword-nmt`, `tokenizers` and `transformers<5`, whose
slow BertTokenizer fairseq's bert BPE runs):

    /path/to/venv-fairseq/bin/python tools/make_tokenizer_fixtures.py [--only NAME ...]

It adds four tiny RoBERTa folders to tests/fixtures/ (with --only, just the named ones; it never
touches the other fixtures), each laid out like the real releases of that BPE kind:

* `phobert_fastbpe/` (PhoBERT / BERTweet style): `model.pt`, `dict.txt`, `bpe.codes`. The merges
  are learned with `subword-nmt learn-bpe` on corpus A and written in fastBPE's format (`a b count`
  lines, no `#version` header, the count being the pair frequency that subword-nmt reports with
  --verbose), the training data is encoded by fairseq's own `fastbpe` encoder, dict.txt is built
  by fairseq-preprocess from it, and the model is trained with `--bpe fastbpe --bpe-codes ...`
  so that cfg["bpe"] records it as such a training run does.
* `roberta_subword_nmt/`: the same with `--bpe subword_nmt` and subword-nmt's own codes file
  (with its `#version: 0.2` header), named `bpecodes` as fairseq's hub looks for it
  (hub_utils.from_pretrained maps `code` and `bpecodes` to --bpe-codes). Fewer merges than the
  fastBPE one, so the two folders differ.
* `gottbert_hf_byte_bpe/` (GottBERT style): `vocab.json` + `merges.txt` trained with
  `tokenizers.ByteLevelBPETokenizer` on corpus A, `--bpe hf_byte_bpe` with
  bpe_add_prefix_space False (GottbertModel.from_pretrained's default; what GottBERT's own
  training used is not recorded anywhere we could read), data encoded by fairseq's hf_byte_bpe
  encoder, dict.txt (HF ids written as strings) from fairseq-preprocess.
* `roberta_bert_wordpiece/`: `vocab.txt` trained with `tokenizers.BertWordPieceTokenizer` on
  corpus A (uncased, BERT's five specials first), `--bpe bert --bpe-vocab-file vocab.txt`
  (bpe_cased false, fairseq's default), data encoded by fairseq's bert encoder (transformers'
  slow BertTokenizer), dict.txt (WordPiece pieces) from fairseq-preprocess. encode_cases.json
  also records what the same encoder gives with bpe_cased true (`cased_bpe`), which no model
  of this folder was trained on: a check of the cased pipeline's pieces.

Corpus A (the BPE) and corpus B (dict.txt and the model) are different text from
fixture_text.py (stdlib docstrings, gettext catalogs in ~25 languages, a few French lines with
non-breaking spaces before punctuation), and dict.txt keeps only the most frequent symbols
(fairseq-preprocess --nwordssrc), so many BPE pieces are not in dict.txt (<unk>), as in real
fine-tuned dicts. The models are trained for a few updates with `fairseq-train --cpu` (masked_lm,
roberta_base with the tiny sizes of all fixtures: fixture_fairseq.train_mlm, as make_fixtures.py
trains its masked LMs), so no LayerNorm is the identity.

Recorded with fairseq's hub interface (RobertaModel.from_pretrained with the BPE files passed
explicitly), in every folder:

* `fairseq_outputs.safetensors` + `fairseq_outputs.json`: exactly as make_fixtures.py records
  them (fixture_fairseq.record_outputs: samples s0, s2, s3 and a right-padded batch), with the
  json's "tokenizer" entry naming the BPE kind, its files and options, and the checkpoint's
  cfg["bpe"].
* `encode_cases.json`: `roberta.bpe.encode(line)` and `roberta.encode(line)` for ~390 varied
  lines (many scripts, emoji incl. ZWJ sequences and flags, URLs, @mentions/#hashtags, odd
  whitespace, control and zero-width characters, very long words, empty lines) and ~40 pairs,
  which lines hit <unk>, the BPE pieces missing from dict.txt, `roberta.fill_mask` results, and
  for the two `@@` kinds a study of odd whitespace: fairseq's ids against two models of OUR OWN
  (labelled as such in the file), "split on any whitespace, BPE each word" and "split on ' ' only,
  BPE each word, then fairseq's whitespace split of the joined pieces".
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ in tools/
import fixture_bpe  # noqa: E402
import fixture_fairseq as ff  # noqa: E402  (sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)
import fixture_text  # noqa: E402

FIXTURES = ff.FIXTURES
SEED = ff.SEED

# Merges learned by subword-nmt (the two '@@' kinds) and the byte-level vocabulary size (256
# bytes, 5 specials, then merges). dict.txt keeps DICT_WORDS symbols, the 4 specials included
# (fairseq-preprocess --nwordssrc): small, because the recorded logits grow with it.
FASTBPE_MERGES = 600
SUBWORD_NMT_MERGES = 450
HF_VOCAB_SIZE = 800
WORDPIECE_VOCAB_SIZE = 900
DICT_WORDS = {"phobert_fastbpe": 700, "roberta_subword_nmt": 600, "gottbert_hf_byte_bpe": 600,
              "roberta_bert_wordpiece": 600}
# Corpus B: English plus a few of corpus A's languages (other messages), Vietnamese as for
# PhoBERT; dict.txt lacks the other scripts' pieces.
MODEL_LANGUAGES = {"vi", "fr", "de", "ru", "el"}
HF_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as RoBERTa's
HF_ADD_PREFIX_SPACE = False  # GottbertModel.from_pretrained's default
PAIRS = 40

BERT_VOCAB = "vocab.txt"  # the name BertTokenizer's own folders give it
BERT_HIDDEN_SPECIALS = ["[MA\u200bSK] x", "[MASK\u00ad]", "[MAS\u212a]", "([MA\u200bSK])", "[CLS\ufeff]",
                        "[UN\u200dK] [SEP]", "x[MASK]y", "[mask]"]
FASTBPE_CODES = "bpe.codes"  # PhoBERT's and BERTweet's name (passed explicitly to the hub)
SUBWORD_NMT_CODES = "bpecodes"  # a name fairseq's hub finds by itself

DESCRIPTIONS = {
    "phobert_fastbpe": "post-norm masked LM on fastBPE pieces (PhoBERT/BERTweet style: `bpe.codes` "
                       "in fastBPE's `a b count` format, no header; cfg bpe=fastbpe); dict.txt "
                       f"lacks many pieces (--nwordssrc {DICT_WORDS['phobert_fastbpe']})",
    "roberta_subword_nmt": "post-norm masked LM on subword-nmt pieces (`bpecodes` with its "
                           "`#version: 0.2` header; cfg bpe=subword_nmt, bpe_separator @@); "
                           f"dict.txt lacks many pieces (--nwordssrc {DICT_WORDS['roberta_subword_nmt']})",
    "gottbert_hf_byte_bpe": "post-norm masked LM on byte-level BPE ids (GottBERT style: "
                            "`vocab.json` + `merges.txt` from tokenizers.ByteLevelBPETokenizer; "
                            "cfg bpe=hf_byte_bpe, bpe_add_prefix_space false); dict.txt lists HF "
                            f"ids as strings and lacks many (--nwordssrc {DICT_WORDS['gottbert_hf_byte_bpe']})",
    "roberta_bert_wordpiece": "post-norm masked LM on BERT WordPiece pieces (`vocab.txt` from "
                              "tokenizers.BertWordPieceTokenizer, uncased; cfg bpe=bert, bpe_cased "
                              "false); dict.txt lacks many pieces (--nwordssrc "
                              f"{DICT_WORDS['roberta_bert_wordpiece']})",
}

# French typography puts a (narrow) no-break space before : ; ! ? -- kept in corpus A so the
# merges contain symbols with U+00A0 / U+202F (a codes line must be split on ' ' only).
NBSP_LINES = [
    "Fichier\u00a0: introuvable", "Erreur\u00a0: accès refusé", "Attention\u00a0! Disque plein",
    "Voulez-vous continuer\u00a0?", "Nom\u00a0: valeur\u00a0; type\u00a0: texte",
    "Terminé\u202f!", "Pourquoi\u202f?", "Options\u00a0: aucune",
]
NBSP_WEIGHT = 12

# Hand-written cases on top of fixture_text.EDGE_CASES and SPM_EDGE_CASES.
TOKENIZER_EDGE_CASES = [
    # BERTweet-style tweets and web text
    "@user123 thanks for the follow! #blessed #TBT",
    "RT @someone: so good 😂😂😂 #win http://t.co/AbC123xyz",
    "HTTPURL @USER :) :-( ;) <3 xD",
    "https://www.example.com/path/to/page.html?query=1&lang=vi#section-2",
    "ftp://files.example.org/pub/linux-6.1.tar.xz and www.example.net",
    "mail me at first.last+tag@example.co.uk!",
    "#HashTag#NoSpace@mention@twice",
    # PhoBERT-style (word-segmented Vietnamese, syllables joined by '_')
    "Tôi là sinh_viên trường đại_học Công_nghệ .",
    "Hà_Nội là thủ_đô của Việt_Nam .",
    "Xin chào thế giới, đây là một câu tiếng Việt có dấu: ắ ằ ẳ ẵ ặ ấ ầ ẩ ẫ ậ.",
    "Ông Nguyễn Văn A đã đến Thành_phố Hồ_Chí_Minh vào năm 2020 .",
    # emoji
    "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, 🏴‍☠️ pirate",
    "flags 🇻🇳🇩🇪🇺🇸🇯🇵 and keycaps 1️⃣ #️⃣",
    "skin tones 👋🏻👋🏼👋🏽👋🏾👋🏿",
    "❤️‍🔥 heart on fire ✨",
    # digits and punctuation runs
    "1234567890123456789012345678901234567890",
    "3.141592653589793 2,718 1_000_000 ½ ¾ ①②③",
    "!!!???...,,,;;;:::---___===+++***&&&%%%$$$###@@@",
    "(((nested))) [[[brackets]]] {{{braces}}} <<<angles>>>",
    "“curly quotes” ‘single’ «guillemets» „German“ — em – en … ellipsis",
    # the separators and markers of the BPE files, as text
    "a@@ b@@ c",
    "@@",
    "foo@@bar @@baz qux@@",
    "end</w> word </w>",
    "#version: 0.2",
    "madeupword0000 <mask> <unk>",
    # whitespace
    "tab\there",
    "\ttab first",
    "trailing tab\t",
    "a \t b",
    " \t mixed \n ",
    "line1\nline2\nline3",
    "\n leading newline",
    "trailing newline\n",
    "CR only\rhere",
    "CRLF at end\r\n",
    "word\x0bvertical\x0cform",
    "NEL\x85here",
    "non\u00a0breaking\u00a0space",
    "Fichier\u00a0: trouvé",
    "Terminé\u202f! Pourquoi\u202f?",
    "\u00a0leading nbsp",
    "\u00a0",
    "\u3000",
    "\t",
    "\r",
    "\x85",
    "  \u00a0  ",
    "ideographic\u3000space and en\u2002em\u2003quads",
    "  double  spaces  ",
    "separators\x1cfile\x1dgroup\x1erecord\x1funit",
    # zero-width and control characters
    "zero\u200bwidth space",
    "\ufeffBOM at start",
    "word\u2060joiner and soft\u00adhyphen",
    "\x00",
    "nul\x00inside",
    "bell\x07 backspace\x08 escape\x1b[31mred\x1b[0m delete\x7f",
    "\u200b",
    # very long words
    "a" * 250,
    "Donaudampfschifffahrtsgesellschaftskapitän" * 5,
    "supercalifragilisticexpialidocious-" * 6 + "end",
    "ĐườngNguyễnHuệ" * 16,
    "http://example.com/" + "very-long-path-segment/" * 10,
]

# Our reading of fairseq's encode for the two '@@' kinds, checked line by line against it.
_COMMON = ("Pieces: every word's BPE (characters, '</w>' appended to the last one, repeatedly "
           "merge the adjacent pair of lowest rank = line number in the codes, all its "
           "non-overlapping occurrences left to right, until no adjacent pair is in the codes; "
           "strip the final '</w>'), '@@' appended to every piece but the word's last, pieces "
           "joined by ' '. fairseq's Dictionary.encode_line then replaces runs of any whitespace "
           "(re \\s+, so also \\t \\n \\r \\x0b \\x0c \\x1c-\\x1f \\x85 \\xa0 "
           "\\u3000 ...) by ' ', strips, splits on ' ' and looks every piece up in dict.txt "
           "(<unk> if absent): a whitespace character inside a word thus cuts a piece in two, "
           "and a piece that was only whitespace plus '@@' becomes the token '@@'.")
EXACT_MODELS = {
    "fastbpe": "fastBPE.apply: split the line on ' ' only, empty words dropped (nothing is "
               "stripped; every other whitespace character is a character of its word). "
               "Characters are UTF-8 sequences, split only up to the first NUL byte: the "
               "character before a NUL and everything after it form ONE symbol. " + _COMMON,
    "subword_nmt": "apply_bpe.BPE.process_line: strip ' ', '\\r', '\\n' (only these) off "
                   "both ends of the line, split on ' ' only, empty words dropped. A word of "
                   "one character is kept as is. " + _COMMON,
}

# Hand-written pairs on top of held-out ones.
EDGE_PAIRS = [
    ("", ""), ("", "Hello world"), ("Hello world", ""), (" leading", "trailing "),
    ("Line one.\nLine two.", "Tab\tseparated"), ("@user hi", "#tag"), ("Xin chào", "Tạm biệt"),
    ("😀", "👨‍👩‍👧"), ("a\u00a0b", "c\u3000d"), ("   ", "\t"),
]


# --------------------------------------------------------------------------- text


def corpora() -> tuple[list[str], list[str], list[str], list[str], list[tuple[str, str]]]:
    """Corpus A (BPE), corpus B train/valid (dict.txt, model), encode lines, pairs."""
    english = fixture_text.load_corpora(seed=0)
    multilingual = fixture_text.load_multilingual(english, seed=0)
    bpe_corpus = (multilingual.spm + english.bpe[300:2300] + english.accented
                  + NBSP_LINES * NBSP_WEIGHT)
    model_train = ([text for lang, text in multilingual.model_train if lang in MODEL_LANGUAGES]
                   + english.model_train[600:3600])
    random.Random(SEED).shuffle(model_train)
    model_valid = [text for lang, text in multilingual.model_valid if lang in MODEL_LANGUAGES]

    rng = random.Random(SEED)
    held = [text for _, text in multilingual.held_out]
    lines = (english.held_out[:60] + held[::2] + fixture_text.EDGE_CASES
             + fixture_text.SPM_EDGE_CASES + TOKENIZER_EDGE_CASES
             + [fixture_text.long_line(english.held_out)]
             + [ff.random_text(rng) for _ in range(12)])
    lines = list(dict.fromkeys(lines))  # unique, order kept
    pairs = [(english.held_out[100 + 2 * i], english.held_out[101 + 2 * i]) for i in range(15)]
    pairs += [(held[1 + 2 * i], held[-2 - 2 * i]) for i in range(PAIRS - 15 - len(EDGE_PAIRS))]
    pairs += EDGE_PAIRS
    return bpe_corpus, model_train, model_valid, lines, pairs


# --------------------------------------------------------------------------- BPE files


def learn_subword_nmt(corpus: Path, merges: int, work: Path) -> tuple[Path, list[tuple[str, str, int]]]:
    """subword-nmt learn-bpe; returns its codes file and (left, right, pair frequency) rows,
    the frequencies read from its --verbose log."""
    codes = work / f"subword_nmt_{merges}.codes"
    log = work / "logs" / f"learn_bpe_{merges}.log"
    log.parent.mkdir(exist_ok=True)
    with corpus.open("rb") as stdin, codes.open("wb") as stdout, log.open("wb") as stderr:
        done = subprocess.run([ff.cli("subword-nmt"), "learn-bpe", "-s", str(merges), "--verbose"],
                              stdin=stdin, stdout=stdout, stderr=stderr,
                              env=dict(os.environ, TQDM_DISABLE="1"))
    if done.returncode != 0:
        sys.exit(f"subword-nmt learn-bpe failed:\n{log.read_text()[-3000:]}")
    # Symbols hold no ' ' and no line break, but may hold other whitespace (U+00A0): not \S.
    pattern = re.compile(r"pair (\d+): ([^ \r\n]+) ([^ \r\n]+) -> [^ \r\n]+ \(frequency (\d+)\)\n")
    rows = [(found[2], found[3], int(found[4]))
            for found in pattern.finditer(log.read_text(encoding="utf-8"))]
    assert [int(found[1]) for found in pattern.finditer(log.read_text(encoding="utf-8"))] \
        == list(range(len(rows)))
    code_lines = codes.read_text(encoding="utf-8").split("\n")
    assert code_lines[0] == "#version: 0.2", code_lines[0]
    merged = [tuple(line.split(" ")) for line in code_lines[1:] if line]
    assert merged == [(a, b) for a, b, _ in rows], "verbose log and codes disagree"
    return codes, rows


def write_fastbpe_codes(rows: list[tuple[str, str, int]], path: Path) -> None:
    """fastBPE's codes format (what its learnbpe writes): `left right count` lines, no header."""
    path.write_text("".join(f"{a} {b} {count}\n" for a, b, count in rows), encoding="utf-8")


def train_byte_level(corpus: list[str], folder: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer(add_prefix_space=HF_ADD_PREFIX_SPACE)
    tokenizer.train_from_iterator(corpus, vocab_size=HF_VOCAB_SIZE, min_frequency=2,
                                  special_tokens=HF_SPECIAL_TOKENS, show_progress=False)
    tokenizer.save_model(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert [vocab[t] for t in HF_SPECIAL_TOKENS] == list(range(5)), "specials not at 0..4"


def train_wordpiece(corpus: list[str], folder: Path) -> None:
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(corpus, vocab_size=WORDPIECE_VOCAB_SIZE, min_frequency=2,
                                  show_progress=False)
    tokenizer.save_model(str(folder))
    pieces = (folder / BERT_VOCAB).read_text(encoding="utf-8").split("\n")
    assert pieces[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], pieces[:5]


def fairseq_bpe(name: str, **options: Any) -> Any:
    """fairseq's own BPE encoder, built through its registry as --bpe NAME does."""
    from fairseq.data import encoders

    return encoders.build_bpe(argparse.Namespace(bpe=name, **options))


# --------------------------------------------------------------------------- fairseq runs


def preprocess(work: Path, name: str, bpe: Callable[[str], str], train: list[str],
               valid: list[str]) -> Path:
    """Corpus B encoded by `bpe`, binarized; dict.txt keeps DICT_WORDS[name] symbols."""
    raw = work / "raw" / name
    raw.mkdir(parents=True)
    ff.write_lines(raw / "train.bpe", [bpe(line) for line in train])
    ff.write_lines(raw / "valid.bpe", [bpe(line) for line in valid])
    return ff.preprocess(work, f"raw/{name}/train.bpe", f"raw/{name}/valid.bpe", f"bin/{name}",
                         f"preprocess_{name}", "--nwordssrc", str(DICT_WORDS[name]))


# --------------------------------------------------------------------------- own models


def codes_ranks(rows: list[tuple[str, str, int]]) -> dict[tuple[str, str], int]:
    return {(a, b): rank for rank, (a, b, _) in enumerate(rows)}


def bpe_word(word: str, ranks: dict[tuple[str, str], int], nul_ends_chars: bool = False,
             ) -> list[str]:
    """OUR OWN model of one word's BPE (subword-nmt 0.2 / fastBPE): characters, '</w>' on the
    last, merge the lowest-ranked adjacent pair (all its occurrences, left to right) until none
    is in the codes, drop the final '</w>'. nul_ends_chars: fastBPE's C++ splits characters
    only up to the first NUL byte (`while (word[pos])`), the last character before it and all
    the rest of the word form the final symbol."""
    end = word.find("\x00") if nul_ends_chars and "\x00" in word else len(word)
    cut = max(end - 1, 0)
    symbols = list(word[:cut]) + [word[cut:] + "</w>"]
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:]) if (a, b) in ranks}
        if not pairs:
            break
        symbols = fixture_bpe.merge_pair(symbols, min(pairs, key=ranks.__getitem__))
    symbols[-1] = symbols[-1][: -len("</w>")]
    return symbols


def own_bpe(words: list[str], ranks: dict[tuple[str, str], int], nul_ends_chars: bool = False,
            ) -> list[str]:
    pieces = []
    for word in words:
        symbols = bpe_word(word, ranks, nul_ends_chars)
        pieces += [s + "@@" for s in symbols[:-1]] + [symbols[-1]]
    return pieces


def own_ids(pieces: list[str], dictionary: Any) -> list[int]:
    return [dictionary.bos()] + [dictionary.index(p) for p in pieces] + [dictionary.eos()]


def odd_whitespace(text: str) -> list[str]:
    """Characters of the text that are whitespace to Python (str.split, re's \\s) but not ' '."""
    return sorted({f"U+{ord(c):04X}" for c in text if c.isspace() and c != " "})


# --------------------------------------------------------------------------- recording


def load_hub(folder: Path, tokenizer: dict[str, str], expected: str) -> Any:
    hub = ff.load_hub(folder, tokenizer)
    kinds = {"fastbpe": "fastBPE", "subword_nmt": "SubwordNMTBPE",
             "hf_byte_bpe": "HuggingFaceByteLevelBPE", "bert": "BertBPE"}
    assert type(hub.bpe).__name__ == kinds[expected], type(hub.bpe)
    return hub


def cfg_bpe(checkpoint: Path) -> dict[str, Any]:
    state = ff.load_checkpoint(checkpoint)
    bpe = dict(state["cfg"]["bpe"])
    model = state["cfg"]["model"]
    return {"cfg_bpe": bpe,
            "cfg_model_bpe_fields": {k: v for k, v in sorted(vars(model).items())
                                     if k == "bpe" or k.startswith("bpe_")}}


def prefix_space_check(folder: Path, lines: list[str]) -> dict[str, Any]:
    """What bpe_add_prefix_space=True would change: the same files with add_prefix_space=True
    against add_prefix_space=False on the text with a ' ' put in front when it does not start
    with one (not what fairseq ran: a check of tokenizers' ByteLevel pre-tokenizer)."""
    from tokenizers import ByteLevelBPETokenizer

    def tokenizer(add: bool) -> Any:
        return ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                     add_prefix_space=add)

    plain, prefixed = tokenizer(False), tokenizer(True)
    differ = [t for t in lines if plain.encode(t).ids != prefixed.encode(t).ids]
    not_as_space = [t for t in lines if prefixed.encode(t).ids
                    != plain.encode(t if t.startswith(" ") else " " + t).ids]
    return {
        "note": "not fairseq output: tokenizers' ByteLevelBPETokenizer on this folder's files",
        "lines_where_add_prefix_space_true_differs": len(differ),
        "lines_where_true_is_not_plain_encode_of_space_plus_text": not_as_space,
    }


def cross_checks(fast_codes: Path, snmt_codes: Path, lines: list[str]) -> dict[str, Any]:
    """Does each library read the other's codes file (not fairseq output; for a loader that
    wants to accept both)?"""
    import fastBPE

    checks: dict[str, Any] = {"note": "library behaviour, not fairseq output"}
    snmt = fairseq_bpe("subword_nmt", bpe_codes=str(snmt_codes))
    fast_on_snmt = fastBPE.fastBPE(str(snmt_codes))
    same = sum(fast_on_snmt.apply([t])[0].split() == snmt.encode(t).split() for t in lines)
    checks["fastbpe_on_subword_nmt_codes"] = (
        f"loads (its asserts are compiled out with -DNDEBUG, so the '#version: 0.2' header "
        f"becomes a merge ('#version:', '0.2') and two-column lines are fine); pieces equal "
        f"to subword-nmt's (after whitespace split) on {same} of {len(lines)} lines")
    try:
        fairseq_bpe("subword_nmt", bpe_codes=str(fast_codes))
        checks["subword_nmt_on_fastbpe_codes"] = "loads"
    except SystemExit as error:
        checks["subword_nmt_on_fastbpe_codes"] = (
            f"refused: apply_bpe.BPE exits ({error.code}) on the first line that is not exactly "
            "two space-separated symbols ('Error: invalid line 1 in BPE codes file')")
    return checks


def record_encode_cases(name: str, folder: Path, hub: Any, kind: str, lines: list[str],
                        pairs: list[tuple[str, str]], masked: list[str],
                        rows: list[tuple[str, str, int]] | None, bpe_corpus: list[str],
                        files: dict[str, str], checkpoint_bpe: dict[str, Any],
                        extra_data: dict[str, Any] | None = None) -> dict[str, int]:
    import fairseq

    dictionary = hub.task.source_dictionary
    unk = dictionary.unk()
    ranks = codes_ranks(rows) if rows is not None else None
    study = {"odd": 0, "any_ws_differs": 0, "any_ws_differs_without_odd": 0,
             "space_split_differs": 0, "exact_differs": 0}

    def case(text: str) -> dict[str, Any]:
        bpe = hub.bpe.encode(text)
        ids = hub.encode(text).tolist()
        row: dict[str, Any] = {"text": text, "bpe": bpe, "ids": ids}
        if unk in ids:
            row["unk"] = True
        if ranks is not None:
            odd = odd_whitespace(text)
            any_ws = own_ids(own_bpe(text.split(), ranks), dictionary)
            space_pieces = " ".join(own_bpe([w for w in text.split(" ") if w], ranks))
            space = own_ids(space_pieces.split(), dictionary)
            # The exact model (see "own_exact_model"): subword-nmt strips '\r', '\n', ' ' off
            # the line's ends first; fastBPE's characters end at a NUL.
            line = text.strip("\r\n ") if kind == "subword_nmt" else text
            exact_pieces = own_bpe([w for w in line.split(" ") if w], ranks,
                                   nul_ends_chars=kind == "fastbpe")
            exact = own_ids(" ".join(exact_pieces).split(), dictionary)
            if exact != ids:
                row["own_exact_model_ids"] = exact
                study["exact_differs"] += 1
            if odd:
                row["odd_whitespace"] = odd
                study["odd"] += 1
            if any_ws != ids:
                row["own_any_whitespace_split_ids"] = any_ws
                study["any_ws_differs"] += 1
                study["any_ws_differs_without_odd"] += not odd
            if space != ids:
                row["own_space_split_ids"] = space
                study["space_split_differs"] += 1
        return row

    single = [case(text) for text in lines]
    data: dict[str, Any] = {
        "description": "",
        "fairseq_version": fairseq.__version__,
        "library_versions": {lib: importlib.metadata.version(lib)
                             for lib in ("fastBPE", "subword-nmt", "tokenizers", "transformers")},
        "model": name,
        "bpe": kind,
        "files": files,
        **checkpoint_bpe,
        "special_ids": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": hub.task.mask_idx},
        **(extra_data or {}),
    }
    if ranks is not None:
        data["description"] = (
            f"Ground truth from fairseq's RobertaHubInterface with {name}'s dict.txt and BPE "
            f"codes {files['bpe_codes']} (--bpe {kind}). `bpe` is roberta.bpe.encode(text) "
            "(pieces joined by spaces, '@@' ending every non-final piece of a word), `ids` is "
            "roberta.encode(text...) (fairseq ids incl. <s>/</s>): fairseq splits the BPE string "
            "again on any whitespace (re \\s+) and looks every piece up in dict.txt, <unk> (3) "
            "if absent; `unk` marks lines with a 3. `odd_whitespace` lists the whitespace "
            "characters other than ' ' in the line. The two own_* fields are NOT fairseq: they "
            "are models of ours, written only where they differ from fairseq's ids: "
            "`own_any_whitespace_split_ids` = split the text on any whitespace (Python "
            "str.split()), BPE each word with the codes, '@@' on non-final pieces, dict lookup; "
            "`own_space_split_ids` = split on ' ' only (dropping empty words), BPE each word "
            "(other whitespace characters are characters of the word), join with spaces, then "
            "fairseq's split on any whitespace and dict lookup. `own_exact_model` describes "
            "a third model of ours, the one we believe is exactly what fairseq does; "
            "`own_exact_model_ids` would show where it is wrong (counts: "
            "lines_where_own_exact_model_differs). Characters that are not "
            "printable are \\u-escaped; others are plain UTF-8.")
        data["own_model_counts"] = {
            "lines_with_odd_whitespace": study["odd"],
            "lines_where_own_any_whitespace_split_differs": study["any_ws_differs"],
            "of_which_without_odd_whitespace": study["any_ws_differs_without_odd"],
            "lines_where_own_space_split_differs": study["space_split_differs"],
            "lines_where_own_exact_model_differs": study["exact_differs"],
        }
        data["own_exact_model"] = EXACT_MODELS[kind]
        codes_lines = (folder / Path(files["bpe_codes"]).name).read_text(encoding="utf-8")
        data["codes_file"] = {"first_line": codes_lines.split("\n")[0],
                              "lines": codes_lines.count("\n"),
                              "merges": len(rows),
                              "columns_of_merge_lines": sorted({len(line.split(" ")) for line in
                                                                codes_lines.split("\n")[-10:-1]})}
        chars = sorted({c for line in bpe_corpus for c in line if c != " "})
        merged = [a + b for a, b, _ in rows]
        producible = [t[: -len("</w>")] if t.endswith("</w>") else t + "@@" for t in merged]
        data["merged_pieces_missing_from_dict"] = [p for p in producible
                                                    if dictionary.index(p) == unk]
        data["corpus_a_characters_missing_from_dict"] = {
            "as_final_piece": sum(dictionary.index(c) == unk for c in chars),
            "as_non_final_piece": sum(dictionary.index(c + "@@") == unk for c in chars),
            "characters": len(chars),
        }
    elif kind == "bert":
        data["description"] = (
            f"Ground truth from fairseq's RobertaHubInterface with {name}'s dict.txt and the "
            f"WordPiece vocabulary {files['bpe_vocab_file']} (--bpe bert, bpe_cased false). `bpe` "
            "is roberta.bpe.encode(text) = transformers' BertTokenizer(vocab.txt, "
            "do_lower_case=True).tokenize(text) joined by spaces; `ids` is roberta.encode(text...): "
            "each piece looked up in dict.txt, <unk> (3) if absent; `unk` marks lines with a 3. "
            "`cased_bpe[i]` is what fairseq's bert encoder with bpe_cased true (do_lower_case "
            "False) gives for single[i]'s text with the same vocab.txt; `hidden_specials` holds both "
            "encodings of texts that spell BERT's specials with characters its cleaning drops "
            "inside them. Characters that are not "
            "printable are \\u-escaped; others are plain UTF-8.")
        cased = fairseq_bpe("bert", bpe_vocab_file=str(folder / BERT_VOCAB), bpe_cased=True)
        data["cased_bpe"] = [cased.encode(row["text"]) for row in single]
        # BERT's specials spelled with characters its cleaning drops (or NFC folds) inside them.
        data["hidden_specials"] = [{"text": text, "bpe": hub.bpe.encode(text), "cased_bpe": cased.encode(text)}
                                   for text in BERT_HIDDEN_SPECIALS]
        pieces = (folder / BERT_VOCAB).read_text(encoding="utf-8").split("\n")
        data["pieces_missing_from_dict"] = sum(dictionary.index(p) == unk for p in pieces if p)
    else:
        data["description"] = (
            f"Ground truth from fairseq's RobertaHubInterface with {name}'s dict.txt and the "
            f"byte-level BPE {files['bpe_vocab']} + {files['bpe_merges']} (--bpe hf_byte_bpe, "
            f"bpe_add_prefix_space {str(HF_ADD_PREFIX_SPACE).lower()}). `bpe` is "
            "roberta.bpe.encode(text) = the ids of tokenizers.ByteLevelBPETokenizer(vocab, merges, "
            "add_prefix_space).encode(text) written as decimal strings joined by spaces; `ids` is "
            "roberta.encode(text...): each id string looked up in dict.txt, <unk> (3) if absent; "
            "`unk` marks lines with a 3. Characters that are not printable are \\u-escaped; "
            "others are plain UTF-8.")
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        data["add_prefix_space_check"] = prefix_space_check(folder, lines)
        data["hf_ids_missing_from_dict"] = sorted(i for i in vocab.values()
                                                  if dictionary.index(str(i)) == unk)
    counts = {"single": len(single), "pairs": len(pairs),
              "lines_with_unk": sum("unk" in c for c in single)}
    if ranks is not None:
        counts.update(data.pop("own_model_counts"))
        counts["merged_pieces_missing_from_dict"] = len(data["merged_pieces_missing_from_dict"])
    data["counts"] = counts
    data["single"] = single
    data["pairs"] = [{"texts": [a, b], "ids": hub.encode(a, b).tolist()} for a, b in pairs]
    data["fill_mask_topk"] = ff.FILL_MASK_TOPK
    # hf_byte_bpe's decode hands a predicted special or madeupword symbol to tokenizers as a
    # string, which raises a TypeError: such sentences are skipped too, and listed.
    data["fill_mask"], data["fill_mask_failures"] = ff.record_fill_mask(
        hub, masked, skip=(ValueError, TypeError))
    counts["fill_mask"] = len(data["fill_mask"])
    (folder / "encode_cases.json").write_text(ff.compact_json(data, ascii_only=False),
                                              encoding="utf-8")
    return counts


# --------------------------------------------------------------------------- main


def main() -> None:
    started = time.time()
    names = ff.only_names(list(DESCRIPTIONS))
    options = ff.start(__doc__)
    with ff.work_dir(options.keep_work, prefix="tokfixtures-") as work:
        out = work / "out"
        out.mkdir()

        print("corpora and BPE files ...", flush=True)
        bpe_corpus, train, valid, lines, pairs = corpora()
        corpus_file = work / "corpus_a.txt"
        ff.write_lines(corpus_file, bpe_corpus)
        masked = ff.masked_sentences(fixture_text.load_corpora(seed=0).held_out[300:],
                                     random.Random(SEED))

        # Every folder's BPE files are made (each from corpus A alone, so what --only leaves out
        # changes nothing); the fastBPE fixture's cross checks read the subword-nmt codes.
        folders = {name: out / name for name in DESCRIPTIONS}
        for folder in folders.values():
            folder.mkdir()
        _, fast_rows = learn_subword_nmt(corpus_file, FASTBPE_MERGES, work)
        write_fastbpe_codes(fast_rows, folders["phobert_fastbpe"] / FASTBPE_CODES)
        snmt_codes, snmt_rows = learn_subword_nmt(corpus_file, SUBWORD_NMT_MERGES, work)
        shutil.copy(snmt_codes, folders["roberta_subword_nmt"] / SUBWORD_NMT_CODES)
        train_byte_level(bpe_corpus, folders["gottbert_hf_byte_bpe"])
        train_wordpiece(bpe_corpus, folders["roberta_bert_wordpiece"])

        # The training command lines name the files relative to the work dir (recorded in cfg).
        for name, files in {"phobert_fastbpe": [FASTBPE_CODES],
                            "roberta_subword_nmt": [SUBWORD_NMT_CODES],
                            "gottbert_hf_byte_bpe": ["vocab.json", "merges.txt"],
                            "roberta_bert_wordpiece": [BERT_VOCAB]}.items():
            for file in files:
                shutil.copy(folders[name] / file, work / file)
        kinds = {
            "phobert_fastbpe": ("fastbpe", {"bpe_codes": str(work / FASTBPE_CODES)},
                                ["--bpe", "fastbpe", "--bpe-codes", FASTBPE_CODES]),
            "roberta_subword_nmt": ("subword_nmt", {"bpe_codes": str(work / SUBWORD_NMT_CODES)},
                                    ["--bpe", "subword_nmt", "--bpe-codes", SUBWORD_NMT_CODES]),
            "gottbert_hf_byte_bpe": ("hf_byte_bpe",
                                     {"bpe_vocab": str(work / "vocab.json"),
                                      "bpe_merges": str(work / "merges.txt"),
                                      "bpe_add_prefix_space": HF_ADD_PREFIX_SPACE},
                                     ["--bpe", "hf_byte_bpe", "--bpe-vocab", "vocab.json",
                                      "--bpe-merges", "merges.txt"]
                                     + (["--bpe-add-prefix-space"] if HF_ADD_PREFIX_SPACE else [])),
            "roberta_bert_wordpiece": ("bert", {"bpe_vocab_file": str(work / BERT_VOCAB),
                                                "bpe_cased": False},
                                       ["--bpe", "bert", "--bpe-vocab-file", BERT_VOCAB]),
        }
        kinds = {name: kind for name, kind in kinds.items() if name in names}

        checkpoints = {}
        for name, (kind, bpe_options, train_flags) in kinds.items():
            print(f"{name}: fairseq-preprocess, fairseq-train ...", flush=True)
            encoder = fairseq_bpe(kind, **bpe_options)
            data = preprocess(work, name, encoder.encode, train, valid)
            checkpoints[name] = ff.train_mlm(work, name, train_flags, data=f"bin/{name}")
            shutil.copy(checkpoints[name], folders[name] / "model.pt")
            shutil.copy(data / "dict.txt", folders[name] / "dict.txt")

        print("recording fairseq outputs ...", flush=True)
        held_out = fixture_text.load_corpora(seed=0).held_out
        summary = {}
        for name, (kind, _, _) in kinds.items():
            folder = folders[name]
            if kind == "hf_byte_bpe":
                tokenizer = {"bpe": kind, "bpe_vocab": str(folder / "vocab.json"),
                             "bpe_merges": str(folder / "merges.txt")}
                extra: dict[str, Any] = {"bpe_add_prefix_space": HF_ADD_PREFIX_SPACE}
                rows = None
            elif kind == "bert":
                tokenizer = {"bpe": kind, "bpe_vocab_file": str(folder / BERT_VOCAB)}
                extra = {"bpe_cased": False}
                rows = None
            else:
                codes = FASTBPE_CODES if kind == "fastbpe" else SUBWORD_NMT_CODES
                tokenizer = {"bpe": kind, "bpe_codes": str(folder / codes)}
                extra = {"bpe_separator": "@@"} if kind == "subword_nmt" else {}
                rows = fast_rows if kind == "fastbpe" else snmt_rows
            hub = load_hub(folder, tokenizer, kind)
            extra_data = None
            if kind == "fastbpe":
                extra_data = {"cross_checks": cross_checks(folder / FASTBPE_CODES, snmt_codes, lines)}
            if kind == "hf_byte_bpe":
                assert hub.bpe.bpe._parameters["add_prefix_space"] == HF_ADD_PREFIX_SPACE
            samples = ff.choose_samples(hub, held_out, s2="Café 😀 Tiếng Việt")
            checkpoint_bpe = cfg_bpe(folder / "model.pt")
            ff.record_outputs(name, folder, tokenizer, samples, DESCRIPTIONS[name],
                              tokenizer_extra={**extra, **checkpoint_bpe})
            files = {k: f"{name}/{Path(v).name}" for k, v in tokenizer.items() if k != "bpe"}
            summary[name] = record_encode_cases(name, folder, hub, kind, lines, pairs, masked,
                                                rows, bpe_corpus, {**files, **extra},
                                                checkpoint_bpe, extra_data)
            print(name, json.dumps(summary[name]), flush=True)

        for name in names:
            ff.replace_tree(folders[name], FIXTURES / name)
    print(f"wrote {', '.join(names)} under {FIXTURES} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
