"""Tokenizer files whose ids equal fairseq's, remapped through dict.txt: the registry of tokenizer kinds.

Each kind is one module with one `KIND` entry (tokenizer/base.py says what an entry holds): the files
it reads, how it builds the `tokenizers` Tokenizer and its vocabulary, fairseq's encode that verifies
it, and what the card says. Folder discovery, the command-line flags, inspect, convert, verify and the
card all read KINDS.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConversionError, UnsupportedModelError, library_message
from ..reader.dictionary import BOS, EOS, MASK, PAD, UNK, Dictionary
from . import bert_wordpiece, fastbpe, gpt2, hf_byte_bpe, sentencepiece, subword_nmt
from ..reader.folder import TokenizerFile, TokenizerFiles
from .base import PreparedTokenizer, TokenizerKind

# Without the checkpoint's word, the first kind whose files are all there (and that claims them) wins,
# among those whose files were named on the command line if any were.
KINDS: tuple[TokenizerKind, ...] = (sentencepiece.KIND, gpt2.KIND, hf_byte_bpe.KIND, fastbpe.KIND,
                                    subword_nmt.KIND, bert_wordpiece.KIND)
KINDS_BY_BPE = {kind.fairseq_bpe: kind for kind in KINDS}
# Every file role once (fastBPE and subword-nmt share bpe_codes), in registry order.
TOKENIZER_FILES: tuple[TokenizerFile, ...] = tuple({f.role: f for kind in KINDS for f in kind.files}.values())

# transformers 4.x and 5.x both load tokenizer.json as it is through this class; model-specific classes
# (RobertaTokenizer in 5.x) rebuild the tokenizer from vocab and merges and drop the unknown token.
TOKENIZER_CLASS = "PreTrainedTokenizerFast"

__all__ = ["KINDS", "TOKENIZER_FILES", "PreparedTokenizer", "TokenizerFiles", "TokenizerKind", "choose_kind",
           "looked_for", "prepare_tokenizer", "tokenizer_documents", "tokenizer_flags"]


def _kinds_for(bpe: dict | None) -> tuple[TokenizerKind, ...]:
    """The kind the checkpoint's bpe settings name (the only one that can reproduce its ids), or all."""
    trained_with = KINDS_BY_BPE.get(str((bpe or {}).get("_name") or ""))
    return (trained_with,) if trained_with else KINDS


def looked_for(bpe: dict | None = None) -> str:
    """The files a tokenizer is made from, for messages: "encoder.json + vocab.bpe (gpt2), ..."; only the
    ones of the kind the model was trained with when its bpe settings (Checkpoint.bpe) name one."""
    seen, parts = set(), []
    for kind in _kinds_for(bpe):
        names = " + ".join(f.names[0] for f in kind.files)
        if names not in seen:
            seen.add(names)
            parts.append(f"{names} ({kind.name})")
    trained_with = str((bpe or {}).get("_name") or "")
    if trained_with and trained_with not in KINDS_BY_BPE:
        parts.append(f"nothing for the model's own --bpe {trained_with}, which no tokenizer here reproduces")
    return ", ".join(parts)


def tokenizer_flags(bpe: dict | None = None) -> str:
    """The options that name those files: "--encoder-json, --vocab-bpe, ..."."""
    return ", ".join(dict.fromkeys(f.flag for kind in _kinds_for(bpe) for f in kind.files))


def choose_kind(files: TokenizerFiles, bpe: dict) -> TokenizerKind | None:
    """The kind the model was trained with (cfg bpe), or the one the files make; None without files.

    A file set that contradicts the checkpoint's bpe, or half of a kind's files, is refused.
    """
    complete = [kind for kind in KINDS if all(f.role in files.paths for f in kind.files)]
    name = str(bpe.get("_name") or "")
    trained_with = KINDS_BY_BPE.get(name)
    if name and not trained_with:  # characters, bytes, byte_bpe, a BPE of the user's: never another kind's files
        if files.given:
            raise ConversionError(
                f"the model was trained with fairseq's --bpe {name}, which no tokenizer kind here reproduces",
                path=files.paths[sorted(files.given)[0]], hint="convert without the tokenizer file options")
        return None
    if trained_with:
        foreign = sorted(files.given - {f.role for f in trained_with.files})
        if trained_with in complete and not foreign:
            return trained_with
        if files.paths:
            have = ", ".join(sorted(Path(p).name for p in files.paths.values()))
            raise ConversionError(
                f"the model was trained with fairseq's --bpe {trained_with.fairseq_bpe}, but the tokenizer files "
                f"are {have}", path=files.paths[foreign[0]] if foreign else None,
                hint=f"give {' and '.join(f.flag for f in trained_with.files)} "
                     f"({' + '.join(f.names[0] for f in trained_with.files)})")
        return None
    # Files named on the command line say which kind is meant; SRC's own files only where none were.
    named = [kind for kind in complete if files.given & {f.role for f in kind.files}] or complete
    for kind in named:
        if kind.claims(files):
            return kind
    if named:
        return named[0]
    for kind in KINDS:
        have = [f for f in kind.files if f.role in files.paths]
        if have and len(have) < len(kind.files):
            lack = [f for f in kind.files if f not in have]
            raise ConversionError(
                f"has {' and '.join(f.names[0] for f in have)} but not its partner",
                path=files.paths[have[0].role].parent,
                hint=f"a {kind.name} tokenizer needs {' + '.join(f.names[0] for f in kind.files)}; "
                     f"pass the other with {' '.join(f.flag for f in lack)}")
    return None


def prepare_tokenizer(files: TokenizerFiles, dictionary: Dictionary, model_rows: int,
                      bpe: dict | None = None) -> PreparedTokenizer | None:
    """`bpe`: the checkpoint's bpe settings (Checkpoint.bpe): which kind, and its options."""
    bpe = bpe or {}
    kind = choose_kind(files, bpe)
    if kind is None:
        return None
    used = TokenizerFiles({f.role: files.paths[f.role] for f in kind.files}, files.given)
    prepared = kind.prepare(used, dictionary, model_rows, bpe)
    _refuse_unloadable(prepared, used.paths[kind.files[0].role])
    return prepared


def _refuse_unloadable(prepared: PreparedTokenizer, path: Path) -> None:
    """The tokenizer as written must load and encode, even with --no-verify: files can hold merges that
    build a piece no vocabulary has (codes that spell "<unk></w>"), which `tokenizers` refuses on load."""
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(prepared.tokenizer.to_str()).encode("a <unk> b\U0010fffd")
    except Exception as error:  # whatever `tokenizers` raises for a model it cannot build or run
        raise UnsupportedModelError(f"gives a tokenizer that `tokenizers` cannot load or run "
                                    f"({library_message(error)})", path=path) from None


def kind_named(name: str) -> TokenizerKind:
    return next(kind for kind in KINDS if kind.name == name)


def tokenizer_documents(prepared: PreparedTokenizer, model_max_length: int) -> dict[str, str | dict]:
    """The tokenizer's files in OUT: file name -> text, or a dict to write as JSON.

    The caller writes them (not Tokenizer.save, whose failures, a full disk among them, are a bare Exception).
    """
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "sep_token": EOS, "cls_token": BOS,
                "pad_token": PAD}
    if prepared.vocabulary.mask_id is not None:
        specials["mask_token"] = MASK
    config = {
        "tokenizer_class": TOKENIZER_CLASS,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **specials,
        **prepared.config,
    }
    return {"tokenizer.json": prepared.tokenizer.to_str(pretty=True), "tokenizer_config.json": config,
            "special_tokens_map.json": specials, **prepared.extra_files}
