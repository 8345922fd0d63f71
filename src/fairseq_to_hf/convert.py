"""The conversion pipeline: read -> plan -> write -> verify, into a folder that appears only when done."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .card import CardOptions, model_card
from .errors import ConversionError, VerificationError
from .hashing import SourceChecksum
from .progress import WriteProgress
from .plan import OUTPUT_DTYPES, ConversionPlan, PlanOptions, describe_heads, list_heads, make_plan
from .reader.checkpoint import Checkpoint, read_checkpoint
from .reader.dictionary import Dictionary, read_dictionary
from .reader.folder import SourceFiles, find_source_files, read_text_lines
from .report import REPORT_FILE, ConversionReport, OutputReport
from .tokenizer import PreparedTokenizer, prepare_tokenizer, write_tokenizer
from .verify.alongside import ReferenceAlongside
from .verify.compare import DEFAULT_TOLERANCE, reference_rows, verification_inputs, verify_weights
from .verify.reference import FairseqReference
from .writer import (DEFAULT_MAX_SHARD_BYTES, OnRead, check_output_target, parse_size, plan_shards,
                     shard_file_names, single_torch_thread, staged_output, write_json, write_weights)

Log = Callable[[str], None]
# Above this size the converted model is verified block by block instead of loaded whole.
STREAMED_VERIFY_BYTES = 64 << 20
NO_TOKENIZER = ("no tokenizer written: SRC has neither encoder.json + vocab.bpe (GPT-2 BPE) nor a sentencepiece "
                "model; pass --encoder-json and --vocab-bpe, or --sentencepiece-model, to write one")


@dataclass(frozen=True)
class ConvertOptions:
    """Everything about a conversion except which checkpoint and where to."""

    head: str | None = None
    all_heads: bool = False
    model_type: str | None = None
    dtype: str | None = None
    verify: bool = True
    verify_streamed: bool | None = None  # None: block by block above STREAMED_VERIFY_BYTES
    verify_lines: tuple[str, ...] = ()
    tolerance: float = DEFAULT_TOLERANCE
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    card: CardOptions = field(default_factory=CardOptions)
    strict_labels: bool = False
    allow_non_finite: bool = False


@dataclass
class SharedSources:
    """What every checkpoint of one folder shares: read once, even for a batch of checkpoints."""

    files: SourceFiles
    dictionary: Dictionary
    label_dictionary: Dictionary | None
    tokenizers: dict[int, PreparedTokenizer | None] = field(default_factory=dict)  # by model vocabulary rows

    def tokenizer(self, model_rows: int) -> PreparedTokenizer | None:
        if model_rows not in self.tokenizers:
            self.tokenizers[model_rows] = prepare_tokenizer(self.files.tokenizer, self.dictionary, model_rows)
        return self.tokenizers[model_rows]


def convert(
    src: str | Path,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    dictionary: str | Path | None = None,
    label_dict: str | Path | None = None,
    encoder_json: str | Path | None = None,
    vocab_bpe: str | Path | None = None,
    sentencepiece_model: str | Path | None = None,
    head: str | None = None,
    all_heads: bool = False,
    model_type: str | None = None,
    dtype: str | None = None,
    verify: bool = True,
    verify_streamed: bool | None = None,
    dry_run: bool = False,
    verify_text: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_BYTES,
    card: CardOptions | None = None,
    allow_non_finite: bool = False,
    log: Log | None = None,
    progress: WriteProgress | None = None,
) -> ConversionReport:
    """Converts a fairseq RoBERTa-family checkpoint folder into a Transformers folder at `out`.

    Raises a ConversionError subclass (with nothing written) for bad input, and VerificationError
    (with nothing written) when the converted model or tokenizer does not reproduce fairseq.
    """
    say = log or (lambda message: None)
    out = Path(out)
    options = _options(head, all_heads, model_type, dtype, verify, verify_streamed, verify_text, tolerance,
                       max_shard_size, card, allow_non_finite, strict_labels=not all_heads and label_dict is not None)
    check_output_target(out, force=force)
    shared = _shared_sources(src, checkpoint, dictionary, label_dict, encoder_json, vocab_bpe, sentencepiece_model)
    source = read_checkpoint(shared.files.checkpoint)
    report, plans, tokenizer = _prepare(source, shared, options, say)
    if dry_run:
        for name, plan in plans.items():
            say(format_plan(plan, out / name if name else out, options.max_shard_bytes))
        return report
    checksum = SourceChecksum(source)  # computed by the writer's pass over the source
    with staged_output(out, force=force) as staging:
        _write_and_verify(staging, out, source, report, plans, tokenizer, options, checksum, say, progress)
    return report


def convert_batch(
    src: str | Path,
    out: str | Path,
    pattern: str,
    *,
    force: bool = False,
    log: Log | None = None,
    progress: WriteProgress | None = None,
    dictionary: str | Path | None = None,
    label_dict: str | Path | None = None,
    encoder_json: str | Path | None = None,
    vocab_bpe: str | Path | None = None,
    sentencepiece_model: str | Path | None = None,
    **convert_options,
) -> list[tuple[Path, ConversionReport | ConversionError]]:
    """Converts every checkpoint of SRC matching `pattern` into OUT/<checkpoint name>/.

    dict.txt and the tokenizer are read once. A failing checkpoint is recorded and the others go on;
    OUT appears, with the checkpoints that converted, when all have been tried.
    """
    say = log or (lambda message: None)
    out = Path(out)
    check_output_target(out, force=force)
    checkpoints = sorted(path for path in Path(src).glob(pattern) if path.is_file())
    if not checkpoints:
        raise ConversionError(f"no checkpoint matches {pattern!r}", path=src, hint="check --checkpoint")
    options = _options(**convert_options, strict_labels=label_dict is not None)
    shared = _shared_sources(src, checkpoints[0], dictionary, label_dict, encoder_json, vocab_bpe, sentencepiece_model)
    results: list[tuple[Path, ConversionReport | ConversionError]] = []
    with staged_output(out, force=force) as staging:
        for number, path in enumerate(checkpoints, start=1):
            say(f"[{number}/{len(checkpoints)}] {path.name}")
            target = staging / path.stem
            try:
                source = read_checkpoint(path)
                report, plans, tokenizer = _prepare(source, replace(shared, files=replace(shared.files, checkpoint=path)),
                                                    options, say)
                target.mkdir()
                _write_and_verify(target, out / path.stem, source, report, plans, tokenizer, options,
                                  SourceChecksum(source), say, progress)
                results.append((path, report))
            except ConversionError as error:
                shutil.rmtree(target, ignore_errors=True)
                say(f"[{number}/{len(checkpoints)}] {path.name} failed: {error.render()}")
                results.append((path, error))
    return results


def _options(head=None, all_heads=False, model_type=None, dtype=None, verify=True, verify_streamed=None,
             verify_text=None, tolerance=DEFAULT_TOLERANCE, max_shard_size=DEFAULT_MAX_SHARD_BYTES, card=None,
             allow_non_finite=False, *, strict_labels: bool) -> ConvertOptions:
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; choose from {', '.join(OUTPUT_DTYPES)}")
    return ConvertOptions(
        head=head, all_heads=all_heads, model_type=model_type, dtype=dtype, verify=verify,
        verify_streamed=verify_streamed, verify_lines=tuple(read_text_lines(verify_text)) if verify_text else (),
        tolerance=tolerance,
        max_shard_bytes=parse_size(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size),
        card=card or CardOptions(), strict_labels=strict_labels, allow_non_finite=allow_non_finite,
    )


def _shared_sources(src, checkpoint, dictionary, label_dict, encoder_json, vocab_bpe, sentencepiece_model) -> SharedSources:
    files = find_source_files(src, checkpoint=checkpoint, dictionary=dictionary, label_dictionary=label_dict,
                              encoder_json=encoder_json, vocab_bpe=vocab_bpe, sentencepiece_model=sentencepiece_model)
    labels = read_dictionary(files.label_dictionary) if files.label_dictionary else None
    return SharedSources(files, read_dictionary(files.dictionary), labels)


def _prepare(source: Checkpoint, shared: SharedSources, options: ConvertOptions,
             say: Log) -> tuple[ConversionReport, dict[str, ConversionPlan], PreparedTokenizer | None]:
    """Every plan of this conversion (one per head with --all-heads), checked before anything is written."""
    base = PlanOptions(head=options.head, model_type=options.model_type, dtype=options.dtype,
                       label_dictionary=shared.label_dictionary, strict_labels=options.strict_labels)
    heads: list[str | None] = [options.head]
    if options.all_heads:
        heads = [h.name for h in list_heads(source)]
        if not heads:
            raise ConversionError("has no classification heads for --all-heads", path=source.path)
        base = replace(base, strict_labels=False)
    first = make_plan(source, shared.dictionary, replace(base, head=heads[0]))
    tokenizer = shared.tokenizer(first.dims.vocab_size)
    alias_rows = len(tokenizer.vocabulary.aliases) if tokenizer else 0
    # With --all-heads each head gets a subfolder named after it; otherwise the one plan fills OUT.
    plans = {(name if options.all_heads else ""): make_plan(source, shared.dictionary,
                                                              replace(base, head=name, alias_rows=alias_rows))
             for name in heads}
    report = ConversionReport(
        source_checkpoint=source.path,
        source_dictionary=shared.files.dictionary,
        checkpoint_format=source.format,
        key_generation=first.key_generation,
        hparams_source=source.hparams_source,
        layout="pre-norm" if first.family.pre_norm else "post-norm",
        dims=vars(first.dims).copy(),
        heads_in_checkpoint={h.name: h.num_classes for h in first.heads},
        tokenizer=tokenizer.summary() if tokenizer else None,
    )
    say(f"read {source.path} ({source.format} format, {report.key_generation} keys, "
        f"{len(source.tensors)} tensors); heads: {', '.join(describe_heads(first.heads)) or 'none'}")
    if tokenizer is None:
        say(NO_TOKENIZER)
    elif alias_rows:
        say(f"tokenizer: {alias_rows} tokens of the {tokenizer.kind} segmentation are not in dict.txt; "
            "they get alias ids that the model treats as <unk>, as fairseq does")
    return report, plans, tokenizer


def _write_and_verify(staging: Path, out: Path, source: Checkpoint, report: ConversionReport,
                      plans: dict[str, ConversionPlan], tokenizer: PreparedTokenizer | None,
                      options: ConvertOptions, checksum: SourceChecksum, say: Log,
                      progress: WriteProgress | None) -> None:
    for name, plan in plans.items():
        folder = staging / name if name else staging
        folder.mkdir(exist_ok=True)
        final_folder = out / name if name else out
        if not options.verify:
            output = _write_one(folder, final_folder, plan, tokenizer, options, say, progress)
        else:
            output = _write_and_verify_one(folder, final_folder, plan, source, tokenizer, options, say, progress)
            if tokenizer:
                output.tokenizer_verification = _verify_tokenizer(folder, tokenizer, list(options.verify_lines), say)
        report.outputs.append(output)
        report.source_sha256 = checksum.result()
        document = report.as_dict(only=output)
        write_json(folder / REPORT_FILE, document)
        card_text = model_card(document, document["outputs"][0], options.card, str(output.folder))
        (folder / "README.md").write_text(card_text, encoding="utf-8")
        output.files += [REPORT_FILE, "README.md"]
    failures = [line for output in report.outputs for line in _failures(output)]
    if failures:
        raise VerificationError("the converted model does not reproduce fairseq; nothing was written",
                                path=source.path, details=failures)
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
               options: ConvertOptions, say: Log, progress: WriteProgress | None,
               on_read: OnRead | None = None) -> OutputReport:
    say(f"writing {plan.architecture} ({len(plan.tensors)} tensors, {plan.total_bytes / 1e6:.1f} MB)")
    if progress:
        progress.start("writing", len(plan.tensors), plan.total_bytes)
    files = write_weights(folder, plan, options.max_shard_bytes,
                          progress=(lambda t: progress.advance(t.nbytes)) if progress else None,
                          allow_non_finite=options.allow_non_finite, on_read=on_read)
    if progress:
        progress.finish()
    write_json(folder / "config.json", plan.config)
    files.append("config.json")
    if tokenizer:
        files += write_tokenizer(folder, tokenizer, model_max_length=plan.dims.positions - 2)
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
    )


def _write_and_verify_one(folder: Path, final_folder: Path, plan: ConversionPlan, source: Checkpoint,
                          tokenizer: PreparedTokenizer | None, options: ConvertOptions, say: Log,
                          progress: WriteProgress | None) -> OutputReport:
    """Writes the output while the reference forward pass runs on the source tensors the writer reads
    (so the source is read once), then runs the Transformers model from the folder against it."""
    streamed = (plan.total_bytes > STREAMED_VERIFY_BYTES if options.verify_streamed is None
                else options.verify_streamed)
    head = plan.head.name if plan.head else None
    inputs = verification_inputs(plan.dims.vocab_size, plan.dims.positions, streamed)
    round_to: torch.dtype | None = OUTPUT_DTYPES[options.dtype] if options.dtype else None
    reference = FairseqReference(source.tensors, source.hparams, round_to=round_to)
    sources = [tensor.source for tensor in plan.tensors if tensor.source is not None]
    # One torch thread for the reference too: the writer's reading and hashing threads need the cores.
    with single_torch_thread(), ReferenceAlongside(reference, reference_rows(inputs), head, sources) as alongside:
        output = _write_one(folder, final_folder, plan, tokenizer, options, say, progress, on_read=alongside.offer)
        expected = alongside.result()
    say("verifying against a reference fairseq forward pass on the source tensors"
        + (" (Transformers model run block by block)" if streamed else ""))
    result = verify_weights(folder, plan.architecture, inputs, expected, head=head,
                            vocab_size=plan.dims.vocab_size, tolerance=options.tolerance, streamed=streamed)
    for kind, diff in result.worst().items():
        say(f"  max abs diff {kind:<18} {diff:.3g}")
    output.verification = result.as_dict()
    return output


def _verify_tokenizer(folder: Path, tokenizer: PreparedTokenizer, extra_lines: list[str], say: Log) -> dict:
    from .verify.tokenizer_check import verify_tokenizer

    vocabulary = tokenizer.vocabulary
    result = verify_tokenizer(folder, tokenizer.reference_bpe, tokenizer.dictionary, vocabulary.model_rows,
                              vocabulary.size, extra_lines, tokenizer.unknown_run_quirk)
    quirks = len(result.unknown_run_differences)
    say(f"  tokenizer: {result.lines_checked} lines and {result.pairs_checked} pairs checked against "
        f"fairseq's encode, {len(result.mismatches)} differ"
        + (f" ({quirks} more differ only in runs of characters unknown to the sentencepiece model)"
           if quirks else ""))
    return result.as_dict()


def _failures(output: OutputReport) -> list[str]:
    what = f"{output.architecture}{' head ' + output.head if output.head else ''}"
    lines = []
    weights = output.verification or {}
    failing = [c for c in weights.get("checks", []) if not c["passed"]]
    lines += [f"{what}: {c['output']}: max abs diff {c['max_abs_diff']:.3g} > {c['tolerance']:.3g}"
              for c in failing[:4]]
    lines += [f"{what}: loading reported {warning}" for warning in weights.get("loading_warnings", [])]
    tokens = output.tokenizer_verification or {}
    for mismatch in tokens.get("mismatches", [])[:4]:
        lines.append(f"tokenizer: {mismatch['text'][:60]!r}: fairseq {mismatch['fairseq_ids'][:12]} "
                     f"vs {mismatch['tokenizer_ids'][:12]}")
    if tokens.get("ids_out_of_range"):
        lines.append(f"tokenizer: ids beyond the vocabulary for {len(tokens['ids_out_of_range'])} lines")
    return lines
