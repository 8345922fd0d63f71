"""Make the RoBERTa variant and X-MOD fixtures with the real fairseq (dev-only).

Run from the repository root with the interpreter of the fairseq venv (the one described in
tools/make_fixtures.py's docstring):

    /path/to/venv-fairseq/bin/python tools/make_variant_fixtures.py [--only NAME ...]

It (re)writes the eight folders below of tests/fixtures/ (with --only, just the named ones) and
their rows in tests/fixtures/README.md, and touches nothing else (the fixtures of
make_fixtures.py stay byte-identical, and so do the folders --only leaves out). The first three
draw fairseq's initial weights from torch's global generator in turn (seeded once), so --only
still builds those before a named one, writing only the named; the roberta_* variants reseed it
each, so theirs do not depend on what else is built:

* `roberta_preln`: RoBERTa pre-LN WITH the embedding LayerNorm (`--arch roberta_base
  --encoder-normalize-before`: keeps `layernorm_embedding`, adds the final
  `encoder.sentence_encoder.layer_norm`) on roberta_mlm's GPT-2 BPE dictionary, with the masked-LM
  head and one classification head `topic_head` (3 classes; `input0/dict.txt`, `label/dict.txt`).
  Transformers' counterpart is RobertaPreLayerNorm*.
* `xmod_base`: X-MOD post-norm (`fairseq.models.xmod`, `--arch xmod_base`, task
  `multilingual_masked_lm`) with the languages en_XX, de_DE, hi_IN, masked-LM head, on xlmr_mlm's
  sentencepiece pieces and dict.txt. Like fairseq's xmod_base arch it leaves `bottleneck` out of
  the config (the layer then uses 2). Recorded for every language, for `hi_IN_rom` (fairseq
  strips `_rom`/`_zaw` before picking the adapter), for fairseq's default `lang_id=None` (= en_XX)
  and for a batch whose rows use different languages.
* `xmod_prenorm`: X-MOD pre-norm (`--arch xmod_large_prenorm` defaults: encoder_normalize_before,
  layernorm_embedding kept, adapter_layer_norm on, adapter_reuse_layer_norm off,
  ln_before_adapter off, bottleneck 4) with the languages de_DE, fr_XX, ru_RU (no en_XX, so
  fairseq's `lang_id=None` fails and a converter must be told the default language), task
  `sentence_prediction` with the masked-LM head and one classification head `lang_head` (3
  classes).
* `roberta_sinusoidal`: post-norm masked LM (`--arch roberta_base`, task `masked_lm` on
  roberta_mlm's dict.txt) with `encoder_learned_pos=False` set on the parsed Namespace (fairseq's
  roberta parser has no flag for it): fairseq computes sinusoidal positions
  (SinusoidalPositionalEmbedding, 66 rows for 64 positions, padding row zero) and the checkpoint
  holds no position table. fairseq's table is recorded too, as `positions.table` (the hub
  model's `embed_positions.weights` buffer, max_positions + 2 rows).
* `roberta_nopos`: the same with `no_token_positional_embeddings=True` set on the Namespace:
  fairseq adds no positions at all (no table stored, `embed_positions` is None).
* `roberta_keep_layers`: post-norm masked LM with 3 layers (`--encoder-layers 3`) trained with
  `--encoder-layerdrop 0.2`, saved by the Trainer as usual (all 3 layers stored, with
  encoder_layers_to_keep None); then the saved file's cfg["model"].encoder_layers_to_keep is set
  to "0,2" and the file saved again with torch.save. That is the checkpoint a user gets after
  loading with fairseq's `arg_overrides={"encoder_layers_to_keep": "0,2"}`: fairseq's loader
  builds a 2-layer encoder and prunes the state dict to the stored layers 0 and 2 (layer 1 is
  dropped). model.pt holds all 3 layers; the recording is fairseq loading that final file
  (the hub interface prunes), so it has 2 layers: hidden.0..2 come from stored layers 0 and 2.
* `roberta_relu2_cls`: post-norm classifier (task `sentence_prediction`, masked-LM head and one
  classification head `sentiment`, 3 classes; `input0/dict.txt`, `label/dict.txt`) with
  `activation_fn="relu_squared"` set on the Namespace. fairseq uses it in every layer's FFN and
  in the masked-LM head's dense layer (the classification head keeps pooler tanh).
* `camembert_mlm`: post-norm masked LM on xlmr_mlm's sentencepiece pieces with a dict.txt laid
  out like camembert-base's: `<unk>`, `<s>` and `</s>` (its sentencepiece model's first pieces)
  listed again with `#fairseq:overwrite` before xlmr_mlm's lines. fairseq's Dictionary gives a
  re-listed symbol a new id and looks it up there, so its encode frames a sentence with ids 5 and
  6, while padding (1) and unknown symbols (3) keep the ids it holds as attributes.

All of them have the tiny dimensions of the other fixtures (2 layers, width 32, 4 heads, FFN 64,
`--max-positions 64`; roberta_keep_layers stores 3 layers). They are not trained: each model is
built the way fairseq-train builds it (fairseq's option parser, `convert_namespace_to_omegaconf`,
`task.build_model`), every parameter is then perturbed from a fixed seed (LayerNorm weights 1 +
noise, biases and adapters non-zero; the padding rows of the embeddings stay zero, as fairseq
keeps them), and the checkpoint is written by fairseq's own `Trainer.save_checkpoint` (cfg dict
with cfg["model"] a Namespace, optimizer_history, task_state, extra_state;
`--no-save-optimizer-state`). fairseq's argument parser has no option for the X-MOD language list,
so `languages` (and, for xmod_prenorm, nothing else) is set on the parsed Namespace before the
model is built, as a modified arch would; the same goes for encoder_learned_pos,
no_token_positional_embeddings and activation_fn above (relu_squared is not among the roberta
parser's --activation-fn choices, but fairseq runs it).

Each folder gets `fairseq_outputs.safetensors` + `fairseq_outputs.json` recorded through
fairseq's hub interfaces (`RobertaModel.from_pretrained`, `XMODModel.from_pretrained`) on the
samples s0, s2, s3 and the right-padded batch of roberta_mlm resp. xlmr_mlm (texts read from
their fairseq_outputs.json; the roberta_* variants all use roberta_mlm's), with the calls and
json fields of fixture_fairseq.py that the other fixtures have too, plus a "positions" (and for
roberta_keep_layers a "layers") entry. X-MOD tensors carry the language:
`{sample}.{lang}.hidden.{i}` etc. The sentencepiece model is not copied: the json's "tokenizer"
points at xlmr_mlm/sentencepiece.bpe.model. Runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ in tools/
import fixture_fairseq as ff  # noqa: E402  (before torch: sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

FIXTURES = ff.FIXTURES
# The noise has a generator of its own; fairseq's initial weights come from torch's global one,
# which ff.start seeds with ff.SEED.
PERTURB_SEED = 20240
WEIGHT_NOISE = 0.05  # added to every weight and bias (fairseq's init: N(0, 0.02) and zeros)
LAYER_NORM_NOISE = 0.1  # LayerNorm weight = 1 + N(0, this), bias = N(0, this)
ADAPTER_NOISE = 0.1  # larger than WEIGHT_NOISE, so the languages differ clearly

PRELN_HEAD, PRELN_LABELS = "topic_head", {"api": 41, "prose": 29, "example": 17}
XMOD_PRENORM_HEAD, XMOD_PRENORM_LABELS = "lang_head", {"ru_RU": 50, "de_DE": 30, "fr_XX": 20}
XMOD_BASE_LANGUAGES = ["en_XX", "de_DE", "hi_IN"]
XMOD_PRENORM_LANGUAGES = ["de_DE", "fr_XX", "ru_RU"]
# Language ids that are no adapter name: fairseq strips "_rom"/"_zaw" first (s0 only).
SUFFIXED = {"xmod_base": "hi_IN_rom"}
# One padded batch with a language per row (not contiguous: fairseq splits the batch in runs).
MIXED_BATCH = {"xmod_base": ["de_DE", "hi_IN_rom", "de_DE"],
               "xmod_prenorm": ["ru_RU", "fr_XX", "fr_XX"]}
RELU2_HEAD, RELU2_LABELS = "sentiment", {"positive": 41, "negative": 29, "neutral": 17}
KEEP_STORED_LAYERS, KEEP_LAYERS = 3, "0,2"  # roberta_keep_layers: stored, then run by fairseq
KEEP_LAYERDROP = "0.2"
# The recorded positions.table of roberta_sinusoidal: fairseq's table for max_positions + 2 rows.
SINUSOIDAL_TABLE = "positions.table"

# camembert-base's dict.txt lists its sentencepiece model's first three pieces again.
CAMEMBERT_REPEATED = ("<unk>", "<s>", "</s>")
OVERWRITE = "#fairseq:overwrite"
VARIANT_DESCRIPTIONS = {
    "roberta_preln": "pre-LN masked LM WITH embedding LayerNorm (--arch roberta_base "
                     "--encoder-normalize-before: layernorm_embedding and a final encoder "
                     f"layer_norm; Transformers' RobertaPreLayerNorm), plus head '{PRELN_HEAD}' "
                     "(3 classes, label dict in frequency order); built by fairseq, weights "
                     "perturbed from a seed, not trained (tools/make_variant_fixtures.py)",
    "xmod_base": "X-MOD post-norm masked LM (--arch xmod_base, task multilingual_masked_lm), "
                 f"languages {','.join(XMOD_BASE_LANGUAGES)}, adapters with bottleneck 2 "
                 "(no `bottleneck` in cfg, as fairseq's xmod_base arch leaves it), "
                 "ln_before_adapter and adapter_reuse_layer_norm on; xlmr_mlm's pieces and "
                 "dict.txt; built and perturbed, not trained (tools/make_variant_fixtures.py)",
    "xmod_prenorm": "X-MOD pre-norm (--arch xmod_large_prenorm defaults, tiny dims: "
                    "encoder_normalize_before with layernorm_embedding, adapter_layer_norm on, "
                    "adapter_reuse_layer_norm and ln_before_adapter off, bottleneck 4), "
                    f"languages {','.join(XMOD_PRENORM_LANGUAGES)} (no en_XX: fairseq's "
                    "lang_id=None fails), task sentence_prediction: masked-LM head and head "
                    f"'{XMOD_PRENORM_HEAD}' (3 classes); built and perturbed, not trained "
                    "(tools/make_variant_fixtures.py)",
    "roberta_sinusoidal": "post-norm masked LM with fairseq's sinusoidal positions "
                          "(encoder_learned_pos False set on the Namespace: no position table "
                          "stored; fairseq's computed table recorded as `positions.table`); "
                          "built and perturbed, not trained (tools/make_variant_fixtures.py)",
    "roberta_nopos": "post-norm masked LM without positions (no_token_positional_embeddings "
                     "True set on the Namespace: no table stored, fairseq adds none); built "
                     "and perturbed, not trained (tools/make_variant_fixtures.py)",
    "roberta_keep_layers": f"post-norm masked LM, {KEEP_STORED_LAYERS} layers stored "
                           f"(--encoder-layers {KEEP_STORED_LAYERS} --encoder-layerdrop "
                           f"{KEEP_LAYERDROP}), cfg['model'].encoder_layers_to_keep set to "
                           f"'{KEEP_LAYERS}' after saving (as fairseq's arg_overrides would): "
                           "fairseq's loader prunes to stored layers 0 and 2, and the "
                           "recording (2 layers) is of that; built and perturbed, not trained "
                           "(tools/make_variant_fixtures.py)",
    "roberta_relu2_cls": "post-norm classifier with activation_fn relu_squared (set on the "
                         "Namespace; fairseq applies it in the FFNs and in the masked-LM "
                         f"head), task sentence_prediction: masked-LM head and head "
                         f"'{RELU2_HEAD}' (3 classes, label dict in frequency order); built "
                         "and perturbed, not trained (tools/make_variant_fixtures.py)",
    "camembert_mlm": "post-norm masked LM on xlmr_mlm's pieces with a dict.txt laid out like "
                     "camembert-base's: `<unk>`, `<s>`, `</s>` listed again with "
                     "#fairseq:overwrite before xlmr_mlm's lines, so fairseq's encode frames "
                     "with ids 5 and 6 (padding 1 and unknown 3 stay); built and perturbed, not "
                     "trained (tools/make_variant_fixtures.py)",
}
XMOD_CONFIG_FIELDS = ("languages", "bottleneck", "adapter_modules", "adapter_layer_norm",
                      "adapter_reuse_layer_norm", "ln_before_adapter", "ffn_modules",
                      "encoder_normalize_before", "layernorm_embedding")


# --------------------------------------------------------------------------- building


def write_label_dict(labels: dict[str, int], path: Path) -> None:
    """A label dictionary as fairseq-preprocess builds it: frequency order, padded to 8."""
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for label, count in labels.items():
        dictionary.add_symbol(label, n=count)
    dictionary.finalize(threshold=-1, nwords=-1, padding_factor=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    dictionary.save(str(path))


def make_folder(folder: Path, dict_txt: Path, labels: dict[str, int] | None) -> None:
    """A released-model folder (also a data dir fairseq's tasks can be set up from)."""
    folder.mkdir(parents=True)
    shutil.copy(dict_txt, folder / "dict.txt")
    if labels is not None:
        (folder / "input0").mkdir()
        shutil.copy(dict_txt, folder / "input0" / "dict.txt")
        write_label_dict(labels, folder / "label" / "dict.txt")


def parse(argv: list[str], overrides: dict[str, Any]) -> Any:
    """fairseq-train's parser and config conversion; `overrides` are set on the Namespace."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    for key, value in overrides.items():
        setattr(args, key, value)
    return convert_namespace_to_omegaconf(args)


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    """Deterministic noise on every parameter (tied ones once); padding rows stay zero."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    norm_weights = {id(m.weight) for m in norms}
    norm_biases = {id(m.bias) for m in norms}
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        if id(param) in norm_weights:
            param.copy_(1 + LAYER_NORM_NOISE * noise)
        elif id(param) in norm_biases:
            param.copy_(LAYER_NORM_NOISE * noise)
        elif ".adapter_modules." in name:
            param.add_(ADAPTER_NOISE * noise)
        else:
            param.add_(WEIGHT_NOISE * noise)
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
            module.weight[module.padding_idx] = 0


def build_and_save(work: Path, name: str, argv: list[str], overrides: dict[str, Any],
                   seed: int, init_seed: int | None = None) -> tuple[Path, dict[str, torch.Tensor]]:
    """Build the model as fairseq-train would, perturb it, save it with fairseq's Trainer.

    `init_seed` reseeds torch's global generator (fairseq's initial weights) first; without it
    the weights depend on what was built before in the run (the first three fixtures, kept so
    that they stay byte-identical)."""
    from fairseq import tasks
    from fairseq.trainer import Trainer

    cwd = os.getcwd()
    os.chdir(work)  # relative data paths, as fairseq-train stores them in cfg
    try:
        cfg = parse(argv, overrides)
        task = tasks.setup_task(cfg.task)
        if init_seed is not None:
            torch.manual_seed(init_seed)
        model = task.build_model(cfg.model)
        criterion = task.build_criterion(cfg.criterion)
        perturb(model, seed)
        trainer = Trainer(cfg, task, model, criterion)
        checkpoint = work / "ckpt" / name / "checkpoint_last.pt"
        checkpoint.parent.mkdir(parents=True)
        # What checkpoint_utils.save_checkpoint adds; previous_training_time fixed (it is the
        # wall time since the Trainer started) so the file is the same on every run.
        trainer.save_checkpoint(str(checkpoint), {
            "train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
            "val_loss": None, "previous_training_time": 0.0})
    finally:
        os.chdir(cwd)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return checkpoint, state


def common_args(data: str, task: str, criterion: str, arch: str) -> list[str]:
    return [data, "--task", task, "--criterion", criterion, "--arch", arch, *ff.MODEL_ARGS,
            *ff.train_args(1, "1e-4"), "--no-save-optimizer-state"]


def classifier_args(labels: dict[str, int], head: str) -> list[str]:
    """sentence_prediction with one classification head over the label dict's labels."""
    return ["--init-token", "0", "--separator-token", "2", "--num-classes", str(len(labels)),
            "--classification-head-name", head]


def build_roberta_preln(work: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    make_folder(work / "bin" / "roberta_preln", FIXTURES / "roberta_mlm" / "dict.txt",
                PRELN_LABELS)
    argv = common_args("bin/roberta_preln", "sentence_prediction", "sentence_prediction",
                       "roberta_base")
    argv += ["--encoder-normalize-before", *classifier_args(PRELN_LABELS, PRELN_HEAD)]
    return build_and_save(work, "roberta_preln", argv, {}, PERTURB_SEED)


def build_xmod_base(work: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    make_folder(work / "bin" / "xmod_base", FIXTURES / "xlmr_mlm" / "dict.txt", None)
    argv = common_args("bin/xmod_base", "multilingual_masked_lm", "masked_lm", "xmod_base")
    argv += ["--sample-break-mode", "complete", "--tokens-per-sample", str(ff.MAX_POSITIONS)]
    return build_and_save(work, "xmod_base", argv, {"languages": XMOD_BASE_LANGUAGES},
                          PERTURB_SEED + 1)


def build_xmod_prenorm(work: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    make_folder(work / "bin" / "xmod_prenorm", FIXTURES / "xlmr_mlm" / "dict.txt",
                XMOD_PRENORM_LABELS)
    argv = common_args("bin/xmod_prenorm", "sentence_prediction", "sentence_prediction",
                       "xmod_large_prenorm")
    argv += classifier_args(XMOD_PRENORM_LABELS, XMOD_PRENORM_HEAD)
    return build_and_save(work, "xmod_prenorm", argv, {"languages": XMOD_PRENORM_LANGUAGES},
                          PERTURB_SEED + 2)


def mlm_args(name: str) -> list[str]:
    """Task masked_lm on the data dir bin/{name} (a copy of roberta_mlm's dict.txt)."""
    return [*common_args(f"bin/{name}", "masked_lm", "masked_lm", "roberta_base"),
            "--sample-break-mode", "complete", "--tokens-per-sample", str(ff.MAX_POSITIONS)]


# The four roberta_* variants below each reseed fairseq's initialisation (ff.SEED + 10 + i) and
# perturb from PERTURB_SEED + 10 + i: the same weights whether or not others are built first.


def build_roberta_sinusoidal(work: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    make_folder(work / "bin" / "roberta_sinusoidal", FIXTURES / "roberta_mlm" / "dict.txt", None)
    return build_and_save(work, "roberta_sinusoidal", mlm_args("roberta_sinusoidal"),
                          {"encoder_learned_pos": False}, PERTURB_SEED + 10, ff.SEED + 10)


def build_roberta_nopos(work: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    make_folder(work / "bin" / "roberta_nopos", FIXTURES / "roberta_mlm" / "dict.txt", None)
    return build_and_save(work, "roberta_nopos", mlm_args("roberta_nopos"),
                          {"no_token_positional_embeddings": True}, PERTURB_SEED + 11,
                          ff.SEED + 11)


def build_roberta_keep_layers(work: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """3 layers, saved as trained with LayerDrop; encoder_layers_to_keep is set later
    (keep_layers_after_saving), once the Trainer has written the file."""
    make_folder(work / "bin" / "roberta_keep_layers", FIXTURES / "roberta_mlm" / "dict.txt",
                None)
    # Given after ff.MODEL_ARGS' "--encoder-layers 2": argparse keeps the last value.
    argv = mlm_args("roberta_keep_layers") + [
        "--encoder-layers", str(KEEP_STORED_LAYERS), "--encoder-layerdrop", KEEP_LAYERDROP]
    return build_and_save(work, "roberta_keep_layers", argv, {}, PERTURB_SEED + 12,
                          ff.SEED + 12)


def build_roberta_relu2_cls(work: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    make_folder(work / "bin" / "roberta_relu2_cls", FIXTURES / "roberta_mlm" / "dict.txt",
                RELU2_LABELS)
    argv = common_args("bin/roberta_relu2_cls", "sentence_prediction", "sentence_prediction",
                       "roberta_base")
    argv += classifier_args(RELU2_LABELS, RELU2_HEAD)
    # Not via --activation-fn: the roberta parser's choices leave relu_squared out.
    return build_and_save(work, "roberta_relu2_cls", argv, {"activation_fn": "relu_squared"},
                          PERTURB_SEED + 13, ff.SEED + 13)


def keep_layers_after_saving(checkpoint: Path) -> None:
    """cfg["model"].encoder_layers_to_keep = KEEP_LAYERS in the saved file, nothing else changed:
    what loading it with arg_overrides={"encoder_layers_to_keep": ...} and saving again gives."""
    saved = ff.load_checkpoint(checkpoint)
    args = saved["cfg"]["model"]
    assert args.encoder_layers == KEEP_STORED_LAYERS and args.encoder_layers_to_keep is None
    args.encoder_layers_to_keep = KEEP_LAYERS
    torch.save(saved, checkpoint)


# Run on model.pt after the Trainer saved it (the built state stays what check_checkpoint expects).
def build_camembert_mlm(work: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """CamemBERT's dict.txt: its sentencepiece model's first pieces listed again with
    #fairseq:overwrite before the others, so fairseq's encode frames a sentence with the later ids
    of <s> and </s> (5, 6), while padding and unknown stay 1 and 3."""
    dict_txt = work / "camembert_dict.txt"
    repeated = "".join(f"{symbol} 999 {OVERWRITE}\n" for symbol in CAMEMBERT_REPEATED)
    dict_txt.write_text(repeated + (FIXTURES / "xlmr_mlm" / "dict.txt").read_text(encoding="utf-8"),
                        encoding="utf-8")
    make_folder(work / "bin" / "camembert_mlm", dict_txt, None)
    return build_and_save(work, "camembert_mlm", mlm_args("camembert_mlm"), {}, PERTURB_SEED + 14,
                          ff.SEED + 14)


AFTER_SAVING = {"roberta_keep_layers": keep_layers_after_saving}


def assemble(work: Path, out: Path, name: str, checkpoint: Path) -> Path:
    folder = out / name
    shutil.copytree(work / "bin" / name, folder)
    shutil.copy(checkpoint, folder / "model.pt")
    return folder


# --------------------------------------------------------------------------- recording


def load_hub(folder: Path, tokenizer: ff.Tokenizer, xmod: bool) -> Any:
    if not xmod:
        return ff.load_hub(folder, tokenizer)
    from fairseq.models.xmod import XMODModel

    return XMODModel.from_pretrained(str(folder), checkpoint_file="model.pt",
                                     **tokenizer).eval()


def position_kind(encoder: Any) -> str:
    """"learned", "sinusoidal" or "none": the position embeddings fairseq built."""
    from fairseq.modules import LearnedPositionalEmbedding, SinusoidalPositionalEmbedding

    positions = encoder.embed_positions
    if positions is None:
        return "none"
    if isinstance(positions, SinusoidalPositionalEmbedding):
        return "sinusoidal"
    assert isinstance(positions, LearnedPositionalEmbedding), type(positions)
    return "learned"


def position_rows(encoder: Any) -> int | None:
    """Rows of the table fairseq looks positions up in (max_positions + 2), None without one."""
    kind = position_kind(encoder)
    if kind == "none":
        return None
    rows = (encoder.embed_positions.weights.shape[0] if kind == "sinusoidal"
            else encoder.embed_positions.num_embeddings)
    assert rows == encoder.max_source_positions + encoder.padding_idx + 1, rows
    return rows


@contextlib.contextmanager
def rows_for_outputs_meta(encoder: Any) -> Iterator[None]:
    """ff.outputs_meta reads embed_positions.num_embeddings, which only fairseq's learned table
    has. fixture_fairseq.py is shared by the other fixture scripts and stays as it is: for the
    call, a sinusoidal module gets that attribute and absent positions a stand-in (describe
    writes the real entry afterwards); both are undone on the way out."""
    kind = position_kind(encoder)
    if kind == "learned":
        yield
    elif kind == "sinusoidal":
        encoder.embed_positions.num_embeddings = position_rows(encoder)
        try:
            yield
        finally:
            del encoder.embed_positions.num_embeddings
    else:  # None was assigned as a plain attribute (never a submodule), so this is one too
        encoder.embed_positions = types.SimpleNamespace(num_embeddings=None)
        try:
            yield
        finally:
            encoder.embed_positions = None


def samples_of(fixture: str) -> dict[str, Any]:
    """The texts of s0, s2, s3 and the batch that make_fixtures.py chose for `fixture`."""
    meta = json.loads((FIXTURES / fixture / "fairseq_outputs.json").read_text(encoding="utf-8"))
    return {key: value["texts"] if key == "batch" else value["text"]
            for key, value in meta["samples"].items()}


def record(name: str, folder: Path, tokenizer: ff.Tokenizer, samples: dict[str, Any],
           xmod: bool) -> dict[str, torch.Tensor]:
    """fairseq_outputs.*: every sample, for X-MOD once per language and the extra calls."""
    hub = load_hub(folder, tokenizer, xmod)
    model = hub.model
    args = model.args
    encoder = model.encoder.sentence_encoder
    pre_norm = bool(args.encoder_normalize_before)
    assert (encoder.layer_norm is not None) == pre_norm
    heads = sorted(model.classification_heads.keys())
    languages = list(args.languages) if xmod else []
    tensors: dict[str, torch.Tensor] = {}
    calls: dict[str, Any] = {}
    if position_kind(encoder) == "sinusoidal":
        # fairseq's own table (a non-persistent buffer, in no checkpoint), before any call
        # could grow it: the rows a converter has to write as Transformers' position table.
        tensors[SINUSOIDAL_TABLE] = encoder.embed_positions.weights[:position_rows(encoder)]
    for sample, text in samples.items():
        tokens = ff.tokens_of(hub, text)
        tensors[f"{sample}.input_ids"] = tokens.long()
        rows = tokens.shape[0]
        if not xmod:
            for key, value in ff.forward_all(hub, tokens, heads, pre_norm).items():
                tensors[f"{sample}.{key}"] = value
            continue
        for lang in languages:
            for key, value in ff.forward_all(hub, tokens, heads, pre_norm,
                                             lang_id=[lang] * rows).items():
                tensors[f"{sample}.{lang}.{key}"] = value
        calls[sample] = {lang: [lang] * rows for lang in languages}
    default_info: dict[str, Any] = {}
    if xmod:
        s0 = ff.tokens_of(hub, samples["s0"])
        suffixed = SUFFIXED.get(name)
        if suffixed:
            for key, value in ff.forward_all(hub, s0, heads, pre_norm, lang_id=[suffixed]).items():
                tensors[f"s0.{suffixed}.{key}"] = value
            calls["s0"][suffixed] = [suffixed]
        try:
            default = ff.forward_all(hub, s0, heads, pre_norm, lang_id=None)
        except KeyError as error:
            default_info = {"fairseq_lang_id_none": f"fails: KeyError({error})",
                            "recorded": False}
        else:
            for key, value in default.items():
                tensors[f"s0.default.{key}"] = value
            calls["s0"]["default"] = None
            default_info = {"fairseq_lang_id_none": "runs every row through the en_XX adapter",
                            "recorded": True}
        mixed = MIXED_BATCH[name]
        batch = ff.tokens_of(hub, samples["batch"])
        for key, value in ff.forward_all(hub, batch, heads, pre_norm, lang_id=mixed).items():
            tensors[f"batch.mixed.{key}"] = value
        calls["batch"]["mixed"] = mixed
    meta = describe(name, folder, hub, tokenizer, samples, heads, pre_norm, xmod, calls,
                    default_info)
    return ff.save_outputs(folder, tensors, meta)


def describe(name: str, folder: Path, hub: Any, tokenizer: ff.Tokenizer, samples: dict[str, Any],
             heads: list[str], pre_norm: bool, xmod: bool, calls: dict[str, Any],
             default_info: dict[str, Any]) -> dict[str, Any]:
    """fairseq_outputs.json: the fields of every fixture's (ff.outputs_meta), plus how the
    weights were made and the X-MOD facts."""
    model = hub.model
    args = model.args
    encoder = model.encoder.sentence_encoder
    labels = ff.label_symbols(folder)
    head_info = {}
    for head in heads:
        num_classes = model.classification_heads[head].out_proj.out_features
        head_info[head] = {"num_classes": num_classes, "regression": num_classes == 1,
                           "labels": labels[:num_classes], "trained": False}
    tensors = ff.tensor_notes(pre_norm, encoder.layernorm_embedding is not None,
                              heads=bool(heads), key="{sample}.{lang}." if xmod else "{sample}.",
                              lang_kw=", lang_id=[lang] * B" if xmod else "", hub_name="")
    if xmod:
        tensors["{sample}.input_ids"] += " (the same for every language)"
    kind = position_kind(encoder)
    if kind != "learned":  # tensor_notes describes fairseq's usual learned table
        hidden = next(key for key in tensors if key.endswith("hidden.{i}"))
        learned = "token + learned position embeddings"
        assert learned in tensors[hidden]
        tensors[hidden] = tensors[hidden].replace(learned, (
            "token + sinusoidal position embeddings (fairseq's computed table, positions.table)"
            if kind == "sinusoidal" else "token embeddings only (fairseq adds no positions)"))
    if kind == "sinusoidal":
        tensors[SINUSOIDAL_TABLE] = (
            "float32 (max_positions + 2) x C: fairseq's SinusoidalPositionalEmbedding.weights "
            "of the hub model (a non-persistent buffer, not in model.pt); row padding_idx + 1 + "
            "t is position t, row padding_idx (1) is zero")
    with rows_for_outputs_meta(encoder):
        meta = ff.outputs_meta(name, VARIANT_DESCRIPTIONS[name], hub,
                               tokenizer=ff.tokenizer_info(tokenizer, folder), samples=samples,
                               heads=head_info, labels=labels, tensors=tensors,
                               dtype_note="fairseq ran in float32")
    meta["position_table_rows"] = position_rows(encoder)
    if kind != "learned":
        meta["positions"] = {
            "kind": kind,
            "encoder_learned_pos": bool(args.encoder_learned_pos),
            "no_token_positional_embeddings": bool(args.no_token_positional_embeddings),
            "table_in_checkpoint": False,
            "note": ("fairseq computes the table (SinusoidalPositionalEmbedding.get_embedding, "
                     "max_positions + 2 rows, row 1 zero); recorded as positions.table"
                     if kind == "sinusoidal" else
                     "no_token_positional_embeddings: embed_positions is None, fairseq adds no "
                     "positions; position_table_rows is null"),
        }
    stored_args = ff.load_checkpoint(folder / "model.pt")["cfg"]["model"]
    keep = getattr(stored_args, "encoder_layers_to_keep", None)
    if keep:
        kept = sorted(int(layer) for layer in keep.split(","))
        meta["layers"] = {
            "stored": stored_args.encoder_layers,
            "encoder_layers_to_keep": keep,
            "stored_layers_run": kept,
            "encoder_layerdrop": stored_args.encoder_layerdrop,
            "note": "model.pt stores all layers; fairseq's loader (prune_state_dict) keeps the "
                    "stored layers encoder_layers_to_keep names, renumbered 0..n-1, and builds "
                    "an n-layer encoder: num_layers and the recorded hidden.{i} are of that "
                    "pruned model (hidden.{i} for i >= 1 is the output of stored layer "
                    "stored_layers_run[i - 1])",
        }
        assert meta["num_layers"] == len(kept)
    meta["weights_note"] = (
        "not trained: built by fairseq's task.build_model, every parameter perturbed from a "
        f"seed (weights and biases + N(0, {WEIGHT_NOISE}), adapters + N(0, {ADAPTER_NOISE}), "
        f"LayerNorm weight 1 + N(0, {LAYER_NORM_NOISE}) and bias N(0, {LAYER_NORM_NOISE}); "
        "padding rows of the embeddings zero), saved by fairseq's Trainer.save_checkpoint")
    if xmod:
        cfg_fields = {field: getattr(args, field) for field in XMOD_CONFIG_FIELDS
                      if hasattr(args, field)}
        layer = encoder.layers[0]
        bottleneck = getattr(args, "bottleneck", 2)
        fc1 = layer.adapter_modules[args.languages[0]].fc1
        assert fc1.out_features == args.encoder_embed_dim // bottleneck
        meta["languages"] = list(args.languages)
        meta["xmod"] = {
            "cfg_model": cfg_fields,
            "bottleneck_in_cfg": hasattr(args, "bottleneck"),
            "bottleneck": bottleneck,
            "adapter_hidden_size": fc1.out_features,
            "adapter_activation_fn": args.activation_fn,
            "note": "cfg_model: the fields as stored in cfg['model'] (a Namespace). Without "
                    "`bottleneck` there, fairseq's XMODTransformerEncoderLayerBase uses 2. "
                    "Adapter names are the language codes; fairseq strips '_rom' and '_zaw' "
                    "from a lang_id before looking the adapter up.",
        }
        meta["default_language"] = {
            "en_XX_in_languages": "en_XX" in args.languages,
            **default_info,
            "note": "fairseq's lang_adapter replaces lang_id=None by ['en_XX'] * batch; with no "
                    "en_XX adapter that is a KeyError, so a converter must ask which language "
                    "is the default.",
        }
        meta["language_calls"] = {
            "note": "for each sample, each recorded {lang} key and the lang_id list that was "
                    "passed (one entry per batch row; 'default' = lang_id=None; 'mixed' is "
                    "the batch with a language per row)",
            **calls,
        }
        meta["tensors"]["s0.default.*"] = ("as s0.{lang}.* with lang_id=None (fairseq's default); "
                                           "only where default_language.recorded")
        meta["tensors"]["batch.mixed.*"] = ("the padded batch with lang_id = "
                                            "language_calls.batch.mixed (one language per row)")
        if name in SUFFIXED:
            meta["tensors"][f"s0.{SUFFIXED[name]}.*"] = (
                f"s0 with lang_id=['{SUFFIXED[name]}']: fairseq strips the suffix and uses the "
                f"{SUFFIXED[name].rsplit('_', 1)[0]} adapter")
    return meta


# --------------------------------------------------------------------------- checks


def check_checkpoint(folder: Path, built: dict[str, torch.Tensor], xmod: bool) -> None:
    """The saved file holds exactly the built, perturbed tensors; nothing is identity or zero."""
    checkpoint = ff.load_checkpoint(folder / "model.pt")
    assert set(checkpoint) >= {"cfg", "model", "optimizer_history", "extra_state"}, checkpoint
    assert "last_optimizer_state" not in checkpoint
    state = checkpoint["model"]
    # roberta_keep_layers too: model.pt keeps every built layer (encoder_layers_to_keep only
    # changed cfg); the pruning is fairseq's loader's, checked in check_recording.
    assert state.keys() == built.keys()
    for key, tensor in state.items():
        assert torch.equal(tensor, built[key]), key
        if not tensor.is_floating_point():
            continue
        if "norm" in key and key.endswith(".weight"):
            assert not torch.allclose(tensor, torch.ones_like(tensor)), key
        else:
            assert tensor.abs().sum() > 0, key
    if xmod:
        assert any(".adapter_modules." in key for key in state)


def check_recording(name: str, folder: Path, tokenizer: ff.Tokenizer, samples: dict[str, Any],
                    xmod: bool) -> list[str]:
    """Reload with fairseq and recompute; the languages must matter, the embeddings not."""
    notes = []
    recorded = load_file(str(folder / "fairseq_outputs.safetensors"))
    hub = load_hub(folder, tokenizer, xmod)
    heads = sorted(hub.model.classification_heads.keys())
    pre_norm = bool(hub.model.args.encoder_normalize_before)
    if not xmod:
        again = ff.forward_all(hub, ff.tokens_of(hub, samples["s2"]), heads, pre_norm)
        for key, value in again.items():
            assert torch.equal(value, recorded[f"s2.{key}"]), key
        return ["recomputed s2 after reloading: identical",
                *check_positions(folder, hub, recorded), *check_pruning(folder, hub)]
    languages = list(hub.model.args.languages)
    lang = languages[1]
    again = ff.forward_all(hub, ff.tokens_of(hub, samples["s2"]), heads, pre_norm, lang_id=[lang])
    for key, value in again.items():
        assert torch.equal(value, recorded[f"s2.{lang}.{key}"]), key
    notes.append(f"recomputed s2 for {lang} after reloading: identical")
    for sample in samples:
        for a in languages:
            assert torch.equal(recorded[f"{sample}.{a}.hidden.0"],
                               recorded[f"{sample}.{languages[0]}.hidden.0"])
            for b in languages:
                if a < b:
                    diff = (recorded[f"{sample}.{a}.features"]
                            - recorded[f"{sample}.{b}.features"]).abs().max().item()
                    assert diff > 0.05, (sample, a, b, diff)
    spread = min((recorded[f"s0.{a}.features"] - recorded[f"s0.{b}.features"]).abs().max().item()
                 for a in languages for b in languages if a < b)
    notes.append(f"hidden.0 equal for all languages; features differ between languages "
                 f"(smallest max abs difference on s0: {spread:.3f})")
    if name in SUFFIXED:
        suffixed, base = SUFFIXED[name], SUFFIXED[name].rsplit("_", 1)[0]
        for key in again:
            assert torch.equal(recorded[f"s0.{suffixed}.{key}"], recorded[f"s0.{base}.{key}"])
        notes.append(f"s0.{suffixed}.* == s0.{base}.* exactly")
    if "en_XX" in languages:
        for key in again:
            assert torch.equal(recorded[f"s0.default.{key}"], recorded[f"s0.en_XX.{key}"])
        notes.append("s0.default.* == s0.en_XX.* exactly")
    else:
        assert not any(k.startswith("s0.default.") for k in recorded)
    mixed = [lang.replace("_rom", "").replace("_zaw", "") for lang in MIXED_BATCH[name]]
    lengths = recorded["batch.input_ids"].ne(1).sum(1).tolist()
    worst = 0.0
    for row, (lang, length) in enumerate(zip(mixed, lengths)):
        for key in again:
            mine = recorded[f"batch.mixed.{key}"][row]
            theirs = recorded[f"batch.{lang}.{key}"][row]
            if not key.startswith("head."):  # B x T x ...: compare the real tokens only
                mine, theirs = mine[:length], theirs[:length]
            worst = max(worst, (mine - theirs).abs().max().item())
    assert worst < 1e-5, worst
    notes.append(f"batch.mixed rows == the per-language batch rows (max abs diff {worst:.1e})")
    return notes


def check_positions(folder: Path, hub: Any, recorded: dict[str, torch.Tensor]) -> list[str]:
    """No position table stored unless fairseq learned one; the recorded sinusoidal table is
    fairseq's get_embedding and the one the reloaded hub looks up in."""
    from fairseq.modules import SinusoidalPositionalEmbedding

    encoder = hub.model.encoder.sentence_encoder
    kind = position_kind(encoder)
    stored = [key for key in ff.load_checkpoint(folder / "model.pt")["model"]
              if "embed_positions" in key]
    assert bool(stored) == (kind == "learned"), stored
    if kind == "learned":
        assert SINUSOIDAL_TABLE not in recorded
        return []
    if kind == "none":
        assert SINUSOIDAL_TABLE not in recorded
        return ["no positions: embed_positions None, no table stored"]
    rows, dim = position_rows(encoder), encoder.embed_tokens.embedding_dim
    table = recorded[SINUSOIDAL_TABLE]
    assert table.shape == (rows, dim) and rows == hub.model.max_positions() + 2
    assert torch.equal(table, encoder.embed_positions.weights[:rows])
    assert torch.equal(table, SinusoidalPositionalEmbedding.get_embedding(rows, dim, 1))
    assert not table[1].any() and table[2:].abs().sum(1).gt(0).all()
    return [f"sinusoidal: no table stored; {SINUSOIDAL_TABLE} ({rows} x {dim}) == the reloaded "
            "hub's and get_embedding's"]


def check_pruning(folder: Path, hub: Any) -> list[str]:
    """With encoder_layers_to_keep, the reloaded hub runs exactly the named stored layers."""
    checkpoint = ff.load_checkpoint(folder / "model.pt")
    keep = getattr(checkpoint["cfg"]["model"], "encoder_layers_to_keep", None)
    if not keep:
        return []
    kept = sorted(int(layer) for layer in keep.split(","))
    stored = checkpoint["model"]
    prefix = "encoder.sentence_encoder.layers."
    stored_layers = {key[len(prefix):].split(".")[0] for key in stored if key.startswith(prefix)}
    assert len(stored_layers) == checkpoint["cfg"]["model"].encoder_layers > len(kept)
    layers = hub.model.encoder.sentence_encoder.layers
    assert len(layers) == len(kept)
    for new, old in enumerate(kept):
        for key, value in layers[new].state_dict().items():
            assert torch.equal(value, stored[f"{prefix}{old}.{key}"]), (new, old, key)
    dropped = sorted(set(stored_layers) - {str(layer) for layer in kept})
    return [f"encoder_layers_to_keep {keep!r}: {len(stored_layers)} layers stored, the reloaded "
            f"hub runs stored layers {kept} (dropped: {', '.join(dropped)})"]


# --------------------------------------------------------------------------- README


XMOD_PARAGRAPH = """X-MOD fixtures (`xmod_*`, made by `tools/make_variant_fixtures.py`) record every language:
tensors `{{sample}}.{{lang}}.hidden.{{i}}`, `{{sample}}.{{lang}}.features`,
`{{sample}}.{{lang}}.mlm_logits`, `{{sample}}.{{lang}}.head.{{name}}` (fairseq's hub with
`lang_id=[lang] * batch`) next to the language-free `{{sample}}.input_ids`. Also: `s0.hi_IN_rom.*`
in xmod_base (fairseq strips `_rom`/`_zaw` before picking the adapter, so it equals
`s0.hi_IN.*`), `s0.default.*` in xmod_base (`lang_id=None`, which fairseq runs through en_XX;
xmod_prenorm has no en_XX and fairseq fails there) and `batch.mixed.*` (one language per batch
row, listed in the json's `language_calls`). The json also holds `languages`, `default_language`
and the X-MOD config fields (`xmod.cfg_model`). The variant fixtures are not trained (weights
built by fairseq and perturbed from a seed) and reuse `xlmr_mlm/sentencepiece.bpe.model` and
`gpt2_bpe/` without copying them; `tools/make_fixtures.py` regenerates tests/fixtures as a whole
and does not know them: run `tools/make_variant_fixtures.py` after it. With them and the tokenizer
fixtures below, tests/fixtures is about {megabytes} MB."""
ROBERTA_PARAGRAPH = """RoBERTa variant fixtures (`roberta_sinusoidal`, `roberta_nopos`, `roberta_keep_layers`,
`roberta_relu2_cls`, also made by `tools/make_variant_fixtures.py`, on roberta_mlm's samples):
the first two store no position table in `model.pt`. For `roberta_sinusoidal` fairseq's computed
table is recorded as the tensor `positions.table` (max_positions + 2 rows, row 1 zero); the json's
`positions` says what fairseq does, and for `roberta_nopos` `position_table_rows` is null.
`roberta_keep_layers` stores 3 layers with `encoder_layers_to_keep` "0,2" in cfg["model"] (set
after saving, as fairseq's arg_overrides would): fairseq's loader runs stored layers 0 and 2, so
its `num_layers` and `hidden.{{i}}` are of that pruned 2-layer model (the json's `layers` says
which stored layer each is). `roberta_relu2_cls` runs relu_squared in the FFNs and in fairseq's
masked-LM head."""


def update_readme(names: list[str]) -> None:
    """Put (or replace in place) the rows of `names` in the table, and this script's paragraphs
    after the table (replacing their old text, keeping every other paragraph)."""
    readme = FIXTURES / "README.md"
    text = readme.read_text(encoding="utf-8")
    lines = text.rstrip("\n").split("\n")
    for name in names:
        row = f"| `{name}` | {VARIANT_DESCRIPTIONS[name]} |"
        present = [i for i, line in enumerate(lines) if line.startswith(f"| `{name}` |")]
        if present:
            lines[present[0]] = row
        else:
            last_row = max(i for i, line in enumerate(lines) if line.startswith("| `"))
            lines.insert(last_row + 1, row)
    paragraphs = "\n".join(lines).split("\n\n")

    def ours(paragraph: str) -> bool:  # by the first two words
        return any(paragraph.split(" ", 2)[:2] == mine.split(" ", 2)[:2]
                   for mine in (XMOD_PARAGRAPH, ROBERTA_PARAGRAPH))

    # Where the old ones were (or at the end); other scripts' paragraphs stay after them.
    at = next((i for i, paragraph in enumerate(paragraphs) if ours(paragraph)), len(paragraphs))
    paragraphs = [paragraph for paragraph in paragraphs if not ours(paragraph)]
    size = sum(path.stat().st_size for path in FIXTURES.rglob("*") if path.is_file())
    mine = [XMOD_PARAGRAPH.format(megabytes=round(size / 1e6)), ROBERTA_PARAGRAPH.format()]
    readme.write_text("\n\n".join(paragraphs[:at] + mine + paragraphs[at:]) + "\n",
                      encoding="utf-8")


# --------------------------------------------------------------------------- main

# Built in this order from torch's generator as ff.start seeded it (no init_seed of their own).
CHAINED = ("roberta_preln", "xmod_base", "xmod_prenorm")
# (name, build, tokenizer ("gpt2" / "spm"), samples of, X-MOD)
PLAN = [("roberta_preln", build_roberta_preln, "gpt2", "roberta_mlm", False),
        ("xmod_base", build_xmod_base, "spm", "xlmr_mlm", True),
        ("xmod_prenorm", build_xmod_prenorm, "spm", "xlmr_mlm", True),
        ("roberta_sinusoidal", build_roberta_sinusoidal, "gpt2", "roberta_mlm", False),
        ("roberta_nopos", build_roberta_nopos, "gpt2", "roberta_mlm", False),
        ("roberta_keep_layers", build_roberta_keep_layers, "gpt2", "roberta_mlm", False),
        ("roberta_relu2_cls", build_roberta_relu2_cls, "gpt2", "roberta_mlm", False),
        ("camembert_mlm", build_camembert_mlm, "spm", "xlmr_mlm", False)]


def main() -> None:
    names = ff.only_names([name for name, *_ in PLAN])
    options = ff.start(__doc__)
    tokenizers = {"gpt2": ff.gpt2_tokenizer(FIXTURES / "gpt2_bpe"),
                  "spm": ff.spm_tokenizer(FIXTURES / "xlmr_mlm" / ff.SPM_FILE)}  # the only copy
    # A CHAINED fixture needs the ones before it built first (not written unless named).
    last_chained = max((CHAINED.index(name) for name in names if name in CHAINED), default=-1)
    plan = [(name, build, tokenizers[tokenizer], samples_of(samples), xmod)
            for name, build, tokenizer, samples, xmod in PLAN
            if name in names or name in CHAINED[:last_chained + 1]]
    with ff.work_dir(options.keep_work, prefix="variants-") as work:
        # Recorded in place (the tokenizer paths are relative to tests/fixtures), so build in
        # the work dir first and only then replace the folders.
        staged = []
        for name, build, tokenizer, samples, xmod in plan:
            print(f"{name}: build, perturb, save ...", flush=True)
            checkpoint, built = build(work)
            if name not in names:
                print(f"  {name}: built for the generator's state only, not written", flush=True)
                continue
            if name in AFTER_SAVING:
                AFTER_SAVING[name](checkpoint)
            staged.append((name, assemble(work, work / "out", name, checkpoint), built,
                           tokenizer, samples, xmod))
        for name, source, built, tokenizer, samples, xmod in staged:
            folder = FIXTURES / name
            ff.replace_tree(source, folder)
            check_checkpoint(folder, built, xmod)
            print(f"{name}: recording fairseq outputs ...", flush=True)
            record(name, folder, tokenizer, samples, xmod)
            for note in check_recording(name, folder, tokenizer, samples, xmod):
                print(f"  {note}")
        update_readme(names)
    sizes = {name: sum(p.stat().st_size for p in (FIXTURES / name).rglob("*") if p.is_file())
             for name in names}
    print("bytes:", json.dumps(sizes), "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
