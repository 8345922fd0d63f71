"""Deterministic text for the fixtures, taken from what every Linux dev machine has offline.

* English: sentences from the docstrings of the Python standard library (read with `ast`,
  nothing is imported).
* Other languages and scripts: translated messages from gettext catalogs under
  /usr/share/locale (glib's catalog exists for nearly every language). load_multilingual() takes
  more of them (about 30 languages, a dozen catalogs) for the sentencepiece fixtures.

Everything is sorted and shuffled with fixed seeds. The exact text depends on the Python version
and the installed catalogs, which is fine: the generated fixtures are committed.
"""

from __future__ import annotations

import ast
import gettext
import random
import re
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

LOCALE_DIR = Path("/usr/share/locale")
# (language, catalog): several scripts (Latin with accents, Cyrillic, Greek, CJK, Arabic, Hebrew,
# Devanagari, Thai, Hangul, Georgian).
CATALOGS = [
    (lang, "glib20")
    for lang in ["de", "fr", "es", "pt_BR", "vi", "tr", "pl", "ru", "uk", "el", "ja", "zh_CN",
                 "zh_TW", "ko", "ar", "fa", "he", "hi", "th", "ka"]
]
# Libraries whose docstrings are not prose or not English-like enough.
SKIPPED_STDLIB_DIRS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "lib2to3",
                       "turtledemo", "ensurepip"}


@dataclass(frozen=True)
class Corpora:
    bpe: list[str]  # corpus A: trains the BPE merges
    accented: list[str]  # accented Latin-script messages, added to corpus A
    model_train: list[str]  # corpus B: builds dict.txt and trains the models
    model_valid: list[str]
    held_out: list[str]  # English the models and the BPE never saw
    foreign: list[str]  # translated messages, many scripts


def _docstring_sentences() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        path for path in root.rglob("*.py")
        if not set(path.relative_to(root).parts[:-1]) & SKIPPED_STDLIB_DIRS
    )
    sentences: set[str] = set()
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError):
                continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            for paragraph in re.split(r"\n\s*\n", doc or ""):
                lines = paragraph.splitlines()
                # Indented lines and doctests are code, not prose.
                if any(line.startswith((" ", ">>>", "...")) for line in lines):
                    continue
                text = " ".join(line.strip() for line in lines)
                for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                    if _is_prose(sentence):
                        sentences.add(sentence)
    return sorted(sentences)


def _is_prose(sentence: str) -> bool:
    if not (30 <= len(sentence) <= 200 and sentence.isascii() and len(sentence.split()) >= 5):
        return False
    letters = sum(c.isalpha() or c == " " for c in sentence)
    return letters / len(sentence) > 0.85


def _catalog_messages(lang: str, domain: str) -> list[str]:
    path = LOCALE_DIR / lang / "LC_MESSAGES" / f"{domain}.mo"
    if not path.exists():
        return []
    with path.open("rb") as handle:
        catalog = gettext.GNUTranslations(handle)._catalog  # msgid -> translation
    messages = set()
    for key, text in catalog.items():
        if not key or not isinstance(text, str):  # "" holds the catalog header
            continue
        text = " ".join(text.split())
        # Skip printf/format placeholders and markup, keep sentence-like messages.
        if 15 <= len(text) <= 120 and not re.search(r"[%{}<>\\_]", text) and not text.isascii():
            messages.add(text)
    return sorted(messages)


def load_corpora(seed: int = 0) -> Corpora:
    english = _docstring_sentences()
    random.Random(seed).shuffle(english)
    foreign: list[str] = []
    for lang, domain in CATALOGS:
        messages = _catalog_messages(lang, domain)
        random.Random(f"{seed}-{lang}").shuffle(messages)
        foreign.extend(messages[:40])
    # Accented Latin text added to corpus A gives the BPE a few multi-byte merges that the
    # English-only model corpus never uses, so those tokens are missing from dict.txt.
    accented = [m for m in foreign if m.isprintable() and all(ord(c) < 0x250 for c in m)]
    return Corpora(
        bpe=english[:6000],
        accented=accented,
        model_train=english[6000:10500],
        model_valid=english[10500:11000],
        held_out=english[11000:],
        foreign=foreign,
    )


# Hand-written edge cases for the tokenizer ground truth.
EDGE_CASES = [
    "",
    " ",
    "   ",
    "Hello world",
    " Hello world",
    "Hello world ",
    "Hello   world",
    "Hello\tworld",
    "Hello\nworld",
    "Hello\n\nworld\n",
    "\n",
    "\t\t",
    "Line one.\r\nLine two.",
    "I'm sure you'll see it's what they've said, isn't it? I'D SAY YOU'LL",
    "don't DON'T Don't",
    "Numbers: 0 1 12 123 1234 3.14159 -42 1e10 0x1F 1,000,000",
    "Punctuation!!! ??? ... --- *** ((()))[[]]{{}}",
    "email@example.com https://example.org/path?q=1&x=2#frag",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "def f(x):\n    return x ** 2  # square",
    "Café naïve résumé façade jalapeño São Paulo Zürich",
    "Ærøskøbing Œuvre ßtraße İstanbul ı Ğ",
    "Ünïcödé àççéñtš ëvérÿwhérè",
    "emoji: 😀 😃 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧‍👦",
    "😀😀😀",
    "日本語のテキストです。東京は日本の首都です。",
    "中文文本，北京是中国的首都。",
    "한국어 텍스트입니다.",
    "مرحبا بالعالم، هذه جملة عربية.",
    "שלום עולם, זה משפט בעברית.",
    "Привет, мир! Это русское предложение.",
    "Γειά σου κόσμε! Αυτή είναι μια ελληνική πρόταση.",
    "नमस्ते दुनिया, यह एक हिंदी वाक्य है।",
    "สวัสดีชาวโลก นี่คือประโยคภาษาไทย",
    "zero\u200bwidth\u200cjoiner\u200dchars\ufeffbom",
    "soft\u00adhyphen and non\u00a0breaking\u00a0spaces",
    "control\x00null\x01start\x07bell\x1bescape\x7fdel",
    "combining e\u0301 vs \u00e9, A\u030a vs \u00c5",
    "fullwidth ＡＢＣ１２３ and ligature ﬁ ﬂ",
    "math ∑∫√∞ ≤≥≠ and arrows ← → ↑ ↓",
    "<s> </s> <pad> <unk> <mask> are just text here",
    "a" * 80,
    "word " * 40,
    "   leading and trailing spaces   ",
    "mixed\u3000ideographic\u2003em\u2009thin spaces",
    "\u2028line separator\u2029paragraph separator",
]


def long_line(held_out: list[str]) -> str:
    """An English line that encodes to well over 64 tokens."""
    return " ".join(held_out[:6])


# --------------------------------------------------------------------------- multilingual text
# For the sentencepiece fixtures (XLM-R / CamemBERT style). Kept apart from load_corpora(), whose
# output the GPT-2 fixtures depend on.

MULTILINGUAL_DOMAINS = ["glib20", "gtk20", "gtk20-properties", "gdk-pixbuf", "shared-mime-info",
                        "at-spi2-core", "Linux-PAM", "PackageKit", "xkeyboard-config",
                        "gsettings-desktop-schemas", "coreutils", "dpkg", "apt"]
# Languages of the sentencepiece and model corpora: Latin with diacritics, Cyrillic, Greek,
# Arabic, Hebrew, Devanagari, Thai, Georgian, Japanese, Chinese, Hangul.
SEEN_LANGUAGES = ["de", "fr", "es", "pt_BR", "pl", "cs", "tr", "vi", "sv", "ru", "uk", "bg", "el",
                  "ar", "fa", "he", "hi", "th", "ka", "ja", "zh_CN", "ko"]
# Thousands of distinct characters: fewer lines, so a 1000-piece model still has room for words
# (and many of their rarer characters stay unknown to it).
CJK_LANGUAGES = {"ja", "zh_CN", "ko"}
# Only in the model corpus: the sentencepiece model never saw Armenian, so each Armenian word is
# one run of unknown characters, and the frequent ones become symbols of dict.txt.
MODEL_ONLY_LANGUAGES = ["hy"]
# Scripts neither the sentencepiece model nor the models ever saw (held-out text only).
UNSEEN_LANGUAGES = ["ta", "bn", "my", "si"]

# Lines per language: sentencepiece corpus, model corpus (train, valid), held-out.
SPM_LINES, SPM_LINES_CJK = 150, 40
MODEL_LINES, MODEL_LINES_CJK, VALID_LINES = 120, 40, 10
HELD_OUT_LINES = 9
ENGLISH_SPM, ENGLISH_MODEL, ENGLISH_VALID, ENGLISH_HELD_OUT = 300, 600, 60, 24


@dataclass(frozen=True)
class MultilingualCorpora:
    spm: list[str]  # corpus S: trains the sentencepiece models
    model_train: list[tuple[str, str]]  # corpus M, (language, text): dict.txt and the models
    model_valid: list[tuple[str, str]]
    held_out: list[tuple[str, str]]  # seen languages and unseen scripts, never trained on


def load_multilingual(english: Corpora, seed: int = 0) -> MultilingualCorpora:
    """Disjoint multilingual corpora from the gettext catalogs, plus English from `english`.

    Corpus S (sentencepiece) and corpus M (dict.txt, training) hold different messages, so the
    dictionary is in another frequency order than the model's pieces and lacks some of them.
    """
    spm = english.bpe[:ENGLISH_SPM]
    train = [("en", text) for text in english.model_train[:ENGLISH_MODEL]]
    valid = [("en", text) for text in english.model_valid[:ENGLISH_VALID]]
    held_out = [("en", text) for text in english.held_out[400:400 + ENGLISH_HELD_OUT]]
    for lang in SEEN_LANGUAGES + MODEL_ONLY_LANGUAGES + UNSEEN_LANGUAGES:
        messages = sorted({m for domain in MULTILINGUAL_DOMAINS
                           for m in _catalog_messages(lang, domain)})
        random.Random(f"{seed}-multilingual-{lang}").shuffle(messages)
        if lang in UNSEEN_LANGUAGES:
            held_out += [(lang, text) for text in messages[:HELD_OUT_LINES]]
            continue
        n_spm, n_model = ((SPM_LINES_CJK, MODEL_LINES_CJK) if lang in CJK_LANGUAGES
                          else (SPM_LINES, MODEL_LINES))
        if lang in MODEL_ONLY_LANGUAGES:  # all its messages (~570): frequent unknown runs
            n_spm, n_model = 0, len(messages) - VALID_LINES - HELD_OUT_LINES
        bounds = [n_spm, n_spm + n_model, n_spm + n_model + VALID_LINES,
                  n_spm + n_model + VALID_LINES + HELD_OUT_LINES]
        spm += messages[:bounds[0]]
        train += [(lang, text) for text in messages[bounds[0]:bounds[1]]]
        valid += [(lang, text) for text in messages[bounds[1]:bounds[2]]]
        held_out += [(lang, text) for text in messages[bounds[2]:bounds[3]]]
    random.Random(seed).shuffle(train)
    return MultilingualCorpora(spm=spm, model_train=train, model_valid=valid, held_out=held_out)


# Hand-written cases for the sentencepiece ground truth, on top of EDGE_CASES. The symbols
# ☃ ⟦ ⟧ ‽ ⌘ ∮ ⊕ are in none of the corpora, so the sentencepiece model does not know them: fairseq
# looks a run of unknown characters up in dict.txt as ONE piece (its surface text).
SPM_EDGE_CASES = [
    "a ☃ b",
    "☃",
    "☃☃",
    " ☃☃☃ ",
    "x☃y ☃☃z ⟦w⟧",
    "snow☃☃man and ⌘K ‽ ∮ ⊕",
    "☃ ☃  ☃\t☃\n☃",
    "Brackets ⟦like this⟧ and 【these】 and «these»",
    "emoji 😀 ok 👍🏽 ok 👨‍👩‍👧 ok ❤️",
    "Armenian, which dict.txt saw but the sentencepiece model did not: Սա է ֆայլ",
    "համար է, համար: է. Չի",
    "Tamil, seen by neither: தமிழ் உரை, Sinhala: සිංහල",
    "mixed Привет мир 東京 է ☃ Ελλάδα",
    # Whitespace: sentencepiece squeezes runs and drops leading/trailing ones; nmt_nfkc turns
    # odd spaces into spaces and removes control characters.
    "  two  spaces  everywhere  ",
    "\ttab\tseparated\t",
    "\n\nnewlines\n\n",
    "nbsp\u00a0ideographic\u3000em\u2003thin\u2009narrow\u202fspaces",
    "line\u2028separator\u2029paragraph",
    "zero\u200bwidth\u200cnon-joiner\u200djoiner\u2060word-joiner\ufeffbom",
    "soft\u00adhyphen",
    "separators\x1c\x1d\x1e\x1fgone",
    "next\x85line",  # NEL: kept by nmt_nfkc, but a whitespace character to Python's str.split
    "☃\x85☃",
    "bell\x07 escape\x1b delete\x7f null\x00",
    "vertical\x0btab form\x0cfeed carriage\rreturn",
    "literal\u2581pieces \u2581\u2581marker\u2581",
    "\u2581",
    # NFKC
    "fullwidth ＨＥＬＬＯ ｗｏｒｌｄ １２３！",
    "halfwidth ｶﾀｶﾅ and ﾊﾟﾋﾟ",
    "ligatures ﬁ ﬂ ﬀ and Ⅻ ² ½ ㎏ ㍿",
    "decomposed e\u0301 A\u030a \u1100\u1161 vs é Å 가",
    "Arabic with harakat: مَرْحَبًا بِكُمْ",
    "Hebrew with niqqud: שָׁלוֹם",
    "Devanagari: हिन्दी में पाठ। क़",
    "Thai without spaces: ภาษาไทยไม่มีช่องว่าง",
    "Korean 한국어 and Japanese 日本語とカタカナ",
    "digits 0123456789 ٠١٢٣ ०१२३ ๐๑๒",
    "<unk> <s> </s> <pad> <mask> madeupword0000",
    "a",
    "A.",
    ".",
    "!!!",
]
