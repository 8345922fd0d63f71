"""What the fixture scripts share: fairseq runs, fairseq's recorded outputs, the command line.

Imported by make_fixtures.py, make_variant_fixtures.py and make_tokenizer_fixtures.py (dev-only),
which run with the interpreter of the fairseq venv (make_fixtures.py's docstring says how to set
it up). It holds:

* the tiny model of every fixture (MODEL_ARGS: 2 layers, width 32, 4 heads, FFN 64, 64
  positions) and the seed of torch and of the training runs;
* the fairseq CLI: `run`, `train_args`, `preprocess`, `train_mlm`;
* the hub interface: the tokenizer arguments of `RobertaModel.from_pretrained`, `load_hub`, the
  samples s0, s2, s3 and the right-padded batch, `forward_all`;
* fairseq_outputs.safetensors + fairseq_outputs.json: `record_outputs` for RoBERTa models, and
  `outputs_meta`, `tensor_notes`, `save_outputs` for a script that records more (X-MOD);
* the encode cases: `record_fill_mask`, `masked_sentences`, `random_text`, `compact_json`;
* the command line: `start` (--keep-work, quiet logs, seeded torch), `work_dir`, `replace_tree`.

fairseq checkpoints pickle argparse.Namespace objects, which torch >= 2.6 refuses to load by
default; importing this module sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 before torch is imported,
for the script and for the fairseq CLI it runs. Import it before torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# Must be set before torch (and fairseq) load any checkpoint (see the module docstring).
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
VENV_BIN = Path(sys.executable).parent  # fairseq-train & co. live next to this interpreter

SEED = 1
MAX_POSITIONS = 64  # not 512, so a converter cannot get away with a constant
NUM_LAYERS = 2
MODEL_ARGS = [
    "--encoder-layers", str(NUM_LAYERS),
    "--encoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "4",
    "--max-positions", str(MAX_POSITIONS),
]
# The masked LMs only need to be non-degenerate (about a second per 50 updates on CPU).
MLM_UPDATES, MLM_LR = 50, "1e-3"
# XLM-R's name for its sentencepiece model file (a unigram model); xlmr_mlm holds the only copy.
SPM_FILE = "sentencepiece.bpe.model"
FILL_MASK_TOPK = 3
# Length in ids of the long sample s3 of choose_samples (limited by the size budget of
# tests/fixtures).
S3_IDS = 40


# --------------------------------------------------------------------------- command line


def only_names(everything: list[str]) -> list[str]:
    """--only NAME ...: the fixtures of `everything` to (re)make, in its order (default: all).

    Taken off sys.argv before start(), whose parser (shared by the fixture scripts) knows only
    --keep-work."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--only", nargs="+", metavar="NAME")
    known, rest = parser.parse_known_args()
    sys.argv[1:] = rest
    unknown = sorted(set(known.only or []) - set(everything))
    if unknown:
        sys.exit(f"--only: unknown fixture(s) {', '.join(unknown)}; "
                 f"known: {', '.join(everything)}")
    return [name for name in everything if known.only is None or name in known.only]


def start(doc: str) -> argparse.Namespace:
    """The options every fixture script takes (--keep-work); quiets fairseq and seeds torch."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--keep-work", type=Path, metavar="DIR",
                        help="work in DIR (must not exist) and keep it, for debugging")
    options = parser.parse_args()
    # fairseq and hydra log every config they build and warn about deprecated hydra usage.
    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(SEED)  # task.build_model initializes weights from torch's global generator
    return options


@contextlib.contextmanager
def work_dir(keep: Path | None, prefix: str) -> Iterator[Path]:
    """The directory for intermediate files: `keep` (created, kept) or a temporary one."""
    if keep:
        work = keep.resolve()
        work.mkdir(parents=True)
        yield work
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as temporary:
            yield Path(temporary)


def replace_tree(source: Path, target: Path) -> None:
    """Copy the folder `source` to `target`, removing whatever `target` held before."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


# --------------------------------------------------------------------------- fairseq CLI


def run(cmd: list[str], cwd: Path, log_name: str) -> None:
    """Run a fairseq CLI command, keeping its (long) log in the work dir."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    log = cwd / "logs" / f"{log_name}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as handle:
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed, see its log:\n{log.read_text()[-4000:]}")


def cli(name: str) -> str:
    return str(VENV_BIN / name)


def train_args(updates: int, lr: str) -> list[str]:
    """Options shared by every fairseq-train run (Adam, linear warmup and decay, CPU)."""
    return [
        "--cpu", "--seed", str(SEED), "--num-workers", "0",
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-6",
        "--lr", lr, "--lr-scheduler", "polynomial_decay", "--warmup-updates", "5",
        "--total-num-update", str(updates), "--max-update", str(updates),
        "--batch-size", "16", "--disable-validation", "--no-epoch-checkpoints",
        "--log-format", "simple", "--log-interval", "10",
    ]


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def preprocess(work: Path, trainpref: str, validpref: str, destdir: str, log_name: str,
               *options: str) -> Path:
    """fairseq-preprocess --only-source of two text files; paths relative to `work`.

    Without --srcdict fairseq builds dict.txt from the training file, in frequency order."""
    run([cli("fairseq-preprocess"), "--only-source", "--trainpref", trainpref,
         "--validpref", validpref, "--destdir", destdir, *options, "--workers", "1"],
        work, log_name)
    return work / destdir


def train_mlm(work: Path, name: str, extra: list[str], arch: str = "roberta_base",
              data: str = "bin/mlm") -> Path:
    """fairseq-train a tiny masked LM on the data-bin `data`; returns its last checkpoint."""
    # Relative paths: fairseq stores data/save_dir in the checkpoint's cfg.
    run([cli("fairseq-train"), data, "--task", "masked_lm", "--criterion", "masked_lm",
         "--arch", arch, *MODEL_ARGS, "--sample-break-mode", "complete",
         "--tokens-per-sample", str(MAX_POSITIONS), *train_args(MLM_UPDATES, MLM_LR),
         "--save-dir", f"ckpt/{name}", "--no-save-optimizer-state", *extra],
        work, f"train_{name}")
    return work / "ckpt" / name / "checkpoint_last.pt"


def load_checkpoint(path: Path) -> dict[str, Any]:
    # Trusted files we just wrote ourselves; fairseq's format needs the full unpickler.
    return torch.load(path, map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------- hub interface


# Keyword arguments of RobertaModel.from_pretrained naming the BPE and its files.
Tokenizer = dict[str, str]


def gpt2_tokenizer(bpe_dir: Path) -> Tokenizer:
    # Passed explicitly, or fairseq downloads OpenAI's files.
    return {"bpe": "gpt2", "gpt2_encoder_json": str(bpe_dir / "encoder.json"),
            "gpt2_vocab_bpe": str(bpe_dir / "vocab.bpe")}


def spm_tokenizer(model: Path) -> Tokenizer:
    return {"bpe": "sentencepiece", "sentencepiece_model": str(model)}


def tokenizer_info(tokenizer: Tokenizer, folder: Path) -> dict[str, str]:
    """The --bpe and its files, as paths relative to tests/fixtures."""
    fixtures = folder.parent
    info = {"bpe": tokenizer["bpe"]}
    for key, value in tokenizer.items():
        if key != "bpe":
            info[key] = Path(value).relative_to(fixtures).as_posix()
    return info


def load_hub(folder: Path, tokenizer: Tokenizer) -> Any:
    from fairseq.models.roberta import RobertaModel

    hub = RobertaModel.from_pretrained(str(folder), checkpoint_file="model.pt", **tokenizer)
    return hub.eval()


def trim_to_fit(hub: Any, words: list[str], max_ids: int) -> str:
    """Drop words until the text encodes to at most `max_ids` ids."""
    while len(hub.encode(" ".join(words))) > max_ids:
        words = words[:-1]
    return " ".join(words)


def check_batch(hub: Any, batch: list[str]) -> list[str]:
    assert len({len(hub.encode(text)) for text in batch}) == len(batch), \
        "batch rows need different lengths"
    return batch


def choose_samples(hub: Any, held_out: list[str], s2: str) -> dict[str, Any]:
    """Texts of s0, s2, s3 and of the padded batch, chosen with the hub's dictionary.

    Short on purpose (there is no s1 any more): the masked-LM logits dominate the size budget.
    s2 is the caller's text with characters its BPE handles specially (accents, emoji)."""
    return {
        "s0": "Return a new list.",
        "s2": s2,
        "s3": trim_to_fit(hub, " ".join(held_out[-12:]).split(), S3_IDS),
        "batch": check_batch(hub, ["Return it.", "Return the value.", "Return it now."]),
    }


def tokens_of(hub: Any, text: str | list[str]) -> torch.Tensor:
    """B x T ids of one text, or of a list of texts right-padded with 1 as fairseq collates."""
    from fairseq.data.data_utils import collate_tokens

    if isinstance(text, list):
        return collate_tokens([hub.encode(t) for t in text], pad_idx=1)
    return hub.encode(text).unsqueeze(0)


@torch.no_grad()
def forward_all(hub: Any, tokens: torch.Tensor, heads: list[str], pre_norm: bool,
                **lang: Any) -> dict[str, torch.Tensor]:
    """hidden.{i}, features, mlm_logits, head.{name} for one call (lang: lang_id=... or none)."""
    out: dict[str, torch.Tensor] = {}
    inner_states = hub.extract_features(tokens, return_all_hiddens=True, **lang)  # B x T x C
    assert len(inner_states) == NUM_LAYERS + 1
    for i, state in enumerate(inner_states):
        out[f"hidden.{i}"] = state
    out["features"] = hub.extract_features(tokens, **lang)
    # Post-norm: the last inner state is the output; pre-norm: the final layer_norm follows.
    assert torch.equal(inner_states[-1], out["features"]) != pre_norm
    out["mlm_logits"] = hub.model(tokens, **lang)[0]
    for head in heads:
        out[f"head.{head}"] = hub.predict(head, tokens, return_logits=True, **lang)
    return out


# --------------------------------------------------------------------------- fairseq_outputs


def label_symbols(folder: Path) -> list[str]:
    """The symbols of the folder's label/dict.txt in id order ([] without one)."""
    label_dict = folder / "label" / "dict.txt"
    return ([line.split()[0] for line in label_dict.read_text().splitlines()]
            if label_dict.exists() else [])


def tensor_notes(pre_norm: bool, embedding_ln: bool, *, heads: bool = True,
                 key: str = "{sample}.", lang_kw: str = "", hub_name: str = "roberta.",
                 ) -> dict[str, str]:
    """The json's "tensors": what each recorded tensor is. `key` starts the tensor names (after
    input_ids), `lang_kw` is the language argument of the calls, `hub_name` how the texts name
    the hub interface; no head.{name} entry unless `heads`."""
    hidden0 = ("hidden.0 is the embedding output: token + learned position embeddings"
               + (", then layernorm_embedding" if embedding_ln else "")
               + ", with pad positions zeroed; hidden.i is the output of layer i"
               + (" (pre-norm: BEFORE the final encoder layer_norm)" if pre_norm else ""))
    notes = {
        "{sample}.input_ids": "int64 B x T, fairseq ids from RobertaHubInterface.encode",
        key + "hidden.{i}": (
            "float32 B x T x C, i = 0..num_layers: extract_features(tokens, "
            f"return_all_hiddens=True{lang_kw})[i] (fairseq's inner_states, made "
            f"batch-first). {hidden0}"),
        key + "features": (
            f"float32 B x T x C, extract_features(tokens{lang_kw})"
            + (" = final layer_norm(hidden.{num_layers})" if pre_norm
               else " (equals hidden.{num_layers})")),
        key + "mlm_logits": f"float32 B x T x vocab_size, {hub_name}model(tokens{lang_kw})[0]",
    }
    if heads:
        notes[key + "head.{name}"] = ("float32 B x num_classes, raw logits of "
                                      f"{hub_name}predict(name, tokens, return_logits=True{lang_kw})")
    return notes


def outputs_meta(name: str, description: str, hub: Any, *, tokenizer: dict[str, Any],
                 samples: dict[str, Any], heads: dict[str, Any], labels: list[str],
                 tensors: dict[str, str], dtype_note: str) -> dict[str, Any]:
    """The fields every fairseq_outputs.json has, in their order; callers may append more."""
    import fairseq

    model = hub.model
    args = model.args  # the training Namespace (also for files that stored a cfg)
    encoder = model.encoder.sentence_encoder
    return {
        "fixture": name,
        "description": description,
        "fairseq_version": fairseq.__version__,
        "torch_version": torch.__version__,
        "num_layers": len(encoder.layers),
        "hidden_size": encoder.embed_tokens.embedding_dim,
        "vocab_size": encoder.embed_tokens.num_embeddings,
        "position_table_rows": encoder.embed_positions.num_embeddings,
        "max_positions": model.max_positions(),
        "pre_norm": bool(args.encoder_normalize_before),
        "layernorm_embedding": encoder.layernorm_embedding is not None,
        "untie_weights_roberta": bool(getattr(args, "untie_weights_roberta", False)),
        "activation_fn": args.activation_fn,
        "pooler_activation_fn": args.pooler_activation_fn,
        "tokenizer": tokenizer,
        "heads": heads,
        "label_dict_symbols": labels,
        "samples": {
            key: ({"texts": value, "lengths": [len(hub.encode(t)) for t in value]}
                  if key == "batch" else {"text": value, "length": len(hub.encode(value))})
            for key, value in samples.items()
        },
        "padding": {
            "pad_id": 1,
            "side": "right",
            "note": "batch.input_ids is right-padded with 1 (fairseq collate_tokens); values of "
                    "any tensor at pad positions are not meaningful. Single samples have no pads.",
        },
        "tensors": tensors,
        "dtype_note": dtype_note,
    }


def save_outputs(folder: Path, tensors: dict[str, torch.Tensor],
                 meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """fairseq_outputs.safetensors (ids int64, all else float32) and fairseq_outputs.json."""
    tensors = {k: v.contiguous() if v.dtype == torch.long else v.float().contiguous()
               for k, v in tensors.items()}
    save_file(tensors, str(folder / "fairseq_outputs.safetensors"))
    (folder / "fairseq_outputs.json").write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return tensors


@torch.no_grad()
def record_outputs(name: str, folder: Path, tokenizer: Tokenizer, samples: dict[str, Any],
                   description: str, examples: Sequence[tuple[str, str, float]] = (),
                   tokenizer_extra: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """What fairseq's RobertaHubInterface computes for the samples, saved in the folder.

    `examples` (text, label, score) check every head on unseen text; `tokenizer_extra` is added
    to the json's "tokenizer" entry (the files' options, the checkpoint's cfg["bpe"])."""
    hub = load_hub(folder, tokenizer)
    model = hub.model
    pre_norm = bool(model.args.encoder_normalize_before)
    heads = sorted(model.classification_heads.keys())
    tensors: dict[str, torch.Tensor] = {}
    for sample, text in samples.items():
        tokens = tokens_of(hub, text)
        tensors[f"{sample}.input_ids"] = tokens.long()
        for key, value in forward_all(hub, tokens, heads, pre_norm).items():
            tensors[f"{sample}.{key}"] = value

    labels = label_symbols(folder)
    head_info = {}
    for head in heads:
        num_classes = model.classification_heads[head].out_proj.out_features
        info: dict[str, Any] = {"num_classes": num_classes, "regression": num_classes == 1}
        if num_classes > 1:
            info["labels"] = labels[:num_classes]
        info["held_out_check"] = head_quality(hub, head, info.get("labels", []), examples)
        head_info[head] = info
    embedding_ln = model.encoder.sentence_encoder.layernorm_embedding is not None
    meta = outputs_meta(
        name, description, hub,
        tokenizer={**tokenizer_info(tokenizer, folder), **(tokenizer_extra or {})},
        samples=samples, heads=head_info, labels=labels,
        tensors=tensor_notes(pre_norm, embedding_ln),
        dtype_note="fairseq ran in float32 (an fp16 checkpoint is loaded into a float32 model)")
    return save_outputs(folder, tensors, meta)


def head_quality(hub: Any, head: str, labels: list[str],
                 examples: Sequence[tuple[str, str, float]]) -> dict[str, Any]:
    """How well a head does on unseen examples: shows the labels were learned (and in which
    order). A head trained on another encoder (roberta_two_heads' 'stsb') is poor."""
    logits = torch.cat([hub.predict(head, hub.encode(text), return_logits=True)
                        for text, _, _ in examples])
    if not labels:  # regression: Pearson correlation with the score
        scores = torch.tensor([score for _, _, score in examples])
        pearson = torch.corrcoef(torch.stack([logits[:, 0], scores]))[0, 1].item()
        return {"examples": len(examples), "pearson": round(pearson, 3)}
    predicted = [labels[i] for i in logits.argmax(-1).tolist()]
    correct = sum(p == label for p, (_, label, _) in zip(predicted, examples))
    return {"examples": len(examples), "accuracy": round(correct / len(examples), 3)}


# --------------------------------------------------------------------------- encode cases


def record_fill_mask(hub: Any, masked: list[str], cases: int = 10,
                     skip: tuple[type[Exception], ...] = (ValueError,),
                     ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """roberta.fill_mask for the first `cases` sentences fairseq can answer, with the model's
    input ids and the top-k read straight from the logits at <mask>.

    Sentences longer than the positions are left out; so are those where fill_mask raises one
    of `skip` (fairseq cannot decode a predicted special symbol: ValueError for most BPEs), which
    are returned with their error as the second list."""
    done: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for sentence in masked:
        # The input exactly as fill_mask builds it (each span's trailing space dropped).
        tokens = hub.task.source_dictionary.encode_line(
            "<s> " + " <mask> ".join(hub.bpe.encode(s.rstrip()) for s in sentence.split("<mask>"))
            .strip() + " </s>", append_eos=False, add_if_not_exist=False).long()
        if len(tokens) > MAX_POSITIONS:
            continue
        try:
            filled = hub.fill_mask(sentence, topk=FILL_MASK_TOPK)
        except skip as error:
            failures.append({"masked_text": sentence, "error": f"{type(error).__name__}: {error}"})
            continue
        with torch.no_grad():
            logits = hub.model(tokens.unsqueeze(0))[0][0, tokens.tolist().index(hub.task.mask_idx)]
        probs, ids = logits.softmax(-1).topk(FILL_MASK_TOPK)
        done.append({
            "masked_text": sentence,
            "input_ids": tokens.tolist(),
            "fairseq_fill_mask": [list(item) for item in filled],
            "topk_ids": ids.tolist(),
            "topk_probs": probs.tolist(),
        })
        if len(done) == cases:
            break
    return done, failures


def masked_sentences(sentences: list[str], rng: random.Random) -> list[str]:
    """Sentences with one word replaced by <mask> (first one masks the first word)."""
    out = []
    for i, sentence in enumerate(sentences[:40]):
        words = sentence.split(" ")
        position = 0 if i == 0 else rng.randrange(1, len(words))
        words[position] = "<mask>"
        out.append(" ".join(words))
    return out


def random_text(rng: random.Random) -> str:
    """Seeded mixtures of scripts, digits, punctuation and odd whitespace."""
    ranges = [(0x20, 0x7E), (0xC0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF),
              (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F600, 0x1F64F)]
    pieces = []
    for _ in range(rng.randint(3, 12)):
        low, high = rng.choice(ranges)
        pieces.append("".join(chr(rng.randint(low, high)) for _ in range(rng.randint(1, 6))))
        pieces.append(rng.choice([" ", " ", "  ", "\t", "\n", "", " \u200b"]))
    return "".join(pieces)


def compact_json(data: dict[str, Any], ascii_only: bool = True) -> str:
    """JSON with one case per line: readable diffs, small file. ASCII-escaped, so invisible
    and control characters stay visible; with ascii_only=False only characters that are not
    printable are escaped (a third of the size for non-Latin text)."""

    def dumps(value: Any) -> str:
        if ascii_only:
            return json.dumps(value)
        return "".join(c if c.isprintable() else json.dumps(c)[1:-1]
                       for c in json.dumps(value, ensure_ascii=False))

    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            rows = ",\n".join("    " + dumps(row) for row in value)
            lines.append(f"  {dumps(key)}: [\n{rows}\n  ]")
        else:
            lines.append(f"  {dumps(key)}: {dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"
