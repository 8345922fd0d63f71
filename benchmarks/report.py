"""From measurements to figures: medians, ratios vs cp, growth between presets, memory checks, the
XXL estimate; and their Markdown and terminal renderings. Pure functions of the results dict."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from presets import PRESETS

CP, NO_VERIFY, VERIFY, EAGER = "cp", "convert --no-verify", "convert", "eager"
# The writer before the one pass (writer._ONE_PASS = False): each tensor read, checked, written in user space.
OLD_NO_VERIFY, OLD_VERIFY = "tensor by tensor --no-verify", "tensor by tensor"
# The one pass hashing the source itself, as before the child process (hashing.Sha256InChild).
PASS_HASH_NO_VERIFY, PASS_HASH_VERIFY = "sha256 in the pass --no-verify", "sha256 in the pass"
# The verification before its block-by-block batch shrank to 5 x 17 and the import of Transformers paused
# the garbage collector.
OLD_VERIFICATION = "6 x 32 verification"
METHODS = (CP, NO_VERIFY, VERIFY, PASS_HASH_NO_VERIFY, PASS_HASH_VERIFY, OLD_NO_VERIFY, OLD_VERIFY, OLD_VERIFICATION,
           EAGER)
OLDER_PATHS = {NO_VERIFY: (PASS_HASH_NO_VERIFY, OLD_NO_VERIFY), VERIFY: (OLD_VERIFICATION, PASS_HASH_VERIFY, OLD_VERIFY)}
IMPORT_TORCH, TINY_CONVERT = "python -c 'import torch'", "convert --no-verify tests/fixtures/roberta_mlm"

# The targets the benchmark checks.
GROWTH_TARGETS = {NO_VERIFY: 1.3, VERIFY: 2.5}  # extra time between presets, relative to cp's extra time
FIXED_COST_TARGET = 1.2  # tiny conversion vs `import torch`
MEMORY_BASE_BYTES = 10**9  # peak RSS <= 1 GB + 2 x largest tensor (+ one layer's weights when verifying)

GB = 1e9
MARK_BEGIN, MARK_END = "<!-- bench_convert:begin -->", "<!-- bench_convert:end -->"


# ---- figures -------------------------------------------------------------------------------------------

def ok_runs(runs: list[dict]) -> list[dict]:
    return [run for run in runs if run["returncode"] == 0]


def median_of(runs: list[dict], field: str) -> float | None:
    values = [run[field] for run in ok_runs(runs)]
    return statistics.median(values) if values else None


def median_to_disk(runs: list[dict]) -> float | None:
    values = [run["wall_s"] + run["sync_s"] for run in ok_runs(runs)]
    return statistics.median(values) if values else None


def peak_of(runs: list[dict], field: str) -> int | None:
    values = [run[field] for run in runs]  # a failed run's memory counts too: it may be why it failed
    return max(values) if values else None


def memory_limit(case: dict, method: str) -> int:
    """1 GB + 2 x the largest tensor (as stored), plus one layer in float32 (what verification computes in)."""
    limit = MEMORY_BASE_BYTES + 2 * case["largest_tensor_bytes"]
    if method == VERIFY:
        limit += case["layer_bytes_float32"]
    return limit


@dataclass
class Growth:
    dtype: str
    small: str
    big: str
    cp_extra: float
    extra: dict[str, float]  # method -> extra seconds
    cp_extra_to_disk: float
    extra_to_disk: dict[str, float]

    def ratio(self, method: str, to_disk: bool = False) -> float | None:
        extra = (self.extra_to_disk if to_disk else self.extra).get(method)
        base = self.cp_extra_to_disk if to_disk else self.cp_extra
        if extra is None or base <= 0:
            return None
        return extra / base


def growths(cases: dict[str, dict]) -> list[Growth]:
    """Consecutive presets of one dtype and page-cache state, by checkpoint size."""
    found = []
    for dtype, cache in sorted({(case["dtype"], cache_of(case)) for case in cases.values()}):
        ordered = sorted((c for c in cases.values() if c["dtype"] == dtype and cache_of(c) == cache),
                         key=lambda c: c["checkpoint_bytes"])
        for small, big in zip(ordered, ordered[1:]):
            cp_small, cp_big = median_of(small["runs"].get(CP, []), "wall_s"), median_of(big["runs"].get(CP, []), "wall_s")
            if cp_small is None or cp_big is None:
                continue
            extra, extra_disk = {}, {}
            for method in METHODS[1:]:
                a, b = small["runs"].get(method, []), big["runs"].get(method, [])
                if ok_runs(a) and ok_runs(b):
                    extra[method] = median_of(b, "wall_s") - median_of(a, "wall_s")
                    extra_disk[method] = median_to_disk(b) - median_to_disk(a)
            found.append(Growth(f"{dtype}, {cache}", small["name"], big["name"], cp_big - cp_small, extra,
                                median_to_disk(big["runs"][CP]) - median_to_disk(small["runs"][CP]), extra_disk))
    return found


def cache_of(case: dict) -> str:
    return case.get("cache", "cold")


def xxl_estimate(cases: dict[str, dict]) -> dict | None:
    """Linear extrapolation from the two largest float32 presets measured to XXL (float32).

    Time: per checkpoint byte (reading, casting, writing, and the forward passes of verification all
    scale with the parameter count). Peak RSS: per byte of the largest tensor without verification
    (the writer holds one tensor), and per byte of largest tensor + one float32 layer with it.
    """
    measured = sorted((c for c in cases.values() if c["dtype"] == "float32" and cache_of(c) == "cold"
                       and ok_runs(c["runs"].get(NO_VERIFY, []))),
                      key=lambda c: c["checkpoint_bytes"])
    if len(measured) < 2:
        return None
    small, big = measured[-2], measured[-1]
    xxl = PRESETS["xxl"]
    target = {"checkpoint_bytes": xxl.checkpoint_bytes("float32"),
              "largest_tensor_bytes": xxl.largest_tensor_bytes("float32"),
              "layer_bytes_float32": xxl.layer_bytes("float32")}
    estimate: dict = {"from": [small["name"], big["name"]], "params": xxl.params, **target, "methods": {}}
    for method in (CP, NO_VERIFY, VERIFY):
        a, b = small["runs"].get(method, []), big["runs"].get(method, [])
        if not (ok_runs(a) and ok_runs(b)):
            continue
        time_small, time_big = median_of(a, "wall_s"), median_of(b, "wall_s")
        seconds = _extrapolate(small["checkpoint_bytes"], time_small, big["checkpoint_bytes"], time_big,
                               target["checkpoint_bytes"])
        entry = {"wall_s": seconds, "wall_to_disk_s": _extrapolate(small["checkpoint_bytes"], median_to_disk(a),
                                                                   big["checkpoint_bytes"], median_to_disk(b),
                                                                   target["checkpoint_bytes"])}
        if method != CP:
            # The process's own memory follows the largest tensor it holds (+ a layer when verifying); its
            # mapped file pages (safetensors' mmap while verifying) follow the size of the model.
            size = (lambda c: c["largest_tensor_bytes"] + (c["layer_bytes_float32"] if method == VERIFY else 0))
            entry["peak_anon"] = _extrapolate(size(small), peak_of(a, "peak_anon"), size(big), peak_of(b, "peak_anon"),
                                              size(target))
            entry["peak_file"] = _extrapolate(small["checkpoint_bytes"], peak_of(a, "peak_file"),
                                              big["checkpoint_bytes"], peak_of(b, "peak_file"),
                                              target["checkpoint_bytes"])
            entry["max_rss"] = entry["peak_anon"] + entry["peak_file"]
            entry["limit"] = memory_limit(target, method)
        estimate["methods"][method] = entry
    return estimate


def _extrapolate(x0: float, y0: float, x1: float, y1: float, x: float) -> float:
    slope = (y1 - y0) / (x1 - x0) if x1 != x0 else 0.0
    return y1 + slope * (x - x1)


# ---- Markdown -------------------------------------------------------------------------------------------

def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _gb(value: float | None) -> str:
    return "–" if value is None else f"{value / GB:.2f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else "**met**" if ok else "**missed**"


def results_table(cases: dict[str, dict]) -> list[str]:
    lines = ["| case | method | runs | median s | min–max s | + sync s | vs cp | peak RSS GB | peak anon GB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, case in cases.items():
        cp = median_of(case["runs"].get(CP, []), "wall_s")
        for method in METHODS:
            runs = case["runs"].get(method)
            if runs is None:
                reason = case.get("skipped", {}).get(method)
                if reason:
                    lines.append(f"| {name} | {method} | skipped | | | | | | |")
                continue
            good = ok_runs(runs)
            walls = [r["wall_s"] for r in good]
            median = median_of(runs, "wall_s")
            sync = median_of(runs, "sync_s")
            failed = len(runs) - len(good)
            count = f"{len(good)}" + (f" (+{failed} failed)" if failed else "")
            spread = f"{min(walls):.2f}–{max(walls):.2f}" if walls else "–"
            vs_cp = _ratio(median / cp) if median is not None and cp else "–"
            lines.append(f"| {name} | {method} | {count} | {_s(median)} | {spread} | {_s(sync)} | {vs_cp} | "
                         f"{_gb(peak_of(runs, 'max_rss'))} | {_gb(peak_of(runs, 'peak_anon'))} |")
    return lines


def case_table(cases: dict[str, dict]) -> list[str]:
    lines = ["| case | layout | parameters | checkpoint GB | largest tensor GB | one layer (fp32) GB | generated in s "
             "| code measured |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, case in cases.items():
        preset = PRESETS[case["preset"]]
        layout = f"{preset.layers} x {preset.hidden}, ffn {preset.ffn}, vocab {preset.vocab_rows}, " + \
                 ("pre-norm" if preset.pre_norm else "post-norm")
        lines.append(f"| {name} | {layout} | {case['params'] / 1e6:.0f}M | {_gb(case['checkpoint_bytes'])} | "
                     f"{_gb(case['largest_tensor_bytes'])} | {_gb(case['layer_bytes_float32'])} | "
                     f"{_s(case.get('generate_s'))} | {', '.join(source_states(case)) or 'not recorded'} |")
    return lines


def source_states(case: dict) -> list[str]:
    """The distinct versions of src/ that the case's runs measured (src/ may change between runs)."""
    found = [run.get("source") for runs in case["runs"].values() for run in runs]
    return list(dict.fromkeys(state for state in found if state))


def growth_table(cases: dict[str, dict]) -> list[str]:
    lines = ["| dtype, cache | between | cp extra s | method | extra s | growth vs cp | target | verdict | "
             "growth incl. sync |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for growth in growths(cases):
        for method, extra in growth.extra.items():
            ratio = growth.ratio(method)
            target = GROWTH_TARGETS.get(method)
            verdict = _verdict(None if target is None or ratio is None else ratio <= target)
            lines.append(f"| {growth.dtype} | {growth.small} → {growth.big} | {growth.cp_extra:.2f} | {method} | "
                         f"{extra:.2f} | {_ratio(ratio)} | {'≤ %.1fx' % target if target else 'none'} | {verdict} | "
                         f"{_ratio(growth.ratio(method, to_disk=True))} |")
    return lines


def older_paths_table(cases: dict[str, dict]) -> list[str]:
    lines = ["| case | method | median s | older path | its median s | ratio |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, case in cases.items():
        for method, older in OLDER_PATHS.items():
            new_s = median_of(case["runs"].get(method, []), "wall_s")
            for old in older:
                old_s = median_of(case["runs"].get(old, []), "wall_s")
                if new_s and old_s:
                    lines.append(f"| {name} | {method} | {_s(new_s)} | {old} | {_s(old_s)} | {_ratio(new_s / old_s)} |")
    return lines


def fixed_cost_lines(fixed: dict | None) -> list[str]:
    if not fixed:
        return ["Not measured."]
    lines = ["| page cache | import torch s | tiny convert s | ratio | target | verdict | tiny convert peak RSS GB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for mode, runs in fixed["modes"].items():
        torch_s, tiny_s = median_of(runs[IMPORT_TORCH], "wall_s"), median_of(runs[TINY_CONVERT], "wall_s")
        ratio = tiny_s / torch_s if torch_s and tiny_s else None
        lines.append(f"| {mode} | {_s(torch_s)} | {_s(tiny_s)} | {_ratio(ratio)} | ≤ {FIXED_COST_TARGET:.1f}x | "
                     f"{_verdict(None if ratio is None else ratio <= FIXED_COST_TARGET)} | "
                     f"{_gb(peak_of(runs[TINY_CONVERT], 'max_rss'))} |")
    return lines


def memory_table(cases: dict[str, dict]) -> list[str]:
    lines = ["| case | method | limit GB | peak RSS GB | verdict (RSS) | peak anon GB | verdict (anon) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, case in cases.items():
        for method in (NO_VERIFY, VERIFY):
            runs = case["runs"].get(method)
            if not runs:
                continue
            limit = memory_limit(case, method)
            rss, anon = peak_of(runs, "max_rss"), peak_of(runs, "peak_anon")
            lines.append(f"| {name} | {method} | {_gb(limit)} | {_gb(rss)} | {_verdict(rss <= limit)} | "
                         f"{_gb(anon)} | {_verdict(anon <= limit)} |")
    return lines


def xxl_lines(cases: dict[str, dict]) -> list[str]:
    estimate = xxl_estimate(cases)
    if estimate is None:
        return ["Needs two float32 presets with `convert --no-verify` measured."]
    lines = [f"XXL: {estimate['params'] / 1e9:.1f}B parameters, {_gb(estimate['checkpoint_bytes'])} GB in float32, "
             f"largest tensor {_gb(estimate['largest_tensor_bytes'])} GB, one layer "
             f"{_gb(estimate['layer_bytes_float32'])} GB. Extrapolated linearly from "
             f"{' and '.join(estimate['from'])}: time per checkpoint byte; peak anonymous memory per byte of the "
             "largest tensor (plus one float32 layer when verifying); peak mapped file pages per checkpoint byte; "
             "peak RSS = the two added. **These are estimates, not measurements.**", "",
             "| method | est. wall s | est. + sync s | est. peak RSS GB | est. peak anon GB | limit GB | "
             "within limit (anon) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for method, entry in estimate["methods"].items():
        anon, limit = entry.get("peak_anon"), entry.get("limit")
        lines.append(f"| {method} | {_s(entry['wall_s'])} | {_s(entry['wall_to_disk_s'])} | "
                     f"{_gb(entry.get('max_rss'))} | {_gb(anon)} | {_gb(limit)} | "
                     f"{_verdict(None if anon is None else anon <= limit)} |")
    return lines


def render_markdown(results: dict) -> str:
    """The section between MARK_BEGIN and MARK_END of docs/benchmarks.md."""
    cases = results["cases"]
    latest = results["invocations"][-1]
    machine = latest["machine"]
    out = [MARK_BEGIN, "", "## Measured results", "",
           "_Generated by `benchmarks/bench_convert.py`; rerunning it replaces this section._", ""]
    sources = [*cases.values()] + ([results["fixed_cost"]] if results.get("fixed_cost") else [])
    out += ["### Commands", "", "```bash"]
    out += list(dict.fromkeys(command for source in sources
                              for command in source.get("commands", [source.get("command")]) if command))
    out += ["```", ""]
    out += ["### Machine", "",
            f"- {machine['cores']} cores ({machine['cpu']}), {machine['ram_bytes'] / 2**30:.1f} GiB RAM, "
            f"swap {machine['swap_bytes'] / 2**30:.1f} GiB",
            f"- disk: {machine['disk']}",
            "- page cache: cases marked `warm` ran with the checkpoint in the page cache (read once, untimed, "
            "before their runs); the others " + ("had it dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`, as "
                                                 "root) before every run" if all(
                inv["dropped_caches"] or inv.get("warm") for inv in results["invocations"]) else
                "NOT always: some runs could not drop it (no root)"),
            f"- Linux {machine['kernel']}, Python {machine['python']}, " + ", ".join(
                f"{k} {v}" for k, v in latest["versions"].items()),
            "- runs: " + "; ".join(_run_summary(name, source) for name, source in
                                   [*cases.items(), ("fixed cost", results.get("fixed_cost") or {})] if source), ""]
    out += ["### Checkpoints", ""] + case_table(cases) + [""]
    out += ["### Time and memory", "",
            "Median wall time of the process (start to exit) over the runs; `+ sync` is the median time of the "
            "`sync` after it (its dirty pages reaching the disk); `vs cp` divides medians; peak RSS is the "
            "kernel's high-water mark (VmHWM, includes mapped file pages), peak anon is the sampled peak of "
            "RssAnon (memory the process alone holds). GB = 10^9 bytes.", ""]
    out += results_table(cases) + [""]
    skipped = [(name, method, reason) for name, case in cases.items()
               for method, reason in case.get("skipped", {}).items()]
    out += [f"- {name} {method} skipped: {reason}" for name, method, reason in skipped]
    out += ["", "### Against the older paths", "",
            "Median wall time of the converter divided by that of an older path in the same runs: `6 x 32 "
            "verification` runs a block-by-block verification on a 6 x 32 padded batch (now 5 x 17) and imports "
            "Transformers with the garbage collector running; `sha256 in the pass` hashes the source in the "
            "writer's pass instead of a child process started before torch is imported; `tensor by tensor` is "
            "the writer before the one pass (each tensor read, checked and written in user space, the sha256 a "
            "pass of its own).", ""]
    out += older_paths_table(cases) + [""]
    out += ["", "### Growth between presets", "",
            "Extra median time from one preset to the next, divided by the extra time of `cp` between the same "
            "two files.", ""] + growth_table(cases) + [""]
    out += ["### Fixed cost", "", f"`{TINY_CONVERT}` against `{IMPORT_TORCH}`, medians over "
            f"{_runs_count(results.get('fixed_cost'))} runs each.", ""] + fixed_cost_lines(results.get("fixed_cost")) + [""]
    out += ["### Memory", "",
            "Limit: 1 GB + 2 x the largest tensor as stored, plus one layer's weights in float32 (what the "
            "verification computes in) with verification.", ""] + memory_table(cases) + [""]
    out += ["### Estimate for XXL", ""] + xxl_lines(cases) + ["", MARK_END]
    return "\n".join(out) + "\n"


def _run_summary(name: str, source: dict) -> str:
    runs = [run for group in (source.get("runs") or {}).values() for run in group] or \
        [run for mode in (source.get("modes") or {}).values() for group in mode.values() for run in group]
    loads = [run["load_1m"] for run in runs if "load_1m" in run]
    load = f"load average {min(loads):.1f}–{max(loads):.1f}" if loads else "load not recorded"
    return f"{name} on {source.get('date', '?')} ({load})"


def _runs_count(fixed: dict | None) -> str:
    if not fixed:
        return "0"
    counts = {len(runs) for mode in fixed["modes"].values() for runs in mode.values()}
    return "/".join(str(c) for c in sorted(counts))


DOC_HEADER = """# Benchmarks

How fast `fairseq-to-hf convert` is and how much memory it takes, against copying the checkpoint with
`cp` (the disk floor) and against the eager way (torch.load everything, build the model, save_pretrained).
The checkpoints are synthetic (random weights) but in the exact fairseq 0.12 format; see
`benchmarks/synthetic.py`.

"""


def merge_into_document(existing: str | None, section: str) -> str:
    """Replaces the generated section of the document, keeping everything written outside it."""
    if existing and MARK_BEGIN in existing and MARK_END in existing:
        before = existing[: existing.index(MARK_BEGIN)]
        after = existing[existing.index(MARK_END) + len(MARK_END):].lstrip("\n")
        return before + section + ("\n" + after if after else "")
    return (existing.rstrip() + "\n\n" if existing else DOC_HEADER) + section


# ---- terminal -----------------------------------------------------------------------------------------

def render_terminal(results: dict) -> str:
    """The same figures, as plain text for the console."""
    cases = results["cases"]
    lines = [f"{'case':<18} {'method':<30} {'median s':>9} {'vs cp':>7} {'peak RSS GB':>12} {'anon GB':>8}"]
    for name, case in cases.items():
        cp = median_of(case["runs"].get(CP, []), "wall_s")
        for method in METHODS:
            runs = case["runs"].get(method)
            if runs is None:
                if method in case.get("skipped", {}):
                    lines.append(f"{name:<18} {method:<30} skipped: {case['skipped'][method]}")
                continue
            median = median_of(runs, "wall_s")
            failed = "" if ok_runs(runs) else "  FAILED"
            lines.append(f"{name:<18} {method:<30} {_s(median):>9} "
                         f"{_ratio(median / cp) if median and cp else '–':>7} {_gb(peak_of(runs, 'max_rss')):>12} "
                         f"{_gb(peak_of(runs, 'peak_anon')):>8}{failed}")
    for growth in growths(cases):
        for method in METHODS[1:]:
            if method in growth.extra:
                target = GROWTH_TARGETS.get(method)
                lines.append(f"growth {growth.dtype} {growth.small}->{growth.big} {method}: "
                             f"{_ratio(growth.ratio(method))} of cp's"
                             + (f" (target <= {target}x)" if target else ""))
    fixed = results.get("fixed_cost")
    if fixed:
        for mode, runs in fixed["modes"].items():
            torch_s, tiny_s = median_of(runs[IMPORT_TORCH], "wall_s"), median_of(runs[TINY_CONVERT], "wall_s")
            if torch_s and tiny_s:
                lines.append(f"fixed cost ({mode} cache): tiny convert {tiny_s:.2f} s / import torch {torch_s:.2f} s"
                             f" = {tiny_s / torch_s:.2f}x (target <= {FIXED_COST_TARGET}x)")
    return "\n".join(lines)
