"""The kill -9 matrix (issue 13): every protocol phase x every party, SIGKILLed there, restarted, checked.

``make test`` runs a few representative cells; ``make reliability`` runs all 24 (marked ``campaign``).
Each cell writes build/reliability/kill-matrix/<phase>-<party>.json. What a cell does and checks:
tests/reliability/crash_kit.py.
"""

import pytest
from crash_kit import HOSPITALS, PARTIES, PER_HOSPITAL, PHASES, ROOT, run_cell, write_result

pytestmark = pytest.mark.slow

RESULTS = ROOT / "build" / "reliability" / "kill-matrix"
# make test's slice: the coordinator and a hospital each killed where its state is most delicate
# (uploads half in; charged but not yet sent), and m - 1 hospitals killed before they charge (the attempt
# cannot be released over fewer than m and must be retried).
FAST = {("upload", "coordinator"), ("upload", "one hospital"), ("local compute", "m - 1 hospitals")}


@pytest.fixture(scope="module")
def matrix_data(tmp_path_factory):
    from core.data.synthetic import write_demo_data

    root = tmp_path_factory.mktemp("kill-matrix-data")
    write_demo_data(root, hospitals=HOSPITALS, per_hospital=PER_HOSPITAL, test_images=30, size=40, seed=3)
    return root


CELLS = [pytest.param(phase, party, id=f"{phase}-{party}".replace(" ", "_"),
                      marks=() if (phase, party) in FAST else pytest.mark.campaign)
         for phase in PHASES for party in PARTIES]


@pytest.mark.parametrize(("phase", "party"), CELLS)
def test_a_kill_at_any_phase_breaks_no_invariant(phase, party, tmp_path, matrix_data):
    result = run_cell(phase, party, tmp_path, matrix_data)
    write_result(result, RESULTS)
    assert result.killed, "nothing was killed"
    assert not result.violations, "\n".join(result.violations)
