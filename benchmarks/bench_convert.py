"""Benchmark of `fairseq-to-hf convert` against `cp` (the disk floor) and the eager conversion.

For every case (preset x dtype) it writes a synthetic fairseq 0.12 checkpoint (benchmarks/synthetic.py),
then measures, each in a fresh process, `repeats` times, interleaved so that drift in the machine's
load hits every method alike:
  cp                   copy of model.pt (reads and writes the same bytes as the conversion)
  convert --no-verify  fairseq-to-hf convert SRC OUT --no-verify
  convert              fairseq-to-hf convert SRC OUT (with the verification forward passes)
  eager                benchmarks/eager_convert.py (skipped when it cannot fit in RAM)
plus the fixed cost: converting the tiny bundled fixture vs `python -c "import torch"`.

The page cache is dropped (sync; echo 3 > /proc/sys/vm/drop_caches, as root) before every run, so each
run reads from disk; without root the runs are warm and the report says so.

Raw results go to a JSON file (merged with earlier invocations, so base/large and xl can be run
separately); --output renders them into the generated section of a Markdown document.

    python benchmarks/bench_convert.py --cases base:float32 base:float16 large:float32 --repeats 3 \\
        --workdir /tmp/bench --output docs/benchmarks.md
    python benchmarks/bench_convert.py --cases xl:float32 --repeats 1 --no-fixed-cost \\
        --workdir /tmp/bench --output docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from measure import can_drop_page_cache, drop_page_cache, machine_facts, memory_available, run_measured
from presets import ITEMSIZE, PRESETS
from report import (CP, EAGER, IMPORT_TORCH, METHODS, NO_VERIFY, OLD_NO_VERIFY, OLD_VERIFICATION, OLD_VERIFY,
                    PASS_HASH_NO_VERIFY, PASS_HASH_VERIFY, TINY_CONVERT, VERIFY, merge_into_document, render_markdown, render_terminal)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TINY_FIXTURE = REPO / "tests" / "fixtures" / "roberta_mlm"
# What a process beside the weights needs (interpreter, torch, transformers), for the eager estimate.
RUNTIME_BYTES = 10**9
# Fraction of MemAvailable a run may plan to use: the machine is shared, and the kernel needs room.
MEMORY_HEADROOM = 0.85
# Disk a case needs beyond its checkpoint: one output (cp's copy or a conversion) at a time, the pool.
DISK_FACTOR = 2.3


def cli_with(change: str) -> str:
    """`python -c` code running the CLI after `change` (statements) put an older path back in place."""
    return f"import sys\n{change}\nfrom fairseq_to_hf.cli import main\nsys.exit(main(sys.argv[1:]))"


# The writer of before the one pass; no child process to hash the source (the writer's pass hashes it).
TENSOR_BY_TENSOR = cli_with("from fairseq_to_hf import writer; writer._ONE_PASS = False")
SHA256_IN_THE_PASS = cli_with("from fairseq_to_hf import hashing; "
                              "hashing.Sha256InChild.start = classmethod(lambda cls, path: None)")
# The verification's block-by-block batch as before (6 x 32), Transformers imported with the collector running.
# verify.compare imports torch, which the CLI imports only once the sha256 child runs: the cap is set by
# an import finder (which finds nothing) at the first import after compare's.
VERIFICATION_6_X_32 = cli_with("""\
import gc
gc.disable = lambda: None
class SetCapOfBefore:
    done = False
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        compare = sys.modules.get("fairseq_to_hf.verify.compare")
        if not cls.done and hasattr(compare, "STREAMED_MAX_TOKENS"):
            compare.STREAMED_MAX_TOKENS, cls.done = 32, True
        return None
sys.meta_path.insert(0, SetCapOfBefore)""")
OLDER_PATH_CODE = {PASS_HASH_NO_VERIFY: SHA256_IN_THE_PASS, PASS_HASH_VERIFY: SHA256_IN_THE_PASS,
                   OLD_NO_VERIFY: TENSOR_BY_TENSOR, OLD_VERIFY: TENSOR_BY_TENSOR, OLD_VERIFICATION: VERIFICATION_6_X_32}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time and peak memory of fairseq-to-hf convert vs cp and vs the eager conversion.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[-1],
    )
    parser.add_argument("--cases", nargs="+", metavar="PRESET:DTYPE",
                        help="cases to run, e.g. base:float32 large:float16 (default: --presets x --dtypes)")
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["base", "large"])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(ITEMSIZE), default=["float32"])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method per case (median reported)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--no-fixed-cost", dest="fixed_cost", action="store_false",
                        help="skip the tiny-fixture vs import torch measurement")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fairseq-to-hf-bench"),
                        help="where checkpoints and outputs go (needs about 2.5x the largest checkpoint free)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep (and reuse) the generated checkpoints instead of deleting them after each case")
    parser.add_argument("--warm", action="store_true",
                        help="do not drop the page cache before each run (the checkpoint is read once first); "
                             "cases are recorded as '<case> warm'")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed")
    parser.add_argument("--results", type=Path, help="JSON of raw results (default: WORKDIR/results.json); "
                        "earlier results of other cases in it are kept")
    parser.add_argument("--fresh", action="store_true", help="start a new results file instead of merging")
    parser.add_argument("--output", type=Path, help="Markdown document whose generated section is (re)written")
    parser.add_argument("--report-only", action="store_true", help="measure nothing; render the results file")
    args = parser.parse_args(argv)
    args.results = args.results or args.workdir / "results.json"
    args.case_list = _case_list(parser, args)
    return args


def _case_list(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, str]]:
    if not args.cases:
        return [(preset, dtype) for preset in args.presets for dtype in args.dtypes]
    cases = []
    for text in args.cases:
        preset, _, dtype = text.partition(":")
        if preset not in PRESETS or dtype not in ITEMSIZE:
            parser.error(f"bad case {text!r}: use PRESET:DTYPE with a preset of {sorted(PRESETS)} "
                         f"and a dtype of {sorted(ITEMSIZE)}")
        cases.append((preset, dtype))
    return cases


# ---- commands -------------------------------------------------------------------------------------------

def converter_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m fairseq_to_hf`."""
    script = Path(sys.executable).parent / "fairseq-to-hf"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fairseq_to_hf"]


def method_command(method: str, src: Path, out: Path) -> list[str]:
    if method == CP:
        return ["cp", str(src / "model.pt"), str(out)]
    if method == NO_VERIFY:
        return [*converter_command(), "convert", str(src), str(out), "--no-verify"]
    if method == VERIFY:
        return [*converter_command(), "convert", str(src), str(out)]
    if method in OLDER_PATH_CODE:
        no_verify = ["--no-verify"] if method in (PASS_HASH_NO_VERIFY, OLD_NO_VERIFY) else []
        return [sys.executable, "-c", OLDER_PATH_CODE[method], "convert", str(src), str(out), *no_verify]
    if method == EAGER:
        return [sys.executable, str(HERE / "eager_convert.py"), str(src), str(out)]
    raise ValueError(method)


def child_env() -> dict[str, str]:
    # No process may reach for the network (model hub look-ups would add noise, and there is none here).
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ---- one measured run ------------------------------------------------------------------------------------

class Runner:
    def __init__(self, workdir: Path, cold: bool, timeout: float | None) -> None:
        self.workdir, self.cold, self.timeout = workdir, cold, timeout
        self.source = source_state()
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def run(self, label: str, command: list[str], output: Path | None = None) -> dict:
        """One measured run in a fresh process; `output` is removed afterwards (untimed)."""
        if output is not None:
            remove(output)
        if self.cold:
            drop_page_cache()
        # src/ is edited while benchmarks run: record which code each run measured.
        self.source = source_state()
        load = os.getloadavg()[0]  # the machine is shared: other processes' load is part of the story
        log = self.logs / (label.replace(" ", "_").replace("/", "_").replace("'", "") + ".log")
        measurement = run_measured(command, log_path=log, timeout=self.timeout, env=child_env()).as_dict()
        measurement["load_1m"] = load
        measurement["source"] = self.source
        status = "ok" if measurement["returncode"] == 0 else f"FAILED (exit {measurement['returncode']}, log {log})"
        print(f"  {label}: {measurement['wall_s']:.2f} s (+{measurement['sync_s']:.2f} s sync), "
              f"peak RSS {measurement['max_rss'] / 1e9:.2f} GB, anon {measurement['peak_anon'] / 1e9:.2f} GB, "
              f"load {load:.1f} {status}", file=sys.stderr, flush=True)
        if measurement["error"]:
            print("    " + measurement["error"].replace("\n", "\n    "), file=sys.stderr, flush=True)
        if output is not None:
            remove(output)
            os.sync()
        return measurement


# ---- cases -----------------------------------------------------------------------------------------------

def case_record(preset_name: str, dtype: str, warm: bool) -> dict:
    preset = PRESETS[preset_name]
    return {"name": f"{preset_name}-{dtype}" + (" warm" if warm else ""), "cache": "warm" if warm else "cold",
            "preset": preset_name, "dtype": dtype, "params": preset.params,
            "checkpoint_bytes": preset.checkpoint_bytes(dtype),
            "largest_tensor_bytes": preset.largest_tensor_bytes(dtype),
            "layer_bytes_float32": preset.layer_bytes("float32"), "runs": {}, "skipped": {}}


def eager_need(case: dict) -> int:
    """torch.load holds every tensor, the model holds them again (same dtype), plus the runtime."""
    return 2 * case["checkpoint_bytes"] + RUNTIME_BYTES


def check_disk(case: dict, workdir: Path) -> None:
    need = int(DISK_FACTOR * case["checkpoint_bytes"]) + case["largest_tensor_bytes"]
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise SystemExit(f"{case['name']}: needs about {need / 1e9:.1f} GB free under {workdir}, "
                         f"has {free / 1e9:.1f} GB")


def generate(case: dict, folder: Path, runner: Runner, reuse: bool) -> None:
    if reuse and (folder / "model.pt").exists() and (folder / "dict.txt").exists():
        print(f"{case['name']}: reusing {folder}", file=sys.stderr)
        case["checkpoint_bytes"] = (folder / "model.pt").stat().st_size
        return
    remove(folder)
    command = [sys.executable, str(HERE / "synthetic.py"), case["preset"], case["dtype"], str(folder)]
    measurement = runner.run(f"{case['name']} generate", command)
    if measurement["returncode"] != 0:
        raise SystemExit(f"{case['name']}: generating the checkpoint failed:\n{measurement['error']}")
    case["generate_s"] = measurement["wall_s"]
    case["generate_max_rss"] = measurement["max_rss"]
    case["checkpoint_bytes"] = (folder / "model.pt").stat().st_size


def run_case(preset: str, dtype: str, args: argparse.Namespace, runner: Runner, save: Callable[[dict], None]) -> dict:
    case = case_record(preset, dtype, args.warm)
    print(f"{case['name']}: {case['params'] / 1e6:.0f}M parameters, {case['checkpoint_bytes'] / 1e9:.2f} GB",
          file=sys.stderr, flush=True)
    check_disk(case, args.workdir)
    folder = args.workdir / "ckpt" / f"{preset}-{dtype}"  # cold and warm cases share it
    generate(case, folder, runner, reuse=args.keep_checkpoints)
    if args.warm:  # untimed: every run then finds the checkpoint in the page cache
        with open(folder / "model.pt", "rb") as file:
            while file.read(64 << 20):
                pass
    methods = list(args.methods)
    if EAGER in methods:
        need, available = eager_need(case), memory_available()
        if need > MEMORY_HEADROOM * available:
            case["skipped"][EAGER] = (f"needs about {need / 1e9:.1f} GB (2 x {case['checkpoint_bytes'] / 1e9:.1f} GB "
                                      f"checkpoint: the loaded state dict and the model, + 1 GB runtime); "
                                      f"{available / 1e9:.1f} GB available of "
                                      f"{machine_facts(args.workdir)['ram_bytes'] / 1e9:.1f} GB RAM")
            methods.remove(EAGER)
            print(f"  eager skipped: {case['skipped'][EAGER]}", file=sys.stderr)
    out = args.workdir / "out"
    out.mkdir(exist_ok=True)
    try:
        for repeat in range(args.repeats):
            for method in methods:
                target = out / ("cp-model.pt" if method == CP else method.replace(" ", "").replace("-", "_"))
                measurement = runner.run(f"{case['name']} {method} #{repeat + 1}",
                                         method_command(method, folder, target), output=target)
                case["runs"].setdefault(method, []).append(measurement)
                save(case)
    finally:
        if not args.keep_checkpoints:
            remove(folder)
    return case


def run_fixed_cost(args: argparse.Namespace, runner: Runner, cold_possible: bool) -> dict:
    """The tiny fixture converted vs `import torch`: what a run costs before any weight is touched."""
    commands = {IMPORT_TORCH: ([sys.executable, "-c", "import torch"], None)}
    tiny_out = args.workdir / "out" / "tiny"
    tiny_out.parent.mkdir(parents=True, exist_ok=True)
    commands[TINY_CONVERT] = (method_command(NO_VERIFY, TINY_FIXTURE, tiny_out), tiny_out)
    modes: dict[str, dict[str, list[dict]]] = {}
    for mode in (["cold"] if cold_possible else []) + ["warm"]:
        runner.cold = mode == "cold"
        if mode == "warm":  # one untimed run of each, so that every file they read is cached
            for command, output in commands.values():
                runner.run("warm-up", command, output)
        modes[mode] = {name: [] for name in commands}
        for repeat in range(args.repeats):
            for name, (command, output) in commands.items():
                modes[mode][name].append(runner.run(f"fixed cost {mode} {name} #{repeat + 1}", command, output))
    runner.cold = cold_possible and not args.warm
    return {"modes": modes}


# ---- results file ----------------------------------------------------------------------------------------

def load_results(path: Path, fresh: bool) -> dict:
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    return {"invocations": [], "cases": {}, "fixed_cost": None}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)


def versions() -> dict[str, str]:
    found = {}
    for package in ("fairseq-to-hf", "torch", "transformers", "safetensors"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["source"] = source_state()
    return found


def source_state() -> str:
    """HEAD's short hash, plus a digest of src/ when the work tree differs from it."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", "?"
    if not dirty:
        return commit
    digest = hashlib.sha256()
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return f"{commit}+src-{digest.hexdigest()[:8]}"


def invocation_command(argv: list[str] | None) -> str:
    words = sys.argv[1:] if argv is None else argv
    script = Path(__file__).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join(["python", str(shown), *words])


def compile_package() -> None:
    """Byte-compiles the package as `pip install` does: an editable install under PYTHONDONTWRITEBYTECODE
    would compile every module again in every run, a cost no installed copy has."""
    import fairseq_to_hf

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(fairseq_to_hf.__file__).parent)], check=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = load_results(args.results, args.fresh)
    if not args.report_only:
        compile_package()
        cold_possible = can_drop_page_cache()
        if not cold_possible and not args.warm:
            print("cannot drop the page cache (not root?): runs are warm", file=sys.stderr)
        runner = Runner(args.workdir, cold=cold_possible and not args.warm, timeout=args.timeout)
        results["invocations"].append({
            "command": invocation_command(argv),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
            "machine": machine_facts(args.workdir), "versions": versions(),
            "dropped_caches": runner.cold, "warm": args.warm, "cases": [f"{p}-{d}" for p, d in args.case_list],
        })

        invocation = results["invocations"][-1]

        def save(case: dict) -> None:
            case.update(command=invocation["command"], date=invocation["date"])
            earlier = results["cases"].get(case["name"])
            case["commands"] = list(dict.fromkeys([*(earlier or {}).get("commands", []), invocation["command"]]))
            if earlier:  # methods not measured this time keep their earlier runs
                kept = {m: runs for m, runs in earlier["runs"].items() if m not in args.methods}
                case["runs"] = {**kept, **case["runs"]}
                case["skipped"] = {**{m: r for m, r in earlier.get("skipped", {}).items() if m not in args.methods},
                                   **case["skipped"]}
                if "generate_s" not in case and "generate_s" in earlier:
                    case["generate_s"] = earlier["generate_s"]
            results["cases"][case["name"]] = case
            write_json(args.results, results)

        if args.fixed_cost:
            results["fixed_cost"] = {**run_fixed_cost(args, runner, runner.cold), "command": invocation["command"],
                                     "date": invocation["date"]}
            write_json(args.results, results)
        for preset, dtype in args.case_list:
            save(run_case(preset, dtype, args, runner, save))
        remove(args.workdir / "out")
    print(render_terminal(results))
    if args.output:
        existing = args.output.read_text() if args.output.exists() else None
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(merge_into_document(existing, render_markdown(results)))
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
