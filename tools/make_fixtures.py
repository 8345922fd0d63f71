"""Regenerate tests/fixtures/ with the real fairseq (dev-only; the package never needs fairseq).

Run from the repository root with the interpreter of the fairseq venv:

    /path/to/venv-fairseq/bin/python tools/make_fixtures.py

What it makes, all from fixed seeds and text found on any Linux machine (see fixture_text.py):

* tests/fixtures/gpt2_bpe/: a byte-level BPE in OpenAI's GPT-2 file formats (`encoder.json`,
  `vocab.bpe`) trained on corpus A, plus `encode_cases.json`: fairseq's `roberta.encode` ids for
  single lines and pairs and `roberta.fill_mask` results, all with roberta_mlm's dictionary.
* One folder per tiny RoBERTa (2 layers, width 32, 4 heads, FFN 64, 64 positions), laid out like a
  released model: `model.pt`, `dict.txt`, for classifiers `input0/dict.txt` and `label/dict.txt`.
  The models are trained with `fairseq-train --cpu` on corpus B (different text than A, so some
  BPE tokens are missing from dict.txt); older checkpoint layouts are derived from roberta_mlm
  and checked by loading them back with fairseq.
* XLM-R style models on sentencepiece pieces: a UNIGRAM sentencepiece model (XLM-R's kind, stored
  as `sentencepiece.bpe.model` like XLM-R's) trained with the sentencepiece library on
  multilingual corpus S (gettext catalogs, many scripts), character coverage below 1 so rare
  characters are unknown to it; `xlmr_mlm` (post-norm, ships that model file) and
  `xlmr_prenorm_cls` (pre-norm classifier) trained on corpus M, other messages than S: dict.txt
  comes from fairseq-preprocess in frequency order, lacks many pieces and lists a few runs of
  unknown characters. tests/fixtures/spm_unigram/encode_cases.json: fairseq's `roberta.encode`
  ids and the sentencepiece pieces for ~380 lines, pairs and `fill_mask`, with xlmr_mlm's dict.
* In every model folder, `fairseq_outputs.safetensors` + `fairseq_outputs.json`: what fairseq's
  `RobertaHubInterface` computes for a few inputs (hidden states, features, masked-LM logits,
  classification-head logits), to compare a converted model against.

tests/fixtures must stay under 5 MB: the masked-LM logits (tokens x vocabulary floats per sample
and fixture) and the sentencepiece model (its NFKC rules alone are 240 KB) dominate it, hence the
short samples, the small xlmr dict.txt and a single copy of the sentencepiece model.

The script itself runs in about three minutes on two CPU cores. `--keep-work DIR` keeps the
intermediate files (corpora, data-bins, training logs) for debugging. What it shares with
make_variant_fixtures.py and make_tokenizer_fixtures.py (the tiny model's options, the fairseq
CLI runs, the recording of fairseq's outputs, the command line) is in fixture_fairseq.py.

Setting up the venv (Python 3.11, CPU only; it takes about ten minutes):

1. Create a venv and install torch first, on its own: `pip install torch==2.13.0` (a CPU build is
   enough).
2. Install fairseq's runtime dependencies, repeating the torch pin so pip keeps that build:
   `pip install "numpy<2" cffi cython hydra-core==1.3.2 omegaconf==2.3.0 regex sacrebleu bitarray
   scikit-learn tqdm packaging setuptools wheel safetensors sentencepiece torch==2.13.0`.
3. Install fairseq itself from `fairseq-fixed`, a fork of fairseq 0.12.2 that imports on
   Python 3.11: `MAX_JOBS=2 pip install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1`.
   It compiles C++/Cython extensions for several minutes. `--no-deps` keeps its torchaudio
   requirement from replacing torch; `--no-build-isolation` compiles against the torch already
   installed instead of downloading another one.

fairseq checkpoints pickle argparse.Namespace objects, which torch >= 2.6 refuses to load by
default; fixture_fairseq.py sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the scripts and for the
fairseq CLI they run.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from argparse import Namespace
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ in tools/
import fixture_bpe  # noqa: E402
import fixture_fairseq as ff  # noqa: E402  (before torch: sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)
import fixture_spm  # noqa: E402
import fixture_text  # noqa: E402

import torch  # noqa: E402

# Small on purpose: the recorded logits grow with the vocabulary and tests/fixtures must stay
# under 5 MB. 512 still leaves ~170 BPE tokens out of dict.txt.
BPE_VOCAB_SIZE = 512
ACCENTED_WEIGHT = 16  # repeats of the accented lines in corpus A (gives multi-byte merges)
# The fine-tunes get more updates than the masked LMs (ff.MLM_UPDATES) so the classifier really
# learns its labels.
FINETUNE_UPDATES, FINETUNE_LR = 150, "3e-3"

StateDict = OrderedDict[str, torch.Tensor]
OPTIMIZER_STATE_KEPT_IN = "roberta_reg"  # the one checkpoint that keeps last_optimizer_state

# Sentiment cues make the 3-class labels learnable; unequal shares put the labels in a
# frequency order that is not alphabetical (positive, negative, neutral).
SENTIMENT_CUES = {
    "positive": ["This works great.", "Excellent and fast.", "I love this feature."],
    "negative": ["This is broken.", "Terrible and slow.", "I hate this bug."],
    "neutral": ["This is a description.", "It is a function.", "Nothing more to say."],
}
SENTIMENT_SHARES = [("positive", 0.45), ("negative", 0.35), ("neutral", 0.20)]
# The regression target (0..5, like STS-B) is set by one adjective.
SCORE_WORDS = {"terrible": 0.0, "bad": 1.0, "okay": 2.5, "fine": 3.0, "good": 4.0,
               "excellent": 5.0}

# Sentencepiece fixtures (XLM-R style): a unigram model, stored as ff.SPM_FILE.
SPM_VOCAB_SIZE = 1000
# Below 1.0, so rare characters stay unknown to the model (about 540 of the 1250 in corpus S).
SPM_CHARACTER_COVERAGE = 0.995
# dict.txt keeps the most frequent pieces of corpus M (fairseq-preprocess --nwordssrc, counting
# the 4 specials): most of the model's pieces are missing, two runs of unknown characters (the
# commonest Armenian words) are in. Small on purpose: the recorded logits grow with it.
XLMR_DICT_WORDS = 376
# The classifier guesses the script family of a line; label frequencies in corpus M give the
# non-alphabetical label order latin, other, cyrillic.
SCRIPT_LABELS = {"latin": {"en", "de", "fr", "es", "pt_BR", "pl", "cs", "tr", "vi", "sv"},
                 "cyrillic": {"ru", "uk", "bg"}}
SCRIPT_OTHER = "other"
XLMR_HEAD = "script_head"


# --------------------------------------------------------------------------- helpers


def make_bpe_encoder(bpe_dir: Path) -> Callable[[str], str]:
    """fairseq's own GPT-2 encoder, returning the id string exactly as GPT2BPE.encode does."""
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    encoder = get_encoder(str(bpe_dir / "encoder.json"), str(bpe_dir / "vocab.bpe"))
    return lambda text: " ".join(map(str, encoder.encode(text)))


# --------------------------------------------------------------------------- training


def train_tokenizer(corpora: fixture_text.Corpora, out: Path) -> Path:
    bpe_dir = out / "gpt2_bpe"
    vocab, merges = fixture_bpe.train_bpe(
        corpora.bpe + corpora.accented * ACCENTED_WEIGHT, BPE_VOCAB_SIZE)
    fixture_bpe.write_gpt2_files(vocab, merges, bpe_dir)
    return bpe_dir


def preprocess_mlm_data(corpora: fixture_text.Corpora, bpe: Callable[[str], str],
                        work: Path) -> Path:
    """Binarize corpus B; fairseq builds dict.txt from it, in frequency order."""
    raw = work / "raw"
    raw.mkdir()
    ff.write_lines(raw / "train.bpe", [bpe(line) for line in corpora.model_train])
    ff.write_lines(raw / "valid.bpe", [bpe(line) for line in corpora.model_valid])
    return ff.preprocess(work, "raw/train.bpe", "raw/valid.bpe", "bin/mlm", "preprocess_mlm")


def classification_examples(sentences: list[str], bpe: Callable[[str], str],
                            ) -> list[tuple[str, str, float]]:
    """(text, sentiment label, regression score) built around short sentences."""
    rng = random.Random(ff.SEED)
    labels = [label for label, share in SENTIMENT_SHARES for _ in range(round(share * 100))]
    examples = []
    for sentence in sentences:
        if len(bpe(sentence).split()) > 40:  # leave room for the cue, <s> and </s>
            continue
        label = rng.choice(labels)
        word = rng.choice(sorted(SCORE_WORDS))
        cue = rng.choice(SENTIMENT_CUES[label])
        examples.append((f"{cue} The result is {word}. {sentence}", label, SCORE_WORDS[word]))
    return examples


def preprocess_sentence_data(corpora: fixture_text.Corpora, bpe: Callable[[str], str],
                             dict_txt: Path, work: Path) -> tuple[Path, Path]:
    """Build GLUE-style data-bins (input0/, label/) for the classifier and the regressor."""
    raw = work / "raw"
    splits = {
        "train": classification_examples(corpora.model_train, bpe),
        "valid": classification_examples(corpora.model_valid, bpe),
    }
    for split, examples in splits.items():
        ff.write_lines(raw / f"{split}.input0.bpe", [bpe(text) for text, _, _ in examples])
        ff.write_lines(raw / f"{split}.label", [label for _, label, _ in examples])
        ff.write_lines(raw / f"{split}.score", [f"{score:.1f}" for _, _, score in examples])

    for task in ("cls", "reg"):
        ff.preprocess(work, "raw/train.input0.bpe", "raw/valid.input0.bpe", f"bin/{task}/input0",
                      f"preprocess_{task}_input0", "--srcdict", str(dict_txt))
    # Labels of the classifier: fairseq builds this dictionary too (frequency order).
    ff.preprocess(work, "raw/train.label", "raw/valid.label", "bin/cls/label",
                  "preprocess_cls_label")
    # Regression targets are read as raw text from label/<split>.label.
    (work / "bin/reg/label").mkdir(parents=True)
    for split in splits:
        shutil.copy(raw / f"{split}.score", work / f"bin/reg/label/{split}.label")
    return work / "bin" / "cls", work / "bin" / "reg"


def finetune(work: Path, name: str, data: str, init: Path, extra: list[str],
             keep_optimizer: bool, arch: str = "roberta_base") -> Path:
    ff.run([ff.cli("fairseq-train"), data, "--task", "sentence_prediction",
            "--criterion", "sentence_prediction", "--arch", arch, *ff.MODEL_ARGS,
            "--init-token", "0", "--separator-token", "2",
            *ff.train_args(FINETUNE_UPDATES, FINETUNE_LR),
            "--restore-file", str(init.relative_to(work)), "--reset-optimizer",
            "--reset-dataloader", "--reset-meters", "--save-dir", f"ckpt/{name}",
            *([] if keep_optimizer else ["--no-save-optimizer-state"]), *extra],
           work, f"train_{name}")
    return work / "ckpt" / name / "checkpoint_last.pt"


# --------------------------------------------------------------------------- derived layouts


def to_legacy_args(cfg: dict[str, Any], drop: tuple[str, ...]) -> Namespace:
    """The flat argparse.Namespace that fairseq <= 0.10 stored under `args`.

    fairseq 0.12 keeps the whole training Namespace in cfg["model"] for RoBERTa; options that the
    old releases did not have are dropped, so fairseq (and a converter) must fall back to defaults.
    """
    args = Namespace(**vars(cfg["model"]))
    for name in ("_name", *drop):
        if hasattr(args, name):
            delattr(args, name)
    return args


def legacy_state_dict(model: StateDict, prefix: str, fuse_qkv: bool) -> StateDict:
    """Rename a fairseq 0.12 RoBERTa state dict to an older key layout, keeping the key order
    (and the storage shared by the tied embedding and LM-head weights)."""

    def old_name(key: str) -> str:
        key = key.replace(".layernorm_embedding.", ".emb_layer_norm.")
        return prefix + key[len("encoder."):] if key.startswith("encoder.") else key

    renamed: StateDict = OrderedDict()
    for key, tensor in model.items():
        if key.endswith(".version"):  # bookkeeping added by fairseq 0.12's TransformerEncoder
            continue
        layer, _, name = key.rpartition(".self_attn.")
        if fuse_qkv and name[:7] in ("q_proj.", "k_proj.", "v_proj."):
            # One fused in_proj (q|k|v on dim 0) where the first of the three used to be.
            fused = old_name(f"{layer}.self_attn.in_proj_")
            if fused + "weight" not in renamed:
                for kind in ("weight", "bias"):
                    parts = [model[f"{layer}.self_attn.{proj}_proj.{kind}"] for proj in "qkv"]
                    renamed[fused + kind] = torch.cat(parts, dim=0)
            continue
        renamed[old_name(key)] = tensor
    return renamed


def half_precision(model: StateDict) -> StateDict:
    """Cast floating tensors to float16; tensors sharing storage (tied weights) stay shared."""
    cast: dict[tuple[int, int], torch.Tensor] = {}
    out: StateDict = OrderedDict()
    for key, tensor in model.items():
        if tensor.is_floating_point():
            identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            out[key] = cast.setdefault(identity, tensor.half())
        else:
            out[key] = tensor
    return out


def make_derived(out: Path) -> None:
    base = ff.load_checkpoint(out / "roberta_mlm" / "model.pt")

    def new_folder(name: str) -> Path:
        folder = out / name
        folder.mkdir()
        shutil.copy(out / "roberta_mlm" / "dict.txt", folder / "dict.txt")
        return folder

    # 6. fp16: every floating tensor of `model` in half precision, the rest untouched.
    fp16 = dict(base)
    fp16["model"] = half_precision(base["model"])
    torch.save(fp16, new_folder("roberta_mlm_fp16") / "model.pt")

    # 7. fairseq <= 0.9 (2019 releases): `args`, decoder.*, emb_layer_norm, fused in_proj,
    #    no version tensors, torch's legacy (non-zip) serialization. The Namespace loses the
    #    options added later (0.9's RoBERTa hard-wired its embedding layer norm).
    legacy_drop = ("layernorm_embedding", "untie_weights_roberta", "no_scale_embedding",
                   "spectral_norm_classification_head", "encoder_normalize_before")
    v09 = {
        "args": to_legacy_args(base["cfg"], legacy_drop),
        "model": legacy_state_dict(base["model"], "decoder.", fuse_qkv=True),
        "optimizer_history": base["optimizer_history"],
        "extra_state": {"train_iterator": base["extra_state"].get("train_iterator")},
        "last_optimizer_state": None,
    }
    torch.save(v09, new_folder("roberta_legacy_v09") / "model.pt",
               _use_new_zipfile_serialization=False)

    # 8. fairseq 0.10: `args`, encoder.*, emb_layer_norm, separate q/k/v, no version tensors.
    v010 = {
        "args": to_legacy_args(base["cfg"], ("layernorm_embedding",)),
        "model": legacy_state_dict(base["model"], "encoder.", fuse_qkv=False),
        "optimizer_history": base["optimizer_history"],
        "extra_state": {"train_iterator": base["extra_state"].get("train_iterator")},
    }
    torch.save(v010, new_folder("roberta_v010") / "model.pt")

    # 9. cfg pickled as an omegaconf DictConfig (late-2020 files); cfg["model"] stays a Namespace,
    #    which omegaconf only accepts with the allow_objects flag.
    from omegaconf import DictConfig, OmegaConf

    with_omegaconf = dict(base)
    with_omegaconf["cfg"] = OmegaConf.create(base["cfg"], flags={"allow_objects": True})
    assert isinstance(with_omegaconf["cfg"], DictConfig)
    assert isinstance(with_omegaconf["cfg"]["model"], Namespace)
    torch.save(with_omegaconf, new_folder("roberta_omegaconf") / "model.pt")


def make_two_heads(out: Path) -> None:
    """roberta_cls plus roberta_reg's head stored under a second name, `stsb`."""
    folder = out / "roberta_two_heads"
    shutil.copytree(out / "roberta_cls", folder)
    state = ff.load_checkpoint(folder / "model.pt")
    regressor = ff.load_checkpoint(out / "roberta_reg" / "model.pt")["model"]
    source = "classification_heads.sentence_classification_head."
    for key, tensor in regressor.items():
        if key.startswith(source):
            state["model"]["classification_heads.stsb." + key[len(source):]] = tensor.clone()
    torch.save(state, folder / "model.pt")


# --------------------------------------------------------------------------- recording


def fill_up(hub: Any, words: list[str], max_ids: int) -> str:
    """The words, in order, that fit in `max_ids` ids (a word that does not fit is skipped)."""
    kept: list[str] = []
    for word in words:
        if len(hub.encode(" ".join([*kept, word]))) <= max_ids:
            kept.append(word)
    return " ".join(kept)


def record_encode_cases(hub: Any, corpora: fixture_text.Corpora, bpe_dir: Path) -> None:
    rng = random.Random(ff.SEED)
    lines = (corpora.held_out[:150] + fixture_text.EDGE_CASES
             + [fixture_text.long_line(corpora.held_out)] + corpora.foreign[::8])
    lines += [ff.random_text(rng) for _ in range(10)]
    pairs = [(corpora.held_out[150 + 2 * i], corpora.held_out[151 + 2 * i]) for i in range(15)]
    pairs += [(corpora.held_out[200 + i], corpora.foreign[3 + 80 * i]) for i in range(10)]
    pairs += [("", ""), ("", "Hello world"), ("Hello world", ""), (" leading", "trailing "),
              ("Line one.\nLine two.", "Tab\tseparated")]

    def case(text: str) -> dict[str, Any]:
        return {"text": text, "bpe": hub.bpe.encode(text), "ids": hub.encode(text).tolist()}

    fill_mask, _ = ff.record_fill_mask(hub, ff.masked_sentences(corpora.held_out[300:], rng))
    dictionary = hub.task.source_dictionary
    gpt2_ids = json.loads((bpe_dir / "encoder.json").read_text()).values()
    missing = sorted(i for i in gpt2_ids if dictionary.index(str(i)) == dictionary.unk())
    import fairseq

    data = {
        "description": "Ground truth from fairseq's RobertaHubInterface with roberta_mlm's "
                       "dict.txt and the GPT-2-format BPE of this folder. `bpe` is "
                       "GPT2BPE.encode(text) (space-separated GPT-2 ids), `ids` is "
                       "roberta.encode(text...) (fairseq ids incl. <s>/</s>). fill_mask: "
                       "`fairseq_fill_mask` is roberta.fill_mask(masked_text, topk) as "
                       "(filled_text, probability, predicted_token) triples; `topk_ids` / "
                       "`topk_probs` are the same top-k read directly from the logits at the "
                       "<mask> position.",
        "fairseq_version": fairseq.__version__,
        "model": "roberta_mlm",
        "special_ids": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3,
                        "<mask>": hub.task.mask_idx},
        "gpt2_ids_missing_from_dict": missing,
        "single": [case(text) for text in lines],
        "pairs": [{"texts": [a, b], "ids": hub.encode(a, b).tolist()} for a, b in pairs],
        "fill_mask_topk": ff.FILL_MASK_TOPK,
        "fill_mask": fill_mask,
    }
    (bpe_dir / "encode_cases.json").write_text(ff.compact_json(data), encoding="utf-8")


# --------------------------------------------------------------------------- sentencepiece


def train_sentencepiece(multilingual: fixture_text.MultilingualCorpora, model_type: str,
                        folder: Path) -> Path:
    """A sentencepiece model trained on corpus S, saved as XLM-R names it."""
    folder.mkdir()
    model = folder / ff.SPM_FILE
    model.write_bytes(fixture_spm.train(multilingual.spm, model_type, SPM_VOCAB_SIZE,
                                        SPM_CHARACTER_COVERAGE))
    spec = fixture_spm.describe(model.read_bytes())
    assert (spec["model_type"], spec["normalizer"]) == (model_type, "nmt_nfkc"), spec
    return model


def make_spm_encoder(model: Path) -> Callable[[str], str]:
    """fairseq's own SentencepieceBPE.encode: the pieces of EncodeAsPieces joined by spaces."""
    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig

    return SentencepieceBPE(SentencepieceConfig(sentencepiece_model=str(model))).encode


def preprocess_xlmr_data(multilingual: fixture_text.MultilingualCorpora,
                         spm: Callable[[str], str], work: Path) -> Path:
    """Binarize corpus M; dict.txt keeps its XLMR_DICT_WORDS most frequent pieces."""
    raw = work / "raw"
    ff.write_lines(raw / "train.spm", [spm(text) for _, text in multilingual.model_train])
    ff.write_lines(raw / "valid.spm", [spm(text) for _, text in multilingual.model_valid])
    return ff.preprocess(work, "raw/train.spm", "raw/valid.spm", "bin/xlmr", "preprocess_xlmr",
                         "--nwordssrc", str(XLMR_DICT_WORDS))


def script_label(language: str) -> str:
    for label, languages in SCRIPT_LABELS.items():
        if language in languages:
            return label
    return SCRIPT_OTHER


def script_examples(texts: list[tuple[str, str]], spm: Callable[[str], str],
                    ) -> list[tuple[str, str, float]]:
    """(text, script label, unused score) for texts that fit in the positions with <s>, </s>."""
    return [(text, script_label(language), 0.0) for language, text in texts
            if len(spm(text).split()) <= ff.MAX_POSITIONS - 2]


def preprocess_script_data(multilingual: fixture_text.MultilingualCorpora,
                           spm: Callable[[str], str], dict_txt: Path, work: Path) -> Path:
    """GLUE-style data-bin (input0/, label/) for the script classifier."""
    raw = work / "raw"
    splits = {"train": script_examples(multilingual.model_train, spm),
              "valid": script_examples(multilingual.model_valid, spm)}
    for split, examples in splits.items():
        ff.write_lines(raw / f"{split}.script.input0.spm",
                       [spm(text) for text, _, _ in examples])
        ff.write_lines(raw / f"{split}.script.label", [label for _, label, _ in examples])
    ff.preprocess(work, "raw/train.script.input0.spm", "raw/valid.script.input0.spm",
                  "bin/xlmr_cls/input0", "preprocess_xlmr_cls_input0", "--srcdict", str(dict_txt))
    ff.preprocess(work, "raw/train.script.label", "raw/valid.script.label", "bin/xlmr_cls/label",
                  "preprocess_xlmr_cls_label")
    return work / "bin" / "xlmr_cls"


def choose_spm_samples(hub: Any, multilingual: fixture_text.MultilingualCorpora,
                       ) -> dict[str, Any]:
    """Texts of s0, s2, s3 and the padded batch for the sentencepiece models."""
    first_lines = {}
    for language, text in multilingual.held_out:
        first_lines.setdefault(language, text)
    s3_languages = ["de", "ru", "el", "ar", "hi", "ja", "ko", "he", "th", "ka"]
    return {
        "s0": "Return a new list.",
        # Accents, Cyrillic, a run of CJK characters the model does not know, not in dict.txt
        # (<unk>), an emoji (the same) and an Armenian word (unknown to the model, in dict.txt).
        "s2": "Café, Привет! 東京 😀 է",
        # All 64 positions, <s> and </s> included: position ids up to 65, the table's last row.
        "s3": fill_up(hub, " ".join(first_lines[lang] for lang in s3_languages).split(),
                      ff.MAX_POSITIONS),
        "batch": ff.check_batch(hub, ["世界", "мир", "Γεια"]),
    }


def spm_encode_lines(corpora: fixture_text.Corpora,
                     multilingual: fixture_text.MultilingualCorpora,
                     ) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """Single lines, pairs and masked sentences for the sentencepiece ground truth."""
    rng = random.Random(ff.SEED)
    held_out = [text for _, text in multilingual.held_out]
    long_text = " ".join(held_out[1::9][:6])  # several scripts, over 64 pieces
    lines = (held_out + fixture_text.EDGE_CASES + fixture_text.SPM_EDGE_CASES + [long_text]
             + [ff.random_text(rng) for _ in range(20)])
    # Word-masking needs spaces between words.
    spaced = [text for language, text in multilingual.held_out
              if language not in ("ja", "zh_CN", "th", *fixture_text.UNSEEN_LANGUAGES)]
    pairs = [(held_out[i], held_out[-1 - i]) for i in range(0, 100, 4)]
    pairs += [("", ""), ("", "Привет"), ("東京", ""), (" ☃ ", "☃☃"), ("\tleading", "trailing\n")]
    return lines, pairs, ff.masked_sentences(spaced[3::5], rng)


def record_spm_encode_cases(folder: Path, hub: Any, spm_model: Path, model: str,
                            corpora: fixture_text.Corpora,
                            multilingual: fixture_text.MultilingualCorpora) -> dict[str, int]:
    """encode_cases.json of the sentencepiece tokenizer, with `model`'s dict.txt."""
    import fairseq
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_model))
    dictionary = hub.task.source_dictionary
    lines, pairs, masked = spm_encode_lines(corpora, multilingual)

    def case(text: str) -> dict[str, Any]:
        pieces = sp.EncodeAsPieces(text)
        assert hub.bpe.encode(text) == " ".join(pieces)
        return {"text": text, "pieces": pieces,
                "spm_unknown": [i for i, spm_id in enumerate(sp.EncodeAsIds(text))
                                if spm_id == sp.unk_id()],
                "ids": hub.encode(text).tolist()}

    single = [case(text) for text in lines]
    spec = fixture_spm.describe(spm_model.read_bytes())
    normal_pieces = [piece for piece, _, kind in spec.pop("pieces") if kind == "normal"]
    missing = [piece for piece in normal_pieces if dictionary.index(piece) == dictionary.unk()]
    not_pieces = [symbol for symbol in dictionary.symbols[dictionary.nspecial:]
                  if sp.PieceToId(symbol) == sp.unk_id() and symbol != "<mask>"
                  and not symbol.startswith("madeupword")]

    def split_again(c: dict[str, Any]) -> bool:  # fairseq's whitespace split changed the pieces
        return len(c["ids"]) != len(c["pieces"]) + 2

    def unknown_piece_in_dict(c: dict[str, Any]) -> bool:
        return not split_again(c) and any(c["ids"][1 + i] != dictionary.unk()
                                           for i in c["spm_unknown"])

    def unknown_run(c: dict[str, Any]) -> bool:  # several unknown characters in one piece
        return any(len(c["pieces"][i]) > 1 for i in c["spm_unknown"])

    counts = {
        "single": len(single),
        "pairs": len(pairs),
        "lines_with_pieces_missing_from_dict": sum(dictionary.unk() in c["ids"] for c in single),
        "lines_with_unknown_pieces": sum(bool(c["spm_unknown"]) for c in single),
        "lines_with_unknown_runs_of_2_or_more_characters": sum(map(unknown_run, single)),
        "lines_with_unknown_pieces_found_in_dict": sum(map(unknown_piece_in_dict, single)),
        "lines_where_fairseq_splits_or_drops_pieces": sum(map(split_again, single)),
    }
    data = {
        "description": f"Ground truth from fairseq's RobertaHubInterface with {model}'s "
                       f"dict.txt and the sentencepiece model {model}/{ff.SPM_FILE}. `pieces` "
                       "is sp.EncodeAsPieces(text) (SentencepieceBPE.encode joins them with "
                       "spaces); `spm_unknown` holds the indices of the pieces the sentencepiece "
                       "model itself maps to <unk> (a run of unknown characters is ONE such "
                       "piece, spelled as the text); `ids` is roberta.encode(text...) (fairseq "
                       "ids incl. <s>/</s>): fairseq splits the joined pieces again on "
                       "whitespace (Python's \\s, which also matches U+0085 inside a piece) and "
                       "looks each one up in dict.txt by its text, <unk> (3) if absent, so a run "
                       "of unknown characters that dict.txt lists gets its own id. fill_mask: "
                       "as in gpt2_bpe/encode_cases.json. Characters that are not printable are "
                       "\\u-escaped; others are plain UTF-8.",
        "fairseq_version": fairseq.__version__,
        "sentencepiece_version": sentencepiece.__version__,
        "model": model,
        "sentencepiece_model": f"{model}/{ff.SPM_FILE}",
        "dict": f"{model}/dict.txt",
        "special_ids": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": hub.task.mask_idx},
        "sentencepiece": spec,
        "counts": counts,
        "spm_pieces_missing_from_dict": missing,
        "dict_symbols_that_are_no_spm_piece": not_pieces,
        "single": single,
        "pairs": [{"texts": [a, b], "ids": hub.encode(a, b).tolist()} for a, b in pairs],
        "fill_mask_topk": ff.FILL_MASK_TOPK,
        "fill_mask": ff.record_fill_mask(hub, masked)[0],
    }
    folder.mkdir(exist_ok=True)
    (folder / "encode_cases.json").write_text(ff.compact_json(data, ascii_only=False),
                                              encoding="utf-8")
    return counts


# --------------------------------------------------------------------------- main

DESCRIPTIONS = {
    "roberta_mlm": "post-norm masked LM, fairseq 0.12 checkpoint (cfg dict) as fairseq-train "
                   "saves it",
    "roberta_mlm_untied": "as roberta_mlm, trained with --untie-weights-roberta",
    "roberta_cls": "sentence_prediction fine-tune of roberta_mlm, 3 classes, head "
                   "'sentiment_head', word labels in fairseq-built (frequency-ordered) label dict",
    "roberta_reg": "sentence_prediction fine-tune of roberta_mlm, --regression-target "
                   "--num-classes 1, default head name; keeps last_optimizer_state",
    "roberta_two_heads": "roberta_cls plus roberta_reg's regression head stored as 'stsb'",
    "roberta_mlm_fp16": "roberta_mlm with every floating tensor of `model` cast to float16",
    "roberta_legacy_v09": "roberta_mlm in the 2019 (fairseq <= 0.9) layout: `args` Namespace, "
                          "decoder.* keys, emb_layer_norm, fused in_proj (q, k, v stacked), "
                          "no version tensors, torch legacy non-zip serialization",
    "roberta_v010": "roberta_mlm in the fairseq 0.10 layout: `args` Namespace, encoder.* keys, "
                    "emb_layer_norm, separate q/k/v, no version tensors",
    "roberta_omegaconf": "roberta_mlm with `cfg` pickled as an omegaconf DictConfig "
                         "(cfg['model'] is still an argparse.Namespace)",
    "roberta_prenorm": "pre-norm masked LM (--arch roberta_prenorm: encoder_normalize_before, "
                       "no layernorm_embedding, final encoder layer_norm)",
}
# Models on sentencepiece pieces (XLM-R style), recorded with bpe="sentencepiece".
SPM_DESCRIPTIONS = {
    "xlmr_mlm": "post-norm masked LM on sentencepiece (unigram) pieces, folder laid out like "
                "XLM-R's (with `sentencepiece.bpe.model`); dict.txt from other text "
                f"than the model's (fairseq-preprocess --nwordssrc {XLMR_DICT_WORDS}: frequency "
                "order, most of the model's pieces missing, two runs of unknown characters in)",
    "xlmr_prenorm_cls": "pre-norm (--arch roberta_prenorm) sentence_prediction fine-tune on the "
                        f"same pieces and dict.txt, 3 classes, head '{XLMR_HEAD}' (script family "
                        "of the line), labels in fairseq-built (frequency-ordered) label dict",
}
SAME_OUTPUTS_AS_MLM = ("roberta_legacy_v09", "roberta_v010", "roberta_omegaconf")


def assemble(name: str, checkpoint: Path, out: Path, dict_txt: Path,
             sentence_prediction: bool = False, label_dict: Path | None = None,
             spm_model: Path | None = None) -> None:
    """A released-model folder; fairseq's sentence_prediction loader wants input0/ (and label/
    unless it is a regression head)."""
    folder = out / name
    folder.mkdir()
    shutil.copy(checkpoint, folder / "model.pt")
    shutil.copy(dict_txt, folder / "dict.txt")
    if spm_model is not None:
        shutil.copy(spm_model, folder / ff.SPM_FILE)
    if sentence_prediction:
        (folder / "input0").mkdir()
        shutil.copy(dict_txt, folder / "input0" / "dict.txt")
    if label_dict is not None:
        (folder / "label").mkdir()
        shutil.copy(label_dict, folder / "label" / "dict.txt")


def write_readme(out: Path, spm_counts: dict[str, int]) -> None:
    """A short index of the fixtures, regenerated with them."""
    rows = "\n".join(f"| `{name}` | {text} |"
                     for name, text in {**DESCRIPTIONS, **SPM_DESCRIPTIONS}.items())
    lines, pairs = spm_counts["single"], spm_counts["pairs"]
    missing = spm_counts["lines_with_pieces_missing_from_dict"]
    unknown = spm_counts["lines_with_unknown_pieces"]
    runs = spm_counts["lines_with_unknown_runs_of_2_or_more_characters"]
    in_dict = spm_counts["lines_with_unknown_pieces_found_in_dict"]
    (out / "README.md").write_text(f"""# fairseq fixtures

Generated by `tools/make_fixtures.py` with the real fairseq; do not edit by hand (see that
script's docstring for the venv it needs). Tiny RoBERTa models: {ff.NUM_LAYERS} layers, width 32,
4 heads, FFN 64, `--max-positions {ff.MAX_POSITIONS}` (position table of {ff.MAX_POSITIONS + 2} rows).

| folder | what it is |
| --- | --- |
{rows}

Every model folder holds `model.pt` and `dict.txt` (classifiers also `input0/dict.txt` and
`label/dict.txt`, the regressor `input0/dict.txt`), plus fairseq's recorded outputs:
`fairseq_outputs.safetensors` (tensors named `{{sample}}.input_ids`, `{{sample}}.hidden.{{i}}`,
`{{sample}}.features`, `{{sample}}.mlm_logits`, `{{sample}}.head.{{name}}` for the samples `s0`,
`s2`, `s3` and the right-padded `batch`; there is no `s1`) and `fairseq_outputs.json` (texts, head
names and labels, the tokenizer files, what each tensor is). The samples are short to keep
tests/fixtures under 5 MB; `s3` of the xlmr_* models fills all {ff.MAX_POSITIONS} positions.

`gpt2_bpe/` holds a GPT-2-format byte-level BPE (`encoder.json`, `vocab.bpe`; trained here, not
OpenAI's) shared by the roberta_* models; the model folders deliberately do not contain it. Some
of its tokens are not in `dict.txt` (listed in `encode_cases.json`, which also holds fairseq's
`roberta.encode` and `roberta.fill_mask` results with `roberta_mlm`).

The xlmr_* models read sentencepiece pieces. `xlmr_mlm/{ff.SPM_FILE}` is a UNIGRAM
model (as is XLM-R's file of that name): {SPM_VOCAB_SIZE} pieces, `nmt_nfkc` normalization,
character coverage {SPM_CHARACTER_COVERAGE}. It is the only copy (its NFKC table alone is
240 KB): `xlmr_prenorm_cls` uses the same model but does not ship it.

`spm_unigram/encode_cases.json` holds fairseq's `roberta.encode` ids with xlmr_mlm's dict.txt and
the sentencepiece pieces for {lines} lines and {pairs} pairs, the pieces missing from dict.txt
and `roberta.fill_mask` results. In {missing} lines some piece is not in dict.txt (<unk>);
{unknown} lines have characters unknown to the sentencepiece model ({runs} a run of several in
one piece; in {in_dict} such a piece is a symbol of dict.txt).
""", encoding="utf-8")


def main() -> None:
    started = time.time()
    options = ff.start(__doc__)
    with ff.work_dir(options.keep_work, prefix="fixtures-") as work:
        out = work / "out"
        out.mkdir()

        print("corpora and BPE ...", flush=True)
        corpora = fixture_text.load_corpora(seed=0)
        bpe_dir = train_tokenizer(corpora, out)
        bpe = make_bpe_encoder(bpe_dir)

        print("fairseq-preprocess ...", flush=True)
        mlm_bin = preprocess_mlm_data(corpora, bpe, work)
        dict_txt = mlm_bin / "dict.txt"
        cls_bin, reg_bin = preprocess_sentence_data(corpora, bpe, dict_txt, work)

        print("fairseq-train (5 runs) ...", flush=True)
        mlm = ff.train_mlm(work, "roberta_mlm", [])
        untied = ff.train_mlm(work, "roberta_mlm_untied", ["--untie-weights-roberta"])
        prenorm = ff.train_mlm(work, "roberta_prenorm", [], arch="roberta_prenorm")
        cls = finetune(work, "roberta_cls", "bin/cls", mlm,
                       ["--num-classes", "3", "--classification-head-name", "sentiment_head"],
                       keep_optimizer=OPTIMIZER_STATE_KEPT_IN == "roberta_cls")
        reg = finetune(work, "roberta_reg", "bin/reg", mlm,
                       ["--num-classes", "1", "--regression-target"],
                       keep_optimizer=OPTIMIZER_STATE_KEPT_IN == "roberta_reg")

        assemble("roberta_mlm", mlm, out, dict_txt)
        assemble("roberta_mlm_untied", untied, out, dict_txt)
        assemble("roberta_prenorm", prenorm, out, dict_txt)
        assemble("roberta_cls", cls, out, dict_txt, sentence_prediction=True,
                 label_dict=cls_bin / "label" / "dict.txt")
        assemble("roberta_reg", reg, out, dict_txt, sentence_prediction=True)
        make_two_heads(out)
        make_derived(out)

        print("sentencepiece models, fairseq-preprocess ...", flush=True)
        multilingual = fixture_text.load_multilingual(corpora, seed=0)
        spm_model = train_sentencepiece(multilingual, "unigram", work / "spm_unigram")
        spm = make_spm_encoder(spm_model)
        xlmr_bin = preprocess_xlmr_data(multilingual, spm, work)
        xlmr_dict = xlmr_bin / "dict.txt"
        xlmr_cls_bin = preprocess_script_data(multilingual, spm, xlmr_dict, work)

        print("fairseq-train (3 runs, sentencepiece) ...", flush=True)
        xlmr = ff.train_mlm(work, "xlmr_mlm", [], data="bin/xlmr")
        xlmr_prenorm = ff.train_mlm(work, "xlmr_prenorm_mlm", [], arch="roberta_prenorm",
                                    data="bin/xlmr")
        xlmr_cls = finetune(work, "xlmr_prenorm_cls", "bin/xlmr_cls", xlmr_prenorm,
                            ["--num-classes", "3", "--classification-head-name", XLMR_HEAD],
                            keep_optimizer=False, arch="roberta_prenorm")
        assemble("xlmr_mlm", xlmr, out, xlmr_dict, spm_model=spm_model)
        assemble("xlmr_prenorm_cls", xlmr_cls, out, xlmr_dict, sentence_prediction=True,
                 label_dict=xlmr_cls_bin / "label" / "dict.txt")

        print("recording fairseq outputs ...", flush=True)
        gpt2 = ff.gpt2_tokenizer(bpe_dir)
        mlm_hub = ff.load_hub(out / "roberta_mlm", gpt2)
        # s2: accents and an emoji, so some BPE tokens are <unk>.
        samples = ff.choose_samples(mlm_hub, corpora.held_out, s2="Café 😀")
        examples = classification_examples(corpora.held_out[:200], bpe)
        outputs = {name: ff.record_outputs(name, out / name, gpt2, samples, description, examples)
                   for name, description in DESCRIPTIONS.items()}
        check_outputs(outputs)
        record_encode_cases(mlm_hub, corpora, bpe_dir)

        spm_files = ff.spm_tokenizer(out / "xlmr_mlm" / ff.SPM_FILE)  # the only copy, see README
        xlmr_hub = ff.load_hub(out / "xlmr_mlm", spm_files)
        spm_samples = choose_spm_samples(xlmr_hub, multilingual)
        spm_examples = script_examples(multilingual.held_out, spm)
        for name, description in SPM_DESCRIPTIONS.items():
            ff.record_outputs(name, out / name, spm_files, spm_samples, description,
                              spm_examples)
        counts = record_spm_encode_cases(out / "spm_unigram", xlmr_hub, spm_model, "xlmr_mlm",
                                         corpora, multilingual)
        print("sentencepiece encode cases:", json.dumps(counts))
        write_readme(out, counts)

        ff.replace_tree(out, ff.FIXTURES)
    print(f"wrote {ff.FIXTURES} in {time.time() - started:.0f} s")


def check_outputs(outputs: dict[str, dict[str, torch.Tensor]]) -> None:
    """The derived layouts must load in fairseq to the very same model."""
    reference = outputs["roberta_mlm"]
    for name in SAME_OUTPUTS_AS_MLM:
        assert outputs[name].keys() == reference.keys(), name
        for key, value in reference.items():
            assert torch.equal(outputs[name][key], value), f"{name}: {key} differs"
    fp16 = outputs["roberta_mlm_fp16"]
    assert max((fp16[k] - v).abs().max().item() for k, v in reference.items()) < 0.1
    two, cls = outputs["roberta_two_heads"], outputs["roberta_cls"]
    for key, value in cls.items():
        assert torch.equal(two[key], value), f"roberta_two_heads: {key} differs"
    assert {k for k in two if ".head.stsb" in k}, "fairseq did not register the stsb head"


if __name__ == "__main__":
    main()
