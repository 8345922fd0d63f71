"""The `fairseq-to-hf` command: argument parsing, messages on stderr, exit codes.

This module imports nothing heavy at load time: signals are routed (interrupts.install) before torch
and transformers are imported, so a Ctrl-C at any moment, start-up included, ends in one line.
"""

from __future__ import annotations

from . import interrupts

interrupts.install(defer=True)  # first: a Ctrl-C while the rest loads is acted on in main()

import argparse  # noqa: E402
import ctypes  # noqa: E402
import errno  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import NoReturn  # noqa: E402

from . import __version__  # noqa: E402
from .errors import (EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_OUTPUT,  # noqa: E402
                     EXIT_VERIFY_FAILED, ConversionError, OutputError, escape_controls, library_message)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number

EXIT_CODES_HELP = """exit codes:
  0    converted (and verified, unless --no-verify)
  1    verification failed: the converted model differs from fairseq; nothing was written
  2    bad input: missing or wrong files, unsupported model, ambiguous head; nothing was written
  3    OUT cannot be written: it exists (use --force), is not writable, appeared or changed meanwhile,
       or the disk filled up
  70   internal error (a bug): one line, nothing written
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT); nothing was written
"""

CONVERT_EXAMPLES = """examples:
  fairseq-to-hf convert roberta.base/ roberta-base-hf/
  fairseq-to-hf convert my-finetune/ out/ --checkpoint checkpoint_best.pt --head sentiment_head
  fairseq-to-hf convert glue-mnli/ out/ --all-heads
  fairseq-to-hf convert xlmr.xl/ out/ --dtype bfloat16 --max-shard-size 2GB
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the tool's one-line form (exit code 2, as for any bad input)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"fairseq-to-hf: error: {escape_controls(message)}; see '{self.prog} --help'", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


def _shard_size(text: str) -> str:
    from .shard_size import parse_size

    try:
        parse_size(text)
    except ConversionError as error:
        raise argparse.ArgumentTypeError(error.message) from None
    return text


def _repo_id(text: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as error:
        # Its message quotes the name as given: shown escaped, a newline in it would cut the line.
        message = str(error).replace(text, escape_controls(text)) if text else str(error)
        raise argparse.ArgumentTypeError(" ".join(message.split()).rstrip(".")) from None
    return text


def _add_source_options(parser: argparse.ArgumentParser, tokenizer_purpose: str, checkpoint_extra: str = "") -> None:
    """SRC and the flags that locate its files, the same for every command."""
    from .tokenizer import TOKENIZER_FILES

    parser.add_argument("src", metavar="SRC", help="fairseq model folder (or the checkpoint file itself)")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help=f"checkpoint file in SRC (default: model.pt, or the only .pt file){checkpoint_extra}")
    parser.add_argument("--dict", dest="dictionary", metavar="FILE",
                        help="fairseq token dictionary (default: SRC/dict.txt or SRC/input0/dict.txt)")
    for file in TOKENIZER_FILES:
        parser.add_argument(file.flag, dest=file.role, metavar="FILE",
                            help=f"{file.what} {tokenizer_purpose} (default: SRC/{' or SRC/'.join(file.names)} "
                                 "if present)")


def _language_code(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty language code")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _add_hyper_parameter_options(parser: argparse.ArgumentParser) -> None:
    """What the tensors cannot show, for checkpoints whose args/cfg lack it; never contradicting them."""
    from .plan.config import ACTIVATIONS

    group = parser.add_argument_group("hyper-parameters the checkpoint lacks (refused if it says otherwise)")
    group.add_argument("--num-heads", type=_positive_int, metavar="N",
                       help="attention heads per layer (encoder_attention_heads)")
    group.add_argument("--activation-fn", choices=sorted(ACTIVATIONS), metavar="NAME",
                       help=f"fairseq activation_fn: {', '.join(ACTIVATIONS)}")
    group.add_argument("--pooler-activation-fn", choices=sorted(ACTIVATIONS), metavar="NAME",
                       help="fairseq pooler_activation_fn of the classification head (same names)")


def _supplied(args: argparse.Namespace):
    from .hparams import SuppliedHyperParameters

    return SuppliedHyperParameters(args.num_heads, args.activation_fn, args.pooler_activation_fn)


def build_parser() -> argparse.ArgumentParser:
    from .plan.config import OUTPUT_DTYPE_NAMES
    from .plan.families import FAMILIES, LM_HEAD
    from .verify.tolerance import DEFAULT_TOLERANCE

    parser = _Parser(
        prog="fairseq-to-hf",
        description="Convert fairseq RoBERTa-family checkpoints into verified Hugging Face Transformers folders, "
        "without fairseq and without running code from the checkpoint.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert a fairseq model folder into a Transformers folder",
        description="Read a fairseq checkpoint folder (model.pt + dict.txt) and write a Transformers folder "
        "(safetensors weights, config.json, conversion_report.json) that from_pretrained loads. The output "
        "is checked against a reference fairseq forward pass before it appears at OUT.",
        epilog=CONVERT_EXAMPLES + "\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_options(convert, "for the tokenizer", "; a quoted pattern such as 'checkpoint*.pt' converts "
                        "each match into OUT/<name>/")
    convert.add_argument("out", metavar="OUT", help="output folder; must not exist unless --force")
    convert.add_argument("--label-dict", metavar="FILE",
                         help="label dictionary of a classifier (default: SRC/label/dict.txt if present)")
    which_head = convert.add_mutually_exclusive_group()
    which_head.add_argument("--head", metavar="NAME",
                            help=f"classification head to convert, or '{LM_HEAD}' for the masked-LM head "
                            "(default: the only classification head, else the masked-LM head)")
    which_head.add_argument("--all-heads", action="store_true",
                            help="write one folder per classification head under OUT")
    convert.add_argument("--model-type", choices=sorted(FAMILIES),
                         help="Transformers model type (default: detected from the checkpoint)")
    convert.add_argument("--default-language", metavar="LANG",
                         help="X-MOD: the language of inputs given no lang_ids (default: en_XX, as in fairseq; "
                         "required when the model has no en_XX adapter)")
    convert.add_argument("--dtype", choices=sorted(OUTPUT_DTYPE_NAMES),
                         help="cast floating-point weights (default: keep the checkpoint's dtype)")
    convert.add_argument("--max-shard-size", default="5GB", metavar="SIZE", type=_shard_size,
                         help="largest safetensors file before sharding (default: 5GB)")
    convert.add_argument("--no-verify", dest="verify", action="store_false",
                         help="skip the comparison with a reference fairseq forward pass")
    convert.add_argument("--verify-text", metavar="FILE",
                         help="also check the tokenizer against fairseq's encode on every line of FILE")
    convert.add_argument("--tolerance", type=_tolerance, default=DEFAULT_TOLERANCE, metavar="X",
                         help="allowed max abs difference relative to each output's scale "
                         f"(default: {DEFAULT_TOLERANCE:g})")
    convert.add_argument("--force", action="store_true",
                         help="replace OUT if it exists (the old folder stays until the new one is complete)")
    convert.add_argument("--allow-non-finite", action="store_true",
                         help="convert even if source weights hold NaN or Inf (refused by default)")
    convert.add_argument("--dry-run", action="store_true",
                         help="print the conversion plan (every tensor, its source, shape and dtype) and stop; "
                         "reads no tensor data and writes nothing")
    convert.add_argument("--language", action="append", default=[], metavar="CODE", type=_language_code,
                         help="language of the model for the model card (repeatable), e.g. --language en")
    convert.add_argument("--license", metavar="ID", help="license for the model card, e.g. mit")
    convert.add_argument("--base-model", metavar="REPO", help="base model for the model card, e.g. FacebookAI/roberta-base")
    convert.add_argument("--repo-id", metavar="NAME", type=_repo_id,
                         help="Hub repository the folder will be uploaded to: the model card's snippet loads it")
    convert.add_argument("--json", action="store_true", help="print the conversion report as JSON on stdout")
    convert.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_hyper_parameter_options(convert)
    verify = commands.add_parser(
        "verify",
        help="check an existing Transformers folder against a fairseq checkpoint",
        description="Check a Transformers folder (written by this tool or by anything else, e.g. transformers' old "
        "conversion scripts) against the fairseq checkpoint it came from: a reference fairseq forward pass on the "
        "source tensors against the folder's model, and fairseq's encode against the folder's tokenizer.",
        epilog="examples:\n  fairseq-to-hf verify roberta.base/ ./roberta-base-hf --encoder-json encoder.json "
        "--vocab-bpe vocab.bpe\n  fairseq-to-hf verify glue-mnli/ ./mnli-hf --head mnli --json\n\n"
        "exit codes: 0 the folder matches, 1 it does not, 2 bad input",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_options(verify, "to check the tokenizer")
    verify.add_argument("out", metavar="OUT", help="the Transformers folder to check")
    verify.add_argument("--head", metavar="NAME", help="fairseq classification head the folder was made from")
    verify.add_argument("--default-language", metavar="LANG",
                        help="X-MOD: the default language, when the folder's config has none")
    verify.add_argument("--verify-text", metavar="FILE", help="also check the tokenizer on every line of FILE")
    verify.add_argument("--tolerance", type=_tolerance, default=DEFAULT_TOLERANCE, metavar="X",
                        help=f"allowed max abs difference relative to each output's scale (default: {DEFAULT_TOLERANCE:g})")
    verify.add_argument("--block-by-block", action="store_true",
                        help="run the folder's model one block at a time (for models larger than memory)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    verify.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_hyper_parameter_options(verify)

    inspect = commands.add_parser(
        "inspect",
        help="describe a fairseq checkpoint and what convert would produce, from metadata alone",
        description="Describe a fairseq model folder without reading tensor data: format, key generation, "
        "layout, sizes, parameters by dtype, heads, tokenizer files, and what convert would produce.",
        epilog="examples:\n  fairseq-to-hf inspect roberta.base/\n  fairseq-to-hf inspect my-finetune/ --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_options(inspect, "to look for")
    inspect.add_argument("--default-language", metavar="LANG",
                         help="X-MOD: the default language convert would be given (default: en_XX)")
    inspect.add_argument("--json", action="store_true", help="print JSON for scripts")
    _add_hyper_parameter_options(inspect)
    return parser


def _return_freed_memory_promptly() -> None:
    """Have glibc serve allocations of 1 MiB and more with mmap, so freeing them returns the memory.

    By default glibc raises that threshold up to 32 MiB as large blocks are freed, after which
    layer-sized tensors come from the heap and stay resident once freed: converting and verifying
    tensor after tensor then grows the process by the heap's fragmentation (2.1 GB instead of 0.9 GB
    peak for a 355M-parameter model).
    """
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has its own policy


def run() -> NoReturn:
    """The command: `main`, then the process ends at once with its exit code.

    By then every file the command wrote is closed (or removed, after an error or an interrupt) and
    only its messages remain to be flushed. What is left of the interpreter's shutdown has nothing to
    do for it and must not change the exit code: tearing down torch's and Transformers' modules
    (0.3-0.7 s here), and after an interrupt, threads still importing or reading.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # never None: main() put devnull in place of a closed stream
        except (OSError, ValueError):  # a reader that went away, a stream already closed: nothing to tell
            pass
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    interrupts.install(defer=True)  # still deferred while torch is imported: a cut import fails obscurely later
    _discard_closed_streams()
    args = None
    from . import hashing

    try:
        args = build_parser().parse_args(argv)
        if args.command == "convert":
            _hash_early(args)
        import torch  # noqa: F401 -- here, still deferred: a signal that cut its import short could abort the process
        interrupts.start()
        return _run(args)
    except ConversionError as error:
        tell(f"fairseq-to-hf: error: {error.render()}")
        return error.exit_code
    except KeyboardInterrupt:
        interrupts.ignore_from_now()
        tell(f"fairseq-to-hf: interrupted{_nothing_written(args)}")
        return EXIT_INTERRUPTED
    except Exception as error:
        if interrupts.interrupted():  # the failure is the interrupt's doing
            interrupts.ignore_from_now()
            tell(f"fairseq-to-hf: interrupted{_nothing_written(args)}")
            return EXIT_INTERRUPTED
        return _unexpected(error, args)
    finally:
        hashing.stop_early()  # a hash the conversion never took over: it stopped before reading the checkpoint


def tell(line: str) -> None:
    """A line on stderr, flushed; where stderr cannot take it (a full device), the exit code says it all.

    Control characters in it (from a path, a name in a file) are shown escaped; only its own line breaks
    (an error's list of problems) break it."""
    try:
        print("\n".join(escape_controls(part) for part in line.split("\n")), file=sys.stderr, flush=True)
    except OSError:
        pass


def _discard_closed_streams() -> None:
    """A stdout or stderr the caller closed (`>&-`) is None in Python: what would go there is dropped."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))


def _nothing_written(args: argparse.Namespace | None) -> str:
    """What a stopped run says about OUT: only convert writes one."""
    return "; nothing was written" if args is None or args.command == "convert" else ""


def _unexpected(error: Exception, args: argparse.Namespace | None) -> int:
    """One line for an error nothing turned into a ConversionError; a traceback only when asked for."""
    if isinstance(error, OSError):  # one that no reader or writer turned into a clearer message
        where = f"{error.filename}: " if error.filename else ""
        tell(f"fairseq-to-hf: error: {where}{error.strerror or error}")
        return EXIT_OUTPUT if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else EXIT_BAD_INPUT
    if os.environ.get("FAIRSEQ_TO_HF_TRACEBACK"):  # a bug: the traceback, and still the bug's exit code
        traceback.print_exception(error)
        return EXIT_INTERNAL
    tell(f"fairseq-to-hf: internal error: {type(error).__name__}: {library_message(error, 300)} (please report it; "
         f"set FAIRSEQ_TO_HF_TRACEBACK=1 for the traceback){_nothing_written(args)}")
    return EXIT_INTERNAL


def _run(args: argparse.Namespace) -> int:
    _return_freed_memory_promptly()

    def log(message: str) -> None:
        if not getattr(args, "quiet", False):
            tell(message)

    if args.command == "convert":
        return _convert(args, log)
    if args.command == "inspect":
        return _inspect(args)
    return _verify(args, log)


def _tokenizer_files(args: argparse.Namespace) -> dict[str, str | None]:
    from .tokenizer import TOKENIZER_FILES

    return {file.role: getattr(args, file.role) for file in TOKENIZER_FILES}


def _verify(args: argparse.Namespace, log) -> int:
    from .verify.existing import verify_folder

    report = verify_folder(args.src, args.out, checkpoint=args.checkpoint, dictionary=args.dictionary,
                           default_language=args.default_language, head=args.head, verify_text=args.verify_text,
                           tolerance=args.tolerance, streamed=args.block_by_block, hyper_parameters=_supplied(args),
                           **_tokenizer_files(args))
    if not report.passed:  # the reasons are the error: said even with --quiet
        log = tell
    for mismatch in report.config_mismatches + ([report.run_error] if report.run_error else []):
        log(f"  {mismatch}")
    weights = report.weights
    if weights is not None:
        for kind, diff in weights.worst().items():
            log(f"  max abs diff {kind:<18} {diff:.3g}")
        not_finite = [f"{check.input} {check.output}" for check in weights.checks if check.non_finite]
        if not_finite:
            log(f"  not finite (NaN or Inf), so not verified: {', '.join(not_finite[:3])}"
                + (f" and {len(not_finite) - 3} more" if len(not_finite) > 3 else ""))
        for warning in weights.loading_warnings:
            log(f"  loading: {warning}")
    tokens = report.tokenizer
    if tokens:
        log(f"  tokenizer: {tokens.lines_checked} lines and {tokens.pairs_checked} pairs checked, "
            f"{len(tokens.mismatches)} differ")
        for mismatch in tokens.mismatches[:5]:
            log(f"    {mismatch.text[:60]!r}: fairseq {mismatch.expected[:10]} vs {mismatch.got[:10]}")
        for problem in tokens.special_tokens:
            log(f"    special tokens: {problem}")
    else:
        log(f"  tokenizer: not checked ({report.tokenizer_note})")
    log(f"{args.out}: {'matches' if report.passed else 'DOES NOT match'} {args.src}")
    code = EXIT_OK if report.passed else EXIT_VERIFY_FAILED
    if args.json:
        return _print_document(json.dumps(report.as_dict(), indent=2), code,
                               "the verification is complete: its verdict is the line above and the exit code")
    return code


def _report_batch(args: argparse.Namespace, log, results) -> int:
    failed = [(path, outcome) for path, outcome in results if isinstance(outcome, ConversionError)]
    counted = f"{len(results) - len(failed)} of {len(results)} checkpoints"
    if failed:  # the failures are errors: said even with --quiet
        log = tell
    log(f"planned {counted} (--dry-run: nothing written)" if args.dry_run else f"converted {counted} into {args.out}")
    for path, error in failed:
        first, *problems = error.render().splitlines()
        log("\n".join([f"  failed: {path.name}: {first}", *(f"  {problem}" for problem in problems)]))
    code = max((error.exit_code for _, error in failed), default=EXIT_OK)
    if args.json:
        document = [{"checkpoint": str(path), **({"error": outcome.render()} if path in dict(failed)
                                                 else outcome.as_dict())} for path, outcome in results]
        return _print_document(json.dumps(document, indent=2), code,
                               "the batch is complete: each OUT/NAME holds its report, as conversion_report.json")
    return code


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import format_inspection, inspect_source

    description = inspect_source(args.src, checkpoint=args.checkpoint, dictionary=args.dictionary,
                                 default_language=args.default_language, hyper_parameters=_supplied(args),
                                 **_tokenizer_files(args))
    return _print_document(json.dumps(description, indent=2) if args.json else format_inspection(description),
                           EXIT_OK, "nothing was written")


def _is_batch(args: argparse.Namespace) -> bool:
    return bool(args.checkpoint) and any(char in args.checkpoint for char in "*?[")


def _hash_early(args: argparse.Namespace) -> None:
    """Starts the checkpoint's sha256 in a child before torch is imported (about a second on one core
    that is idle meanwhile); where SRC is wrong, nothing starts and the conversion says what is wrong.
    Nothing is hashed for --dry-run, and a batch hashes each checkpoint as it comes."""
    from . import hashing
    from .reader.folder import find_checkpoint

    if args.dry_run or _is_batch(args):
        return
    try:
        _, checkpoint = find_checkpoint(args.src, args.checkpoint)
    except (ConversionError, OSError, ValueError):
        return
    hashing.start_early(checkpoint)


def _convert(args: argparse.Namespace, log) -> int:
    from .card import CardOptions
    from .pipeline import ConvertOptions, convert, convert_batch
    from .progress import WriteProgress

    options = ConvertOptions(
        checkpoint=args.checkpoint, dictionary=args.dictionary, label_dict=args.label_dict,
        tokenizer_files=_tokenizer_files(args),
        head=args.head, all_heads=args.all_heads, model_type=args.model_type, dtype=args.dtype,
        default_language=args.default_language, max_shard_size=args.max_shard_size,
        card=CardOptions(language=args.language, license=args.license, base_model=args.base_model,
                         repo_id=args.repo_id),
        verify=args.verify, verify_text=args.verify_text, tolerance=args.tolerance,
        allow_non_finite=args.allow_non_finite, hyper_parameters=_supplied(args), force=args.force,
        dry_run=args.dry_run,
    )
    progress = None if args.quiet else WriteProgress(sys.stderr)
    if _is_batch(args):
        return _report_batch(args, log, convert_batch(args.src, args.out, options, log=log, progress=progress))
    report = convert(args.src, args.out, options, log=log, progress=progress)
    if not args.dry_run:
        for output in report.outputs:
            status = "verified" if output.verification else "not verified (--no-verify)"
            log(f"wrote {output.folder}: {output.architecture}, {output.tensors_written} tensors, {status}")
    if args.json:
        return _print_document(json.dumps(report.as_dict(), indent=2), EXIT_OK,
                               "the conversion is complete: OUT holds the same report, as conversion_report.json")
    return EXIT_OK


def _print_document(text: str, code: int, hint: str) -> int:
    """Prints the command's document on stdout; returns the exit code of a command whose own outcome is
    `code`. A reader that stopped reading (`... --json | head`) changes nothing: the rest is dropped and
    the code stays the outcome's. Where stdout cannot take the document (a full device), one line says
    so and what is done all the same (`hint`), and a command that succeeded exits with EXIT_OUTPUT."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more goes to the pipe
    except OSError as error:
        failure = OutputError(f"cannot be written ({error.strerror})", path="stdout", hint=hint)
        tell(f"fairseq-to-hf: error: {failure.render()}")
        return failure.exit_code if code == EXIT_OK else code
    return code


if __name__ == "__main__":
    sys.exit(main())
