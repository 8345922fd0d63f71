"""Make the pre-LN RoBERTa and X-MOD fixtures with the real fairseq (dev-only).

Run from the repository root with the interpreter of the fairseq venv (the one described in
tools/make_fixtures.py's docstring):

    /path/to/venv-fairseq/bin/python tools/make_variant_fixtures.py

It (re)writes three folders of tests/fixtures/ and their rows in tests/fixtures/README.md, and
touches nothing else (the fixtures of make_fixtures.py stay byte-identical):

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

All three have the tiny dimensions of the other fixtures (2 layers, width 32, 4 heads, FFN 64,
`--max-positions 64`). They are not trained: each model is built the way fairseq-train builds it
(fairseq's option parser, `convert_namespace_to_omegaconf`, `task.build_model`), every parameter
is then perturbed from a fixed seed (LayerNorm weights 1 + noise, biases and adapters non-zero;
the padding rows of the embeddings stay zero, as fairseq keeps them), and the checkpoint is
written by fairseq's own `Trainer.save_checkpoint` (cfg dict with cfg["model"] a Namespace,
optimizer_history, task_state, extra_state; `--no-save-optimizer-state`). fairseq's argument
parser has no option for the X-MOD language list, so `languages` (and, for xmod_prenorm, nothing
else) is set on the parsed Namespace before the model is built, as a modified arch would.

Each folder gets `fairseq_outputs.safetensors` + `fairseq_outputs.json` recorded through
fairseq's hub interfaces (`RobertaModel.from_pretrained`, `XMODModel.from_pretrained`) on the
samples s0, s2, s3 and the right-padded batch of roberta_mlm resp. xlmr_mlm (texts read from
their fairseq_outputs.json), with the calls and json fields of fixture_fairseq.py that the
other fixtures have too. X-MOD tensors carry the language: `{sample}.{lang}.hidden.{i}` etc.
The sentencepiece model is not copied: the json's "tokenizer" points at
xlmr_mlm/sentencepiece.bpe.model. Runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
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
                   seed: int) -> tuple[Path, dict[str, torch.Tensor]]:
    """Build the model as fairseq-train would, perturb it, save it with fairseq's Trainer."""
    from fairseq import tasks
    from fairseq.trainer import Trainer

    cwd = os.getcwd()
    os.chdir(work)  # relative data paths, as fairseq-train stores them in cfg
    try:
        cfg = parse(argv, overrides)
        task = tasks.setup_task(cfg.task)
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
    meta = ff.outputs_meta(name, VARIANT_DESCRIPTIONS[name], hub,
                           tokenizer=ff.tokenizer_info(tokenizer, folder), samples=samples,
                           heads=head_info, labels=labels, tensors=tensors,
                           dtype_note="fairseq ran in float32")
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
        return ["recomputed s2 after reloading: identical"]
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


# --------------------------------------------------------------------------- README


def update_readme(names: list[str]) -> None:
    """Put (or replace) this script's rows in the table and its paragraph at the end."""
    readme = FIXTURES / "README.md"
    text = readme.read_text(encoding="utf-8")
    marker = "\nX-MOD fixtures (`xmod_*`, made by `tools/make_variant_fixtures.py`)"
    text = text.split(marker)[0].rstrip("\n") + "\n"
    lines = [line for line in text.split("\n")
             if not any(line.startswith(f"| `{name}` |") for name in names)]
    last_row = max(i for i, line in enumerate(lines) if line.startswith("| `"))
    rows = [f"| `{name}` | {VARIANT_DESCRIPTIONS[name]} |" for name in names]
    lines[last_row + 1:last_row + 1] = rows
    paragraph = f"""{marker[1:]} record every language:
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
and does not know them: run `tools/make_variant_fixtures.py` after it. With them tests/fixtures
is about 7 MB.
"""
    readme.write_text("\n".join(lines).rstrip("\n") + "\n\n" + paragraph, encoding="utf-8")


# --------------------------------------------------------------------------- main


def main() -> None:
    options = ff.start(__doc__)
    gpt2 = ff.gpt2_tokenizer(FIXTURES / "gpt2_bpe")
    spm = ff.spm_tokenizer(FIXTURES / "xlmr_mlm" / ff.SPM_FILE)  # the only copy
    plan = [("roberta_preln", build_roberta_preln, gpt2, samples_of("roberta_mlm"), False),
            ("xmod_base", build_xmod_base, spm, samples_of("xlmr_mlm"), True),
            ("xmod_prenorm", build_xmod_prenorm, spm, samples_of("xlmr_mlm"), True)]
    with ff.work_dir(options.keep_work, prefix="variants-") as work:
        # Recorded in place (the tokenizer paths are relative to tests/fixtures), so build in
        # the work dir first and only then replace the three folders.
        staged = []
        for name, build, tokenizer, samples, xmod in plan:
            print(f"{name}: build, perturb, save ...", flush=True)
            checkpoint, built = build(work)
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
        update_readme([name for name, *_ in plan])
    sizes = {name: sum(p.stat().st_size for p in (FIXTURES / name).rglob("*") if p.is_file())
             for name, *_ in plan}
    print("bytes:", json.dumps(sizes), "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
