"""The reliability campaign's harness (issue 13): hypothesis profiles, the per-case checks, the corpus.

``make test`` runs these tests with the ``ci`` profile (a few hundred cases per surface, the same every
run); ``make reliability`` sets DOPAMINE_FUZZ_PROFILE=reliability (thousands, new ones every run) and
also runs the tests marked ``campaign`` (external scanners, long runs), which ``make test`` deselects.
Each run writes the number of cases per surface to build/reliability/fuzz-<profile>.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reliability_kit  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config):
    config.addinivalue_line("markers", "campaign: only in `make reliability` (external scanners, long runs)")


def pytest_collection_modifyitems(config, items):
    if reliability_kit.PROFILE == "reliability":
        return
    here = Path(__file__).resolve().parent
    kept, dropped = [], []
    for item in items:
        inside = here in Path(str(item.path)).resolve().parents
        (dropped if inside and item.get_closest_marker("campaign") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_sessionfinish(session, exitstatus):
    if not reliability_kit.COUNTS:
        return
    found = reliability_kit.save_found_failures()
    summary = reliability_kit.summary()
    summary["found"] = [str(p.relative_to(ROOT)) for p in found]
    reliability_kit.write_json(ROOT / "build" / "reliability" / f"fuzz-{reliability_kit.PROFILE}.json", summary)


def pytest_terminal_summary(terminalreporter):
    if not reliability_kit.COUNTS:
        return
    parts = [f"{name} {counts['cases']} ({counts['refused']} refused)"
             for name, counts in sorted(reliability_kit.COUNTS.items())]
    terminalreporter.write_line(f"fuzz cases [{reliability_kit.PROFILE}]: " + ", ".join(parts))
