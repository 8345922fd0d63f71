"""hf_byte_bpe models (GottBERT): `vocab.json` + `merges.txt` read by `tokenizers`' byte-level BPE.

fairseq's hf_byte_bpe encode is `ByteLevelBPETokenizer(vocab, merges,
add_prefix_space=bpe_add_prefix_space).encode(text).ids` written as strings and looked up in dict.txt,
the same scheme as GPT-2's encoder.json + vocab.bpe, so the GPT-2 builder serves.
"""

from __future__ import annotations

from ..reader.dictionary import Dictionary
from .base import PreparedTokenizer, TokenizerFile, TokenizerFiles, TokenizerKind
from .gpt2 import build_gpt2_tokenizer, gpt2_vocabulary, read_gpt2_files


def prepare_hf_byte_bpe(files: TokenizerFiles, dictionary: Dictionary, model_rows: int,
                        bpe: dict) -> PreparedTokenizer:
    from ..reference.encode import Gpt2Encoder

    add_prefix_space = bool(bpe.get("bpe_add_prefix_space", False))
    encoder, merges = read_gpt2_files(files.bpe_vocab, files.bpe_merges)
    vocabulary = gpt2_vocabulary(encoder, merges, dictionary, model_rows, merges_path=files.bpe_merges,
                                 encoder_path=files.bpe_vocab)
    tokenizer = build_gpt2_tokenizer(vocabulary, merges, add_prefix_space=add_prefix_space)
    reference = Gpt2Encoder(encoder, merges, add_prefix_space=add_prefix_space).bpe_string
    return PreparedTokenizer(KIND.name, files, tokenizer, vocabulary, reference, dictionary,
                             details={"add_prefix_space": add_prefix_space},
                             config={"add_prefix_space": add_prefix_space})


KIND = TokenizerKind(
    name="hf_byte_bpe",
    fairseq_bpe="hf_byte_bpe",
    files=(TokenizerFile("bpe_vocab", ("vocab.json",), "byte-level BPE vocab.json (hf_byte_bpe)"),
           TokenizerFile("bpe_merges", ("merges.txt",), "byte-level BPE merges.txt (hf_byte_bpe)")),
    prepare=prepare_hf_byte_bpe,
    card="byte-level BPE (`vocab.json` + `merges.txt`, fairseq's hf_byte_bpe, as GottBERT)",
)
