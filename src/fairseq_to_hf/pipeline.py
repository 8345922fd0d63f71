"""The conversion pipeline: read -> plan -> write -> verify, into a folder that appears only when done."""

from __future__ import annotations

import glob
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, fields as dataclass_fields, replace
from pathlib import Path

import torch

from .card import CardOptions, model_card
from .errors import ConversionError, UnsupportedModelError, VerificationError
from .field_types import matches, refuse_wrong_types
from .hashing import SourceChecksum, sha256_in_background
from .hparams import SuppliedHyperParameters
from .progress import WriteProgress
from .plan import (ACTIVATIONS, OUTPUT_DTYPES, ConversionPlan, OutputRequest, analyse_source, describe_heads,
                   make_plan, normalise_source)
from .reader.checkpoint import Checkpoint, read_checkpoint
from .reader.dictionary import Dictionary, read_dictionary
from .reader.folder import SourceFiles, find_source_files, read_text_lines
from .report import REPORT_FILE, ConversionReport, OutputReport
from .tokenizer import (TOKENIZER_FILES, PreparedTokenizer, kind_named, looked_for, prepare_tokenizer,
                        tokenizer_documents, tokenizer_flags)
from .verify.alongside import ReferenceAlongside
from .verify.compare import (DEFAULT_TOLERANCE, per_language, reference_languages, reference_rows,
                             verification_inputs, verify_weights)
from .reference.forward import FairseqReference
from .verify.tokenizer_check import TokenizerVerification, verify_tokenizer
from .staging import output_target, staged_output
from .shard_size import DEFAULT_MAX_SHARD_BYTES, parse_size
from .writer import (OnRead, plan_shards, shard_file_names,
                     single_torch_thread, write_json, write_text, write_weights)

Log = Callable[[str], None]
# Above this size the converted model is verified block by block instead of loaded whole.
STREAMED_VERIFY_BYTES = 64 << 20
NOT_FINITE_HINT = ("its outputs are not finite (NaN or Inf), which no comparison can verify; a model converted "
                   "with --allow-non-finite can only be written with --no-verify")


def no_tokenizer_note(bpe: dict) -> str:
    """What to pass for a tokenizer: only the files of the kind the checkpoint's bpe names, if it names one."""
    note = (f"no tokenizer written: SRC has none of {looked_for(bpe)}; pass their paths with "
            f"{tokenizer_flags(bpe)} to write one")
    if bpe.get("_name") == "bert" and not bpe.get("bpe_vocab_file"):  # fairseq's BertBPE then downloads one
        note += (f" (the checkpoint names no vocab file: fairseq used that of "
                 f"{'bert-base-cased' if bpe.get('bpe_cased') else 'bert-base-uncased'})")
    return note


@dataclass(frozen=True)
class ConvertOptions:
    """Everything about a conversion but SRC and OUT: one object from the command line to the pipeline."""

    # SRC's files; None: their usual names in SRC. In convert_batch, `checkpoint` is a pattern.
    checkpoint: str | Path | None = None
    dictionary: str | Path | None = None
    label_dict: str | Path | None = None
    # Tokenizer files by role (tokenizer.TOKENIZER_FILES: encoder_json, bpe_codes, ...); convert() also
    # takes the roles as keywords.
    tokenizer_files: dict[str, str | Path | None] = field(default_factory=dict)
    # What to write.
    head: str | None = None
    all_heads: bool = False
    model_type: str | None = None
    default_language: str | None = None  # X-MOD; None: en_XX, as fairseq
    dtype: str | None = None
    max_shard_size: str | int = DEFAULT_MAX_SHARD_BYTES
    card: CardOptions = field(default_factory=CardOptions)
    # How to check it.
    verify: bool = True
    verify_streamed: bool | None = None  # None: block by block above STREAMED_VERIFY_BYTES
    verify_text: str | Path | None = None
    tolerance: float = DEFAULT_TOLERANCE
    allow_non_finite: bool = False
    hyper_parameters: SuppliedHyperParameters = field(default_factory=SuppliedHyperParameters)
    # OUT.
    force: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        refuse_wrong_types(self)
        unknown_roles = sorted(set(self.tokenizer_files) - {f.role for f in TOKENIZER_FILES})
        if unknown_roles:
            raise ConversionError(f"unknown tokenizer file role {unknown_roles[0]!r}; choose from "
                                  f"{', '.join(f.role for f in TOKENIZER_FILES)}")
        for name, value in (("activation_fn", self.hyper_parameters.activation_fn),
                            ("pooler_activation_fn", self.hyper_parameters.pooler_activation_fn)):
            if value is not None and value not in ACTIVATIONS:
                raise ConversionError(f"unknown {name} {value!r:.40}; choose from {', '.join(ACTIVATIONS)}")
        if self.dtype is not None and self.dtype not in OUTPUT_DTYPES:
            raise ConversionError(f"unknown dtype {self.dtype!r}; choose from {', '.join(OUTPUT_DTYPES)}")
        if self.head is not None and self.all_heads:
            raise ConversionError("--head and --all-heads exclude each other", hint="pass one of them")
        try:
            tolerance = float(self.tolerance)  # numpy's numbers too; a plain float in the report
        except OverflowError:
            tolerance = math.inf
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ConversionError(f"the tolerance {self.tolerance!r:.40} must be a finite number >= 0")
        object.__setattr__(self, "tolerance", tolerance)
        if not isinstance(self.max_shard_size, str):
            object.__setattr__(self, "max_shard_size", int(self.max_shard_size))
        self.max_shard_bytes  # noqa: B018 -- refuse a bad size before any work

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)

    @property
    def strict_labels(self) -> bool:
        """A label dict given by name must fit the head; one found in SRC, or with --all-heads, may not."""
        return self.label_dict is not None and not self.all_heads


@dataclass
class SharedSources:
    """What every checkpoint of one folder shares: read once, even for a batch of checkpoints."""

    files: SourceFiles
    dictionary: Dictionary
    label_dictionary: Dictionary | None
    verify_lines: tuple[str, ...] = ()
    tokenizers: dict[int, PreparedTokenizer | None] = field(default_factory=dict)  # by model vocabulary rows

    def tokenizer(self, model_rows: int, bpe: dict) -> PreparedTokenizer | None:
        if model_rows not in self.tokenizers:
            self.tokenizers[model_rows] = prepare_tokenizer(self.files.tokenizer, self.dictionary, model_rows, bpe)
        return self.tokenizers[model_rows]

    def inputs(self, options: ConvertOptions) -> list[Path]:
        """Every file and folder this conversion reads: OUT must hold none of them."""
        files = self.files
        paths = [files.folder, files.checkpoint, files.dictionary, files.label_dictionary,
                 *files.tokenizer.paths.values(), options.verify_text]
        return [Path(path) for path in paths if path is not None]


def convert(src: str | Path, out: str | Path, options: ConvertOptions | None = None, *, log: Log | None = None,
            progress: WriteProgress | None = None, **option_fields) -> ConversionReport:
    """Converts a fairseq RoBERTa-family checkpoint folder into a Transformers folder at `out`.

    Options come as a ConvertOptions, or as its fields by keyword (`convert(src, out, head="mnli")`).
    Raises a ConversionError subclass (with nothing written) for bad input, and VerificationError
    (with nothing written) when the converted model or tokenizer does not reproduce fairseq.
    `num_heads`, `activation_fn`, `pooler_activation_fn`: hyper-parameters the checkpoint lacks.
    """
    options = _with_fields(options, option_fields)
    _refuse_wrong_arguments(src, out, log, progress)
    say = log or (lambda message: None)
    shared = _shared_sources(src, options, options.checkpoint)
    target = output_target(out, force=options.force, inputs=shared.inputs(options),
                           model_folder=_model_folder(src, shared), output_marker=REPORT_FILE)
    # Hashed from now on, on the core that reading and planning leave idle (see hashing).
    with sha256_in_background(shared.files.checkpoint, wanted=not options.dry_run) as child:
        source = read_checkpoint(shared.files.checkpoint)
        report, plans, tokenizer = _prepare(source, shared, options, say)
        if options.dry_run:
            for name, plan in plans.items():
                say(format_plan(plan, target.path / name if name else target.path, options.max_shard_bytes))
            return report
        with staged_output(target) as staging:
            _write_and_verify(staging, target.path, source, report, plans, tokenizer, options, shared,
                              SourceChecksum(source, child), say, progress)
    return report


def convert_batch(src: str | Path, out: str | Path, options: ConvertOptions | None = None, *,
                  log: Log | None = None, progress: WriteProgress | None = None,
                  **option_fields) -> list[tuple[Path, ConversionReport | ConversionError]]:
    """Converts every checkpoint matching the pattern `options.checkpoint` into OUT/<checkpoint name>/.

    The pattern is relative to SRC unless absolute. dict.txt and the tokenizer are read once. A failing
    checkpoint is recorded and the others go on; OUT appears, with the checkpoints that converted, when
    all have been tried, and not at all when none did.
    """
    options = _with_fields(options, option_fields)
    _refuse_wrong_arguments(src, out, log, progress)
    say = log or (lambda message: None)
    checkpoints = matching_checkpoints(src, str(options.checkpoint))
    shared = _shared_sources(src, options, next(iter(checkpoints.values())))
    target = output_target(out, force=options.force, inputs=[*shared.inputs(options), *checkpoints.values()],
                           model_folder=_model_folder(src, shared), output_marker=REPORT_FILE)
    results: list[tuple[Path, ConversionReport | ConversionError]] = []
    with ExitStack() as stack:
        staging = None if options.dry_run else stack.enter_context(staged_output(target))
        for number, (name, path) in enumerate(checkpoints.items(), start=1):
            say(f"[{number}/{len(checkpoints)}] {name}")
            try:
                results.append((path, _convert_one_of_batch(path, name, staging, target.path, shared, options,
                                                            say, progress)))
            except ConversionError as error:
                if staging is not None:
                    shutil.rmtree(staging / name, ignore_errors=True)
                say(f"[{number}/{len(checkpoints)}] {name} failed: {error.render()}")
                results.append((path, error))
        failures = [outcome for _, outcome in results if isinstance(outcome, ConversionError)]
        if len(failures) == len(results):
            error = ConversionError(f"none of the {len(results)} checkpoints converted; nothing was written",
                                    path=target.path,
                                    details=[f"{path.name}: {outcome.render().splitlines()[0]}"
                                             for path, outcome in results][:20])
            error.exit_code = failures[0].exit_code
            raise error
    return results


def _convert_one_of_batch(path: Path, name: str, staging: Path | None, out: Path, shared: SharedSources,
                          options: ConvertOptions, say: Log, progress: WriteProgress | None) -> ConversionReport:
    # As in convert(): hashed while the checkpoint is read and planned. staging None: --dry-run.
    with sha256_in_background(path, wanted=staging is not None) as child:
        source = read_checkpoint(path)
        report, plans, tokenizer = _prepare(source, replace(shared, files=replace(shared.files, checkpoint=path)),
                                            options, say)
        if staging is None:
            for head, plan in plans.items():
                say(format_plan(plan, out / name / head if head else out / name, options.max_shard_bytes))
            return report
        folder = staging / name
        folder.mkdir(parents=True)
        _write_and_verify(folder, out / name, source, report, plans, tokenizer, options, shared,
                          SourceChecksum(source, child), say, progress)
    return report


def matching_checkpoints(src: str | Path, pattern: str) -> dict[str, Path]:
    """Output name -> checkpoint file, for the files matching `pattern` (relative to SRC unless absolute).

    A checkpoint's output is named by its file name without `.pt`, or, where two matches share a file
    name (`run*/checkpoint_best.pt`), by its path below the folder they have in common.
    """
    folder = Path(src) if Path(src).is_dir() else Path(src).parent
    # SRC is a path, not a pattern: `run[1]` names a folder
    where = pattern if os.path.isabs(pattern) else os.path.join(glob.escape(str(folder)), pattern)
    found = sorted(Path(p) for p in glob.glob(where) if Path(p).is_file())
    if not found:
        raise ConversionError(f"no checkpoint matches {pattern!r}", path=folder, hint="check --checkpoint")
    stems = Counter(path.stem for path in found)
    if max(stems.values()) == 1:
        return {path.stem: path for path in found}
    common = Path(os.path.commonpath([path.parent for path in found]))
    return {str(path.relative_to(common).with_suffix("")): path for path in found}


def _refuse_wrong_arguments(src: object, out: object, log: object, progress: object) -> None:
    problems = [f"{name} must be a path (str or os.PathLike), not {type(value).__name__}"
                for name, value in (("src", src), ("out", out)) if not matches(value, str | Path)]
    if log is not None and not callable(log):
        problems.append(f"log must be a function taking a message, not {type(log).__name__}")
    if progress is not None and not isinstance(progress, WriteProgress):
        problems.append(f"progress must be a WriteProgress, not {type(progress).__name__}")
    if problems:
        raise ConversionError("; ".join(problems))


def _with_fields(options: ConvertOptions | None, fields: dict) -> ConvertOptions:
    """ConvertOptions fields by keyword; tokenizer file roles (encoder_json=...) go into tokenizer_files,
    and num_heads, activation_fn, pooler_activation_fn into hyper_parameters."""
    if options is not None and not isinstance(options, ConvertOptions):
        raise ConversionError(f"options must be a ConvertOptions, not {type(options).__name__}",
                              hint="pass the options by keyword, or as ConvertOptions(...)")
    options = options or ConvertOptions()
    fields = dict(fields)
    roles = {f.role for f in TOKENIZER_FILES}
    if isinstance(fields.get("tokenizer_files", {}), dict):
        fields["tokenizer_files"] = {**options.tokenizer_files, **fields.get("tokenizer_files", {}),
                                     **{k: fields.pop(k) for k in list(fields) if k in roles}}
    nested_fields = set()
    # num_heads= ... into hyper_parameters, language=, license= ... into card, as the flags take them.
    for name, kind in (("hyper_parameters", SuppliedHyperParameters), ("card", CardOptions)):
        names = {f.name for f in dataclass_fields(kind)}
        nested_fields |= names
        if isinstance(fields.get(name, getattr(options, name)), kind):
            fields[name] = replace(fields.get(name, getattr(options, name)),
                                   **{k: fields.pop(k) for k in list(fields) if k in names})
    known = {f.name for f in dataclass_fields(ConvertOptions)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConversionError(f"unknown option {unknown[0]!r}", hint="options are " + ", ".join(
            sorted(known | roles | nested_fields)))
    return replace(options, **fields)


def _model_folder(src: str | Path, shared: SharedSources) -> Path | None:
    """The folder SRC names, inside which --force replaces only what a conversion wrote; None for a
    checkpoint file, whose folder may be any folder."""
    return shared.files.folder if Path(src).is_dir() else None


def _shared_sources(src: str | Path, options: ConvertOptions, checkpoint: str | Path | None) -> SharedSources:
    files = find_source_files(src, TOKENIZER_FILES, checkpoint=checkpoint, dictionary=options.dictionary,
                              label_dictionary=options.label_dict, **options.tokenizer_files)
    labels = read_dictionary(files.label_dictionary) if files.label_dictionary else None
    lines = tuple(read_text_lines(options.verify_text)) if options.verify_text else ()
    return SharedSources(files, read_dictionary(files.dictionary), labels, lines)


def _prepare(source: Checkpoint, shared: SharedSources, options: ConvertOptions,
             say: Log) -> tuple[ConversionReport, dict[str, ConversionPlan], PreparedTokenizer | None]:
    """Every plan of this conversion (one per head with --all-heads), checked before anything is written.

    The checkpoint is analysed once; the tokenizer is prepared for its vocabulary, and each output is
    planned once from both (the tokenizer's alias ids are rows of its embedding).
    """
    model = analyse_source(normalise_source(source), shared.dictionary, model_type=options.model_type,
                           supplied=options.hyper_parameters)
    heads: list[str | None] = [options.head]
    if options.all_heads:
        heads = [h.name for h in model.heads]
        if not heads:
            raise ConversionError("has no classification heads for --all-heads", path=source.path)
    # A checkpoint that cannot be planned is refused for that (by make_plan) before its tokenizer is built.
    tokenizer = None if model.problems else shared.tokenizer(model.dims.vocab_size, source.bpe)
    alias_rows = len(tokenizer.vocabulary.aliases) if tokenizer else 0
    request = OutputRequest(dtype=options.dtype, default_language=options.default_language,
                            label_dictionary=shared.label_dictionary, strict_labels=options.strict_labels)
    # With --all-heads each head gets a subfolder named after it; otherwise the one plan fills OUT.
    plans, refused = {}, {}
    for name in heads:
        try:
            plans[name if options.all_heads else ""] = make_plan(model, replace(request, head=name),
                                                                 extra_vocab_rows=alias_rows)
        except ConversionError as error:
            if not options.all_heads:
                raise
            refused[name] = error
    if refused:  # nothing is written unless every head converts: say which ones would
        raise UnsupportedModelError(
            f"--all-heads: {len(refused)} of {len(heads)} heads cannot be converted exactly", path=source.path,
            hint=f"convert the others one by one with --head NAME ({', '.join(plans) or 'none'})",
            details=[f"{name}: {error.message}" for name, error in refused.items()])
    report = ConversionReport(model, shared.files, tokenizer)
    say(f"read {source.path} ({source.format} format, {model.source.key_generation} keys, "
        f"{len(source.tensors)} tensors); heads: {', '.join(describe_heads(model.heads)) or 'none'}")
    for note in dict.fromkeys(note for plan in plans.values() for note in plan.notes):
        say(f"note: {note}")
    if tokenizer is None:
        say(no_tokenizer_note(source.bpe))
    elif alias_rows:
        say(f"tokenizer: {alias_rows} tokens of the {tokenizer.kind} segmentation are not in dict.txt; "
            "they get alias ids that the model treats as <unk>, as fairseq does")
    return report, plans, tokenizer


def _write_and_verify(staging: Path, out: Path, source: Checkpoint, report: ConversionReport,
                      plans: dict[str, ConversionPlan], tokenizer: PreparedTokenizer | None,
                      options: ConvertOptions, shared: SharedSources, checksum: SourceChecksum, say: Log,
                      progress: WriteProgress | None) -> None:
    for name, plan in plans.items():
        folder = staging / name if name else staging
        folder.mkdir(exist_ok=True)
        final_folder = out / name if name else out
        hash_source = checksum.needs_pass
        if not options.verify:
            output = _write_one(folder, final_folder, plan, tokenizer, options, say, progress, hash_source)
        else:
            output = _write_and_verify_one(folder, final_folder, plan, source, tokenizer, options, say, progress,
                                           hash_source)
            if tokenizer:
                output.tokenizer_verification = _verify_tokenizer(folder, tokenizer, list(shared.verify_lines), say)
        report.outputs.append(output)
        report.source_sha256 = checksum.result()
        document = report.as_dict(only=output)
        write_json(folder / REPORT_FILE, document)
        write_text(folder / "README.md", model_card(document, document["outputs"][0], options.card))
        output.files += [REPORT_FILE, "README.md"]
    failures = [line for output in report.outputs for line in _failures(output)]
    if failures:
        not_finite = any(output.verification and output.verification.non_finite for output in report.outputs)
        raise VerificationError("the converted model does not reproduce fairseq; nothing was written",
                                path=source.path, details=failures,
                                hint=NOT_FINITE_HINT if not_finite else None)
    if options.all_heads:
        write_json(staging / REPORT_FILE, report.as_dict())


def format_plan(plan: ConversionPlan, out: Path, max_shard_bytes: int) -> str:
    """The plan as a table: every output tensor with its source, shape and dtype."""
    shards = plan_shards(plan.tensors, max_shard_bytes)
    lines = [f"plan for {out}: {plan.architecture}, {len(plan.tensors)} tensors, {plan.total_bytes / 1e6:.1f} MB "
             f"in {len(shards)} file{'s' if len(shards) > 1 else ''}"]
    for file_name, shard in zip(shard_file_names(len(shards)), shards):
        lines.append(f"  {file_name}")
        for tensor in shard:
            dtype = str(tensor.dtype).removeprefix("torch.")
            extra = f" + {tensor.extra_rows} alias rows" if tensor.extra_rows else ""
            lines.append(f"    {tensor.target:<58} {str(list(tensor.shape)):<14} {dtype:<9} <- {tensor.source_name}{extra}")
    for stored, reason in plan.dropped.items():
        lines.append(f"  left out {stored}: {reason}")
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)


def _write_one(folder: Path, final_folder: Path, plan: ConversionPlan, tokenizer: PreparedTokenizer | None,
               options: ConvertOptions, say: Log, progress: WriteProgress | None, hash_source: bool,
               on_read: OnRead | None = None) -> OutputReport:
    say(f"writing {plan.architecture} ({len(plan.tensors)} tensors, {plan.total_bytes / 1e6:.1f} MB)")
    if progress:
        progress.start("writing", len(plan.tensors), plan.total_bytes)
    files = write_weights(folder, plan, options.max_shard_bytes,
                          progress=(lambda t: progress.advance(t.nbytes)) if progress else None,
                          allow_non_finite=options.allow_non_finite, on_read=on_read, hash_source=hash_source)
    if progress:
        progress.finish()
    write_json(folder / "config.json", plan.config)
    files.append("config.json")
    if tokenizer:
        for name, document in tokenizer_documents(tokenizer, model_max_length=plan.dims.positions - 2).items():
            (write_json if isinstance(document, dict) else write_text)(folder / name, document)
            files.append(name)
    head = plan.head
    labels = None
    if head is not None and head.num_classes > 1:
        labels = [plan.config["id2label"][str(i)] for i in range(head.num_classes)]
    return OutputReport(
        folder=final_folder,
        architecture=plan.architecture,
        model_type=plan.family.model_type,
        head=head.name if head else None,
        num_labels=head.num_classes if head else None,
        labels=labels,
        dtype=plan.config["dtype"],
        files=files,
        tensors_written=len(plan.tensors),
        bytes_written=plan.total_bytes,
        dropped=dict(plan.dropped),
        notes=list(plan.notes),
        default_language=plan.config.get("default_language"),
    )


def _write_and_verify_one(folder: Path, final_folder: Path, plan: ConversionPlan, source: Checkpoint,
                          tokenizer: PreparedTokenizer | None, options: ConvertOptions, say: Log,
                          progress: WriteProgress | None, hash_source: bool) -> OutputReport:
    """Writes the output while the reference forward pass runs on the source tensors the writer reads
    (so the source is read once), then runs the Transformers model from the folder against it."""
    streamed = (plan.total_bytes > STREAMED_VERIFY_BYTES if options.verify_streamed is None
                else options.verify_streamed)
    head = plan.head.name if plan.head else None
    inputs, row_languages = per_language(verification_inputs(plan.dims.vocab_size, plan.dims.positions, streamed),
                                         plan.dims.languages)
    round_to: torch.dtype | None = OUTPUT_DTYPES[options.dtype] if options.dtype else None
    reference = FairseqReference(source.tensors, plan.hyper_parameters.values, round_to=round_to)
    sources = [tensor.source for tensor in plan.tensors if tensor.source is not None]
    # One torch thread for the reference too: the writer's reading and hashing threads need the cores.
    with single_torch_thread(), ReferenceAlongside(reference, reference_rows(inputs), head, sources,
                                                   reference_languages(inputs, row_languages),
                                                   architecture=plan.architecture) as alongside:
        output = _write_one(folder, final_folder, plan, tokenizer, options, say, progress, hash_source,
                            on_read=alongside.offer)
        expected = alongside.result()
    say("verifying against a reference fairseq forward pass on the source tensors"
        + (" (Transformers model run block by block)" if streamed else ""))
    result = verify_weights(folder, plan.architecture, inputs, expected, head=head,
                            vocab_size=plan.dims.vocab_size, tolerance=options.tolerance, streamed=streamed,
                            row_languages=row_languages)
    for kind, diff in result.worst().items():
        say(f"  max abs diff {kind:<18} {diff:.3g}")
    output.verification = result
    return output


def _verify_tokenizer(folder: Path, tokenizer: PreparedTokenizer, extra_lines: list[str],
                      say: Log) -> TokenizerVerification:
    vocabulary = tokenizer.vocabulary
    result = verify_tokenizer(folder, tokenizer.reference_bpe, tokenizer.dictionary, vocabulary.model_rows,
                              vocabulary.size, extra_lines, tokenizer.known_difference,
                              kind_named(tokenizer.kind).known_difference)
    known = len(result.known_differences)
    say(f"  tokenizer: {result.lines_checked} lines and {result.pairs_checked} pairs checked against "
        f"fairseq's encode, {len(result.mismatches)} differ"
        + (f" ({known} more differ where {result.known_difference})" if known else ""))
    return result


def _failures(output: OutputReport) -> list[str]:
    what = f"{output.architecture}{' head ' + output.head if output.head else ''}"
    lines = []
    weights = output.verification
    if weights is not None:
        failing = [check for check in weights.checks if not check.passed]
        lines += [f"{what}: {check.input} {check.output}: "
                  + (f"not finite ({check.non_finite} values are NaN or Inf)" if check.non_finite else
                     f"max abs diff {check.max_abs_diff:.3g} > {check.tolerance:.3g}")
                  for check in failing[:4]]
        lines += [f"{what}: loading reported {warning}" for warning in weights.loading_warnings]
    tokens = output.tokenizer_verification
    if tokens is not None:
        for mismatch in tokens.mismatches[:4]:
            lines.append(f"tokenizer: {mismatch.text[:60]!r}: fairseq {mismatch.expected[:12]} vs {mismatch.got[:12]}")
        if tokens.out_of_range:
            lines.append(f"tokenizer: ids beyond the vocabulary for {len(tokens.out_of_range)} lines")
        lines += [f"tokenizer: {problem}" for problem in tokens.special_tokens]
    return lines
