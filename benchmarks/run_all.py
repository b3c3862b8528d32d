"""Run every benchmark of ``benchmarks/``, one after the other, each writing ``<out-dir>/<name>.json``.

``make bench`` runs this into ``benchmarks/results/`` and then ``benchmarks/readme_tables.py``, which
rewrites the README's performance tables from that JSON; ``make bench-quick`` runs each with ``--quick``
into a temporary folder (a smoke run: the numbers mean little) and leaves the README alone.

    python benchmarks/run_all.py [--quick] [--out-dir benchmarks/results] [--only dp_step secagg ...]

BENCHMARKS below is the one list: a new benchmark is a script ``benchmarks/<name>.py`` taking ``--out``
(and ``--quick`` when it has a smoke run) plus a line here; one marked optional is skipped, with a note,
while its script does not exist yet. The benchmarks run in sequence, never two at once: each times itself,
and on a 2-core machine one would slow the other. A failed benchmark does not stop the others; the exit
code says whether every one succeeded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
DEFAULT_OUT_DIR = HERE / "results"


@dataclass(frozen=True)
class Benchmark:
    name: str  # benchmarks/<name>.py, writing <out-dir>/<name>.json
    has_quick: bool = True  # takes --quick (a smoke run)
    optional: bool = False  # skipped while the script does not exist
    env: dict[str, str] = field(default_factory=dict)

    @property
    def script(self) -> Path:
        return HERE / f"{self.name}.py"

    def command(self, out_dir: Path, *, quick: bool) -> list[str]:
        argv = [sys.executable, str(self.script), "--out", str(out_dir / f"{self.name}.json")]
        if quick and self.has_quick:
            argv.append("--quick")
        return argv


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("dp_step"),
    Benchmark("secagg"),
    Benchmark("round"),
    Benchmark("inference"),
    Benchmark("noise"),
    Benchmark("gui_latency", env={"QT_QPA_PLATFORM": "offscreen"}),
    Benchmark("privacy_audit"),
    Benchmark("dicom_testfiles", has_quick=False),  # pydicom's test files: seconds, no smoke run needed
    Benchmark("data_load"),  # a generated 35,000-image collection: decode throughput, memory during an epoch
)


@dataclass
class Outcome:
    name: str
    status: str  # "ok" | "failed" | "skipped"
    seconds: float = 0.0
    detail: str = ""


def selected(names: list[str] | None) -> list[Benchmark]:
    if not names:
        return list(BENCHMARKS)
    known = {b.name: b for b in BENCHMARKS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def run_one(benchmark: Benchmark, out_dir: Path, *, quick: bool) -> Outcome:
    if not benchmark.script.exists():
        if benchmark.optional:
            return Outcome(benchmark.name, "skipped", detail=f"benchmarks/{benchmark.script.name} does not exist yet")
        return Outcome(benchmark.name, "failed", detail=f"{benchmark.script} is missing")
    command = benchmark.command(out_dir, quick=quick)
    print(f"== {benchmark.name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **benchmark.env}, check=False)
    seconds = time.monotonic() - started
    written = out_dir / f"{benchmark.name}.json"
    if done.returncode != 0:
        return Outcome(benchmark.name, "failed", seconds, f"exit code {done.returncode}")
    if not written.exists():
        return Outcome(benchmark.name, "failed", seconds, f"exited 0 but wrote no {written}")
    return Outcome(benchmark.name, "ok", seconds, str(written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's smoke run (numbers mean little)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="where each writes <name>.json (default benchmarks/results)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (default: all)")
    parser.add_argument("--list", action="store_true", help="print the benchmarks' names and exit")
    args = parser.parse_args(argv)
    if args.list:
        for benchmark in BENCHMARKS:
            print(benchmark.name + (" (optional)" if benchmark.optional else ""))
        return 0
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = [run_one(b, out_dir, quick=args.quick) for b in selected(args.only)]
    print("\nbenchmark          status    seconds  detail")
    for o in outcomes:
        print(f"{o.name:18} {o.status:8} {o.seconds:8.1f}  {o.detail}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
