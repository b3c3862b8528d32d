"""Scale (issue 13): K hospitals on loopback, 3 FSCDP rounds, K // 10 of them dropping out in round 2 (killed
or leaving mid-round); the coordinator's peak memory and round times for K = 10, 30, 100.

``make test`` runs K = 10 (2 dropouts); ``make reliability`` runs K = 10, 30 and 100 and writes the table
to build/reliability/scale.json. How the hospitals run and what is checked: tests/reliability/scale_kit.py.
"""

import json

import pytest
from scale_kit import ROOT, dropouts_for, growth_per_hospital_kb, markdown_table, run_scale, write_data

pytestmark = pytest.mark.slow

OUT = ROOT / "build" / "reliability" / "scale.json"
# The coordinator's memory per enrolled hospital must stay bounded: per hospital it holds its enrollment, its
# nonces, its open connections (2-3 long polls; each TLS connection's read buffer was 256 KiB until
# core.federation.server cut it to 32 KiB) and its round messages (masked inputs are summed as they arrive).
# Measured (2 cores): about 0.6 MB of peak RSS per added hospital from K = 10 to 100 (1.16 MB before the cut).
MAX_PER_HOSPITAL_KB = 1024


@pytest.fixture(scope="module")
def scale_data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("scale-data") / "data")


def _check(result) -> None:
    killed, leaving = dropouts_for(result.hospitals)
    assert not result.violations, "\n".join(result.violations)
    # the dropouts really happened, in round 2: the released sums shrink by exactly them from round 2 on
    assert len(result.dropouts) == len(killed) + len(leaving)
    included = [r["included"] for r in result.rounds]
    assert included[0] == result.hospitals, included
    assert included[1] == result.hospitals - len(killed), included  # the killed never sent a masked input
    assert included[2] == result.hospitals - len(killed) - len(leaving), included


def test_ten_hospitals_two_dropping_out_finish_three_rounds(tmp_path, scale_data):
    result = run_scale(10, tmp_path, scale_data, pools=2, timeout_s=150)
    _check(result)
    assert result.per_hospital_kb is not None and result.per_hospital_kb < MAX_PER_HOSPITAL_KB * 4, result.to_dict()


@pytest.mark.campaign
def test_scale_table_for_10_30_100_hospitals(tmp_path, scale_data):
    results = []
    for k in (10, 30, 100):
        result = run_scale(k, tmp_path / f"k{k}", scale_data, pools=3, timeout_s=330)
        results.append(result.to_dict())
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps({"results": results, "growth_per_hospital_kb": growth_per_hospital_kb(results),
                                   "table": markdown_table(results)}, indent=2) + "\n")
        _check(result)
    growth = growth_per_hospital_kb(results)
    assert growth is not None and growth < MAX_PER_HOSPITAL_KB, f"coordinator memory grows {growth} KB per hospital"
