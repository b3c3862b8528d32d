"""Rewrite the performance tables of README.md's "## Benchmarks" section from benchmarks/results/*.json.

Each generated table sits between two HTML comments that Markdown does not show::

    <!-- bench:dp_step -->
    | model, input | plain step | ...
    <!-- /bench:dp_step -->

The name after ``bench:`` is the JSON file (``benchmarks/results/dp_step.json``); its table comes from
RENDERERS below, or, for a benchmark without one, from the JSON's own ``"readme_table"``: ``{"columns":
[...], "rows": [[...], ...]}`` (cells as text), so a new benchmark can give its table without a change
here. Only what lies between a pair of markers changes; every other byte of the README is kept, so the prose
around a table (what it measures, whether the goal is met) stays the authors'. A marked block whose JSON
is missing is left as it is (and named). Running it twice changes nothing the second time.

    python benchmarks/readme_tables.py            # rewrite README.md (``make bench`` runs it)
    python benchmarks/readme_tables.py --check    # exit 1 when README.md differs from the JSON
    python benchmarks/readme_tables.py --results DIR --readme FILE
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Benchmarks"
BLOCK = re.compile(r"(<!-- bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.DOTALL)
MISSING = "–"

Table = tuple[list[str], list[list[str]]]


# ---- formatting --------------------------------------------------------------------------------------

def _ratio(value: float | None, *, bold: bool = False) -> str:
    if value is None:
        return MISSING
    text = f"{value:.2f}x"
    return f"**{text}**" if bold else text


def _seconds(value: float | None, digits: int = 2) -> str:
    """0.67 s, 0.047 s: two significant digits below a second, else two decimals."""
    if value is None:
        return MISSING
    return f"{value:.{digits}g} s" if value < 1 else f"{value:.2f} s"


def _ms(value: float | None) -> str:
    """3.1 ms, 20.5 ms, 395.8 ms."""
    return MISSING if value is None else f"{value:.1f} ms"


def _ms3(value: float | None) -> str:
    """Three significant digits: 1.24 ms, 74.6 ms, 104 ms."""
    if value is None:
        return MISSING
    if value >= 100:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def markdown(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- one renderer per benchmark: the README's columns, from its JSON --------------------------------------

DP_STEP_MODELS = ("squeezenet1_1",)  # the goal's model; the JSON's full table has the others
DP_STEP_MODES = (("fused", 'ours ("fused")'), ("hooks", "Opacus hooks"), ("ew", "Opacus expanded weights"),
                 ("torch_func", "torch.func vmap"))
DP_STEP_GOAL = ("squeezenet1_1", 224)  # its ratio is the goal's, shown in bold


def dp_step(data: dict) -> Table:
    columns = ["model, input", "plain step", *(title for _, title in DP_STEP_MODES)]
    results = [r for r in data.get("results", []) if r.get("model") in DP_STEP_MODELS]
    results.sort(key=lambda r: (DP_STEP_MODELS.index(r["model"]), -int(r["image_size"])))
    rows = []
    for r in results:
        goal = (r["model"], int(r["image_size"])) == DP_STEP_GOAL
        modes = r.get("modes", {})
        rows.append([f"{r['model']}, {r['image_size']} px", _seconds(r.get("plain_s")),
                     *(_ratio(modes.get(mode, {}).get("ratio"), bold=goal and mode == "fused")
                       for mode, _ in DP_STEP_MODES)])
    return columns, rows


def secagg(data: dict) -> Table:
    columns = ["K", "client masking", "coordinator unmask (0 / 1 dropout)", "upload per hospital",
               "raw AES-CTR (one core)", "whole round", "ratio", "ratio to AES on both cores"]
    rows = []
    for r in data.get("results", []):
        unmask = r.get("coordinator_unmask_s", {})
        upload = r.get("bytes_per_hospital", {}).get("upload")

        def ms(seconds: float | None) -> str:
            return MISSING if seconds is None else _ms(1000 * seconds)

        zero, one = unmask.get("0"), unmask.get("1")
        rows.append([
            str(r["hospitals"]), ms(r.get("client_mask_s")),
            f"{1000 * zero:.1f} / {ms(one)}" if zero is not None else MISSING,
            f"{upload / 1e6:.2f} MB" if upload is not None else MISSING,
            ms(r.get("raw_aes_ctr_s")), ms(r.get("round_s")), _ratio(r.get("round_ratio"), bold=True),
            _ratio(r.get("round_ratio_all_cores")),
        ])
    return columns, rows


def round_time(data: dict) -> Table:
    columns = ["mode", "K", "median round", "slowest hospital's compute", "ratio"]
    rows = [[r["mode"].upper(), str(r["hospitals"]), f"{r['median_round_s']:.2f} s",
             f"{r['median_slowest_compute_s']:.2f} s", _ratio(r.get("median_ratio"))]
            for r in data.get("round_time", [])]
    return columns, rows


def round_memory(data: dict) -> Table:
    columns = ["K", "model", "coordinator RSS: serving / peak", "goal", "median round"]
    rows = [[str(r["hospitals"]), r["model"],
             f"{r['coordinator_idle_rss_mb']:.0f} / {r['coordinator_peak_rss_mb']:.0f} MB",
             f"≤ {r['goal_rss_mb']:.0f} MB" if r.get("goal_rss_mb") is not None else MISSING,
             f"{r['median_round_s']:.2f} s" if r.get("median_round_s") is not None else MISSING]
            for r in data.get("memory", []) + data.get("scale", []) if r.get("coordinator_peak_rss_mb") is not None]
    return columns, rows


def inference(data: dict) -> Table:
    columns = ["setting", "warm prediction", "fastest call", "first prediction after open"]
    warm = data.get("warm", {}).get("predict_image_at_input_size", {})
    first = data.get("first_prediction", {})
    threads = int(data.get("threads", 0))
    policy = data.get("omp_wait_policy") or ""
    setting = f"{threads} thread{'s' if threads != 1 else ''}, " + (
        f"`OMP_WAIT_POLICY={policy}`" if policy else "OpenMP spinning (torch default)")
    first_s = first.get("first_prediction_s_median")
    return columns, [[setting, _ms(warm.get("median_ms")), _ms(warm.get("min_ms")),
                      _seconds(first_s) if first_s is not None else MISSING]]


NOISE_VARIANTS = (("keystream", "keystream alone"), ("dp_normal", "float64 Gaussians"),
                  ("dp_add_normal", "noise added and snapped in place"),
                  ("torch_normal_x4", "old seeded-torch noise (four draws)"))
KNOWN_LENGTHS = {725_061: "SqueezeNet 1.1", 11_179_077: "ResNet-18"}


def noise(data: dict) -> Table:
    columns = ["parameters", *(title for _, title in NOISE_VARIANTS)]
    rows = []
    for r in data.get("results", []):
        length = int(r["length"])
        name = f"{length:,}" + (f" ({KNOWN_LENGTHS[length]})" if length in KNOWN_LENGTHS else "")
        variants = r.get("variants", {})
        rows.append([name, *(_ms3(variants.get(v, {}).get("median_ms")) for v, _ in NOISE_VARIANTS)])
    return columns, rows


def gui_latency(data: dict) -> Table:
    columns = ["job", "median gap", "worst gap", "window shown after"]
    # One job today ("result"); a list of them ("results", each with its "job") reads the same way.
    results = data.get("results") or ([data["result"]] if "result" in data else [])
    startup = data.get("startup_s") or []
    rows = []
    for k, r in enumerate(results):
        job = r.get("job") or f"DP training, {r.get('epochs')} epochs of {r.get('images')} images"
        rows.append([job, _ms(r.get("median_gap_ms")), _ms(r.get("worst_gap_ms")),
                     _seconds(statistics.median(startup)) if startup and k == 0 else MISSING])
    return columns, rows


def data_load(data: dict) -> Table:
    columns = ["phase", "images", "time", "throughput", "peak RSS"]
    phases = data.get("phases", {})
    titles = (("decode_1", "first decode, 1 process"), ("decode_pool", "first decode, pool"),
              ("validate_1", "validation, 1 process"), ("validate_pool", "validation, pool"),
              ("build", "first load of every image (pool, cache written)"), ("warm", "warm start (stack file)"),
              ("epoch", "every image read once + DP-SGD steps"), ("in_memory", "the old whole-tensor load"))
    rows = []
    for key, title in titles:
        r = phases.get(key)
        if not r:
            continue
        seconds = r.get("seconds", r.get("epoch_data_path_s"))
        rate = r.get("images_per_s")
        peak = r.get("peak_rss_mb")
        if key == "epoch" and r.get("dp_steps"):
            title = f"every image read once + {r['dp_steps']} DP-SGD steps ({r.get('model')})"
        rows.append([title, f"{r.get('images', 0):,}", _seconds(seconds) if seconds is not None else MISSING,
                     f"{rate:.0f} images/s" if rate is not None else MISSING,
                     f"{peak:,.0f} MB" if peak is not None else MISSING])
    return columns, rows


RENDERERS: dict[str, Callable[[dict], Table]] = {
    "dp_step": dp_step, "secagg": secagg, "round": round_time, "round.memory": round_memory, "inference": inference,
    "noise": noise, "data_load": data_load,
    "gui_latency": gui_latency,
}


def _own_table(data: dict) -> Table | None:
    table = data.get("readme_table")
    if not isinstance(table, dict) or not isinstance(table.get("columns"), list):
        return None
    return [str(c) for c in table["columns"]], [[str(cell) for cell in row] for row in table.get("rows", [])]


def render(name: str, results: Path) -> str | None:
    """The Markdown table of block ``name`` from ``results/<name>.json`` (``round.memory``: a second table of
    round.json); None when there is no JSON or no way to draw it (the block is then left as it is)."""
    path = results / f"{name.split('.')[0]}.json"
    if not path.exists():
        return None
    data: Any = json.loads(path.read_text(encoding="utf-8"))
    renderer = RENDERERS.get(name)
    table = renderer(data) if renderer is not None else _own_table(data)
    if table is None:
        return None
    return markdown(*table)


# ---- the README ------------------------------------------------------------------------------------------

def _section(text: str) -> tuple[int, int]:
    start = text.find("\n" + SECTION + "\n")
    if start < 0:
        raise SystemExit(f"README has no '{SECTION}' section")
    end = text.find("\n## ", start + len(SECTION) + 2)
    return start, len(text) if end < 0 else end


def rewrite(text: str, results: Path) -> tuple[str, list[str], list[str]]:
    """``text`` with every marked block of the Benchmarks section drawn afresh from ``results``; also the
    names rewritten and the names left as they were (no JSON)."""
    start, end = _section(text)
    done: list[str] = []
    kept: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        table = render(name, results)
        if table is None:
            kept.append(name)
            return match.group(0)
        done.append(name)
        return f"{match.group(1)}{table}\n{match.group(4)}"

    section = BLOCK.sub(replace, text[start:end])
    return text[:start] + section + text[end:], done, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder of <name>.json (default benchmarks/results)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the README is out of date")
    args = parser.parse_args(argv)
    before = args.readme.read_text(encoding="utf-8")
    after, done, kept = rewrite(before, args.results)
    if kept:
        print(f"left as they were (no JSON in {args.results}): {', '.join(kept)}")
    if args.check:
        if after != before:
            print(f"{args.readme} is out of date with {args.results}: run `python benchmarks/readme_tables.py`",
                  file=sys.stderr)
            return 1
        print(f"{args.readme}: {len(done)} table(s) up to date")
        return 0
    if after != before:
        args.readme.write_text(after, encoding="utf-8")
    print(f"{args.readme}: {len(done)} table(s) from {args.results} ({'rewritten' if after != before else 'unchanged'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
