"""`make bench`: every benchmark script is run (benchmarks/run_all.py), and README.md's tables are redrawn
from their JSON (benchmarks/readme_tables.py) between markers, leaving every other byte of the README alone.
No benchmark runs here: the checked-in JSON of benchmarks/results/ is the input."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tables = _load("readme_tables")
run_all = _load("run_all")

BLOCKS = re.compile(r"<!-- bench:([\w.-]+) -->\n.*?<!-- /bench:\1 -->", re.DOTALL)


def _outside_blocks(text: str) -> str:
    return BLOCKS.sub(lambda m: f"<!-- block {m.group(1)} -->", text)


@pytest.fixture
def results(tmp_path) -> Path:
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy)
    return copy


SAMPLE = """# Project

<!-- bench:dp_step -->
| outside the Benchmarks section: never touched |
<!-- /bench:dp_step -->

## Benchmarks

Prose before, *kept* as written.

<!-- bench:dp_step -->
| stale |
|---|
| 9.99x |
<!-- /bench:dp_step -->

Prose between.

| a hand-written table | without markers |
|---|---|
| 1 | 2 |

<!-- bench:not_run_yet -->
| no JSON for this one: left as it is |
<!-- /bench:not_run_yet -->

<!-- bench:secagg -->
<!-- /bench:secagg -->
Prose right after.

## Using real data

<!-- bench:secagg -->
| another section: never touched |
<!-- /bench:secagg -->
"""


def test_only_the_marked_blocks_of_the_benchmarks_section_change(results):
    after, done, kept = tables.rewrite(SAMPLE, results)
    assert done == ["dp_step", "secagg"] and kept == ["not_run_yet"]
    assert _outside_blocks(after) == _outside_blocks(SAMPLE)
    assert "| outside the Benchmarks section: never touched |" in after
    assert "| another section: never touched |" in after
    assert "| no JSON for this one: left as it is |" in after
    assert "9.99x" not in after and "| squeezenet1_1, 224 px |" in after
    assert "| 10 | " in after.split("## Benchmarks")[1]  # the empty secagg block was filled


def test_redrawing_is_idempotent(results):
    once, _, _ = tables.rewrite(SAMPLE, results)
    twice, _, _ = tables.rewrite(once, results)
    assert twice == once
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first, done, _ = tables.rewrite(readme, results)
    assert {"dp_step", "secagg", "round", "inference", "noise", "gui_latency"} <= set(done)
    assert tables.rewrite(first, results)[0] == first
    # The README's own text (everything but the tables) is what its authors wrote.
    assert _outside_blocks(first) == _outside_blocks(readme)


def test_the_readme_tables_have_todays_columns(results):
    readme, _, _ = tables.rewrite((REPO / "README.md").read_text(encoding="utf-8"), results)
    headers = {m.group(1): m.group(2).split("\n")[0] for m in
               re.finditer(r"<!-- bench:([\w.-]+) -->\n(.*?)<!-- /bench:\1 -->", readme, re.DOTALL)}
    assert headers["dp_step"] == ('| model, input | plain step | ours ("fused") | Opacus hooks | '
                                  "Opacus expanded weights | torch.func vmap |")
    assert headers["secagg"] == ("| K | client masking | coordinator unmask (0 / 1 dropout) | upload per hospital | "
                                 "raw AES-CTR (one core) | whole round | ratio | ratio to AES on both cores |")
    assert headers["round"] == "| mode | K | median round | slowest hospital's compute | ratio |"
    assert headers["inference"] == "| setting | warm prediction | fastest call | first prediction after open |"


def test_a_changed_json_value_shows_in_its_table(results):
    dp_step = json.loads((results / "dp_step.json").read_text())
    goal_row = next(r for r in dp_step["results"] if (r["model"], r["image_size"]) == ("squeezenet1_1", 224))
    goal_row["modes"]["fused"]["ratio"] = 1.234
    goal_row["plain_s"] = 0.5
    (results / "dp_step.json").write_text(json.dumps(dp_step))
    rounds = json.loads((results / "round.json").read_text())
    rounds["round_time"].append({"mode": "fscdp", "hospitals": 30, "median_round_s": 4.567,
                                 "median_slowest_compute_s": 3.21, "median_ratio": 1.4227})
    (results / "round.json").write_text(json.dumps(rounds))

    after, _, _ = tables.rewrite(SAMPLE.replace("<!-- bench:secagg -->\n<!-- /bench:secagg -->",
                                                "<!-- bench:round -->\n<!-- /bench:round -->"), results)
    assert "| squeezenet1_1, 224 px | 0.5 s | **1.23x** |" in after
    assert "| FSCDP | 30 | 4.57 s | 3.21 s | 1.42x |" in after


def test_a_benchmark_can_give_its_own_table(results):
    (results / "not_run_yet.json").write_text(json.dumps(
        {"readme_table": {"columns": ["images", "decoded per second"], "rows": [["35,000", "812"]]}}))
    after, done, kept = tables.rewrite(SAMPLE, results)
    assert "not_run_yet" in done and not kept
    assert "| images | decoded per second |\n|---|---|\n| 35,000 | 812 |\n<!-- /bench:not_run_yet -->" in after


def test_check_says_whether_the_readme_is_out_of_date(results, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(SAMPLE, encoding="utf-8")
    assert tables.main(["--results", str(results), "--readme", str(readme), "--check"]) == 1
    assert readme.read_text(encoding="utf-8") == SAMPLE  # --check changes nothing
    assert tables.main(["--results", str(results), "--readme", str(readme)]) == 0
    rewritten = readme.read_text(encoding="utf-8")
    assert rewritten != SAMPLE
    assert tables.main(["--results", str(results), "--readme", str(readme), "--check"]) == 0
    assert tables.main(["--results", str(results), "--readme", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == rewritten


def test_every_benchmark_script_is_in_the_one_list():
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py")
               if not p.stem.startswith("_")} - {"run_all", "readme_tables"}
    listed = {b.name for b in run_all.BENCHMARKS}
    assert scripts <= listed, f"add {sorted(scripts - listed)} to benchmarks/run_all.py's BENCHMARKS"
    assert {"dp_step", "secagg", "round", "inference", "noise", "gui_latency", "privacy_audit", "dicom_testfiles",
            "data_load"} == listed
    assert all(b.script.exists() for b in run_all.BENCHMARKS if not b.optional)


def test_the_runner_passes_out_and_quick_and_skips_a_script_not_written_yet(tmp_path):
    by_name = {b.name: b for b in run_all.BENCHMARKS}
    quick = by_name["dp_step"].command(tmp_path, quick=True)
    assert quick[1:] == [str(by_name["dp_step"].script), "--out", str(tmp_path / "dp_step.json"), "--quick"]
    assert "--quick" not in by_name["dicom_testfiles"].command(tmp_path, quick=True)
    assert "--quick" not in by_name["secagg"].command(tmp_path, quick=False)
    outcome = run_all.run_one(run_all.Benchmark("not_written_yet", optional=True), tmp_path, quick=True)
    assert outcome.status == "skipped" and "does not exist" in outcome.detail
    assert run_all.run_one(run_all.Benchmark("not_written_yet"), tmp_path, quick=True).status == "failed"


def test_the_runner_runs_each_in_turn_and_fails_when_one_failed(tmp_path, monkeypatch, capsys):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "fine.py").write_text(
        "import json, sys\nout = sys.argv[sys.argv.index('--out') + 1]\n"
        "open(out, 'w').write(json.dumps({'quick': '--quick' in sys.argv}))\n")
    (scripts / "broken.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(run_all, "HERE", scripts)
    monkeypatch.setattr(run_all, "BENCHMARKS", (run_all.Benchmark("fine"), run_all.Benchmark("broken"),
                                                 run_all.Benchmark("absent", optional=True)))
    out = tmp_path / "out"
    assert run_all.main(["--quick", "--out-dir", str(out)]) == 1
    assert json.loads((out / "fine.json").read_text()) == {"quick": True}
    summary = capsys.readouterr().out
    assert re.search(r"fine +ok", summary) and re.search(r"broken +failed .*exit code 3", summary)
    assert re.search(r"absent +skipped", summary)
    assert run_all.main(["--only", "fine", "--out-dir", str(out)]) == 0
    assert json.loads((out / "fine.json").read_text()) == {"quick": False}
