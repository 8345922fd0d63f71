"""GPT-2 byte-level BPE models (RoBERTa): encoder.json + vocab.bpe, with ids from dict.txt.

fairseq encodes text with OpenAI's GPT-2 BPE, writes the GPT-2 ids as strings ("13 850 ..."), and looks
those strings up in dict.txt. So the converted vocabulary is token -> fairseq id of str(gpt2 id).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from ..errors import ConversionError, library_message
from ..reader.dictionary import BOS, EOS, MASK, SPECIAL_SYMBOLS, UNK, Dictionary
from ..reader.files import read_input_file
from .base import PreparedTokenizer, TokenizerFile, TokenizerFiles, TokenizerKind
from .vocab import TokenVocabulary, assign_ids


def read_gpt2_files(encoder_json: Path, vocab_bpe: Path, *,
                    fairseq_lines: bool = False) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """encoder.json and the merges. `fairseq_lines`: read the merges as fairseq's gpt2 BPE does
    (fairseq/data/encoders/gpt2_bpe_utils.get_encoder), which drops the file's first line (the
    `#version` header) and its last (empty after the final newline) whatever they hold: a file without
    the header loses its first merge there, one without a final newline its last. Otherwise as
    `tokenizers` reads merges.txt: every line but a `#version` header and empty ones."""
    data = read_input_file(encoder_json, "a GPT-2 encoder.json")
    try:
        encoder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ConversionError(f"is not a readable GPT-2 encoder.json ({library_message(error)})",
                              path=encoder_json) from None
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise ConversionError("is not a GPT-2 encoder.json (token -> id)", path=encoder_json)
    try:
        text = read_input_file(vocab_bpe, "a GPT-2 vocab.bpe").decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConversionError(f"is not a readable GPT-2 vocab.bpe ({library_message(error)})", path=vocab_bpe) from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # Python's universal newlines
    first = 1
    if fairseq_lines:
        lines, first = lines[1:-1], 2
    merges = []
    for number, line in enumerate(lines, start=first):
        if not line or (not fairseq_lines and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConversionError(f"line {number} is not a merge 'a b'", path=vocab_bpe)
        merges.append((parts[0], parts[1]))
    return encoder, merges


def gpt2_vocabulary(encoder: dict[str, int], merges: list[tuple[str, str]], dictionary: Dictionary,
                    model_rows: int, *, merges_path: Path, encoder_path: Path = Path("encoder.json")) -> TokenVocabulary:
    unknown_parts = sorted({part for a, b in merges for part in (a, b, a + b) if part not in encoder})
    if unknown_parts:
        raise ConversionError(
            f"has merges over tokens that encoder.json lacks ({', '.join(map(repr, unknown_parts[:5]))})",
            path=merges_path, hint="encoder.json and vocab.bpe must come from the same BPE",
        )
    needed = {part for a, b in merges for part in (a, b, a + b)}
    tokens = sorted(encoder.items(), key=lambda item: item[1])
    return assign_ids(dictionary, model_rows, [(token, str(gpt2_id)) for token, gpt2_id in tokens], needed,
                      produced_as="GPT-2 ids in", segmenter_path=encoder_path)


def build_gpt2_tokenizer(vocabulary: TokenVocabulary, merges: list[tuple[str, str]], *,
                         add_prefix_space: bool = False) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary.ids, merges=merges, unk_token=UNK, fuse_unk=False))
    # The same split regex and byte mapping as OpenAI's encoder, which fairseq uses.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    # <s> A </s> and <s> A </s> </s> B </s>, as RobertaHubInterface.encode frames sentences.
    tokenizer.post_processor = processors.RobertaProcessing(
        (EOS, vocabulary.ids[EOS]), (BOS, vocabulary.ids[BOS]), trim_offsets=True,
        add_prefix_space=add_prefix_space
    )
    specials = [AddedToken(symbol, special=True, normalized=False) for symbol in SPECIAL_SYMBOLS]
    if vocabulary.mask_id is not None:
        specials.append(AddedToken(MASK, special=True, lstrip=True, normalized=False))
    tokenizer.add_special_tokens(specials)
    return tokenizer




def prepare_gpt2(files: TokenizerFiles, dictionary: Dictionary, model_rows: int, bpe: dict) -> PreparedTokenizer:
    from ..reference.encode import Gpt2Encoder, fairseq_gpt2_merges

    encoder, merges = read_gpt2_files(files.encoder_json, files.vocab_bpe, fairseq_lines=True)
    vocabulary = gpt2_vocabulary(encoder, merges, dictionary, model_rows, merges_path=files.vocab_bpe,
                                 encoder_path=files.encoder_json)
    tokenizer = build_gpt2_tokenizer(vocabulary, merges)
    # fairseq's encoder, with the merges as fairseq reads the file, not as parsed above.
    reference = Gpt2Encoder(encoder, fairseq_gpt2_merges(files.vocab_bpe.read_bytes())).bpe_string
    return PreparedTokenizer(KIND.name, files, tokenizer, vocabulary, reference, dictionary,
                             config={"add_prefix_space": False})


KIND = TokenizerKind(
    name="gpt2",
    fairseq_bpe="gpt2",
    files=(TokenizerFile("encoder_json", ("encoder.json",), "GPT-2 encoder.json"),
           TokenizerFile("vocab_bpe", ("vocab.bpe",), "GPT-2 vocab.bpe")),
    prepare=prepare_gpt2,
    card="GPT-2 byte-level BPE (`encoder.json` + `vocab.bpe`)",
)
