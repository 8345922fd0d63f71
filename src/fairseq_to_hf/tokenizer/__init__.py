"""Tokenizer files whose ids equal fairseq's: GPT-2 BPE or sentencepiece, remapped through dict.txt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from ..reader.dictionary import BOS, EOS, MASK, PAD, UNK, Dictionary
from .gpt2 import build_gpt2_tokenizer, gpt2_vocabulary, read_gpt2_files
from ..writer import write_json, write_text
from .vocab import TokenVocabulary

# transformers 4.x and 5.x both load tokenizer.json as it is through this class; model-specific classes
# (RobertaTokenizer in 5.x) rebuild the tokenizer from vocab and merges and drop the unknown token.
TOKENIZER_CLASS = "PreTrainedTokenizerFast"


@dataclass
class TokenizerFiles:
    encoder_json: Path | None = None
    vocab_bpe: Path | None = None
    sentencepiece_model: Path | None = None

    @property
    def kind(self) -> str | None:
        if self.sentencepiece_model:
            return "sentencepiece"
        if self.encoder_json and self.vocab_bpe:
            return "gpt2"
        return None


@dataclass
class PreparedTokenizer:
    """A tokenizer ready to write, with the reference segmentation that verifies it."""

    kind: str
    files: TokenizerFiles
    tokenizer: Tokenizer
    vocabulary: TokenVocabulary
    reference_bpe: Callable[[str], str]  # fairseq's bpe.encode: text -> space-separated symbols
    dictionary: Dictionary
    details: dict = field(default_factory=dict)
    # Lines where a difference is the known sentencepiece unknown-run limitation, not an error.
    unknown_run_quirk: Callable[[str], bool] = lambda text: False

    def summary(self) -> dict:
        vocabulary = self.vocabulary
        return {
            "kind": self.kind,
            "source_files": {k: v for k, v in vars(self.files).items() if v is not None},
            "vocab_size": vocabulary.size,
            "fairseq_vocab_rows": vocabulary.model_rows,
            "alias_count": len(vocabulary.aliases),
            "aliases": {token: vocabulary.ids[token] for token in vocabulary.aliases},
            "unknown_tokens_left_out": len(vocabulary.unknown),
            "mask_id": vocabulary.mask_id,
            **self.details,
        }


def prepare_tokenizer(files: TokenizerFiles, dictionary: Dictionary, model_rows: int) -> PreparedTokenizer | None:
    if files.kind == "gpt2":
        from ..verify.fairseq_encode import Gpt2Encoder

        encoder, merges = read_gpt2_files(files.encoder_json, files.vocab_bpe)
        vocabulary = gpt2_vocabulary(encoder, merges, dictionary, model_rows, merges_path=files.vocab_bpe,
                                     encoder_path=files.encoder_json)
        tokenizer = build_gpt2_tokenizer(vocabulary, merges)
        reference = Gpt2Encoder(encoder, merges).bpe_string
        return PreparedTokenizer("gpt2", files, tokenizer, vocabulary, reference, dictionary)
    if files.kind == "sentencepiece":
        from .sentencepiece import prepare_sentencepiece

        return prepare_sentencepiece(files, dictionary, model_rows)
    return None


def write_tokenizer(folder: Path, prepared: PreparedTokenizer, model_max_length: int) -> list[str]:
    # Written by us, not Tokenizer.save, whose failures (a full disk) are a bare Exception.
    write_text(folder / "tokenizer.json", prepared.tokenizer.to_str(pretty=True))
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "sep_token": EOS, "cls_token": BOS,
                "pad_token": PAD}
    if prepared.vocabulary.mask_id is not None:
        specials["mask_token"] = MASK
    config = {
        "tokenizer_class": TOKENIZER_CLASS,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    if prepared.kind == "gpt2":
        config["add_prefix_space"] = False
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "special_tokens_map.json", specials)
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
