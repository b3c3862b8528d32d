"""installer/smoke_test.sh passes a healthy app and fails on a traceback, an exit code or a missing window."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "installer" / "smoke_test.sh"

# A stand-in for the bundle that answers each smoke step as the real app does; FAKE_BREAK=<step>:<how>
# makes one step misbehave.
FAKE_APP = r"""#!/usr/bin/env bash
step=${1:-gui}
[[ $step == -m ]] && step=module-alias
[[ $step == --dopamine-child-job ]] && { read -r request; [[ $request == *'"job": "train"'* ]] || exit 8; step=child-job; }
broken=${FAKE_BREAK%%:*}; how=${FAKE_BREAK#*:}
if [[ $step == "$broken" ]]; then
    case $how in
        traceback) echo 'Traceback (most recent call last):'; echo 'ImportError: no module'; exit 0 ;;
        exit) echo 'error: something'; exit 3 ;;
        silent) exit 0 ;;
    esac
fi
case $step in
    --version|module-alias) echo 'dopamine 0.1.0' ;;
    privacy) echo 'epsilon = 1.2345 at delta = 1e-05' ;;
    demo-data) mkdir -p "$2/test/0" "$2/hospital_01/0" && printf 'png' > "$2/test/0/a.png" ;;
    inspect) printf '{\n  "usable": %s,\n  "problems": %s,\n}\n' "${FAKE_USABLE:-16}" "${FAKE_PROBLEMS:-[]}" ;;
    train) echo 'Privacy: epsilon = 3.1 at delta = 0.001' ;;
    predict) echo '[{"file": "a.png", "prediction": "Moderate"}]' ;;
    child-job) echo '{"type": "progress", "fraction": 0.5, "message": "epoch 1"}'; echo '{"type": "result", "data": {}}' ;;
    simulate) echo 'status: finished; wall time 20.1 s' ;;
    gui) [[ -n ${DOPAMINE_SMOKE_EXIT_MS:-} && -n ${DOPAMINE_STARTUP_PROBE:-} ]] || exit 9
         echo "DOPAMINE_WINDOW_SHOWN 1700000000.5 Dopamine - private training" ;;
esac
"""


# Stands in for the Python that runs installer/real_x.py (the real one is tested in test_real_x.py): it
# checks it is given real_x.py and the bundle's executable, and answers as real_x.py does.
FAKE_REAL_X = r"""#!/usr/bin/env bash
[[ $1 == */installer/real_x.py && $2 == --out && $4 == -- && -x $5 ]] || { echo "bad call: $*" >&2; exit 7; }
[[ ${FAKE_BREAK:-} == gui-real-x ]] && { echo 'DOPAMINE_REAL_X failed: qt.qpa.plugin: xcb' >&2; exit 1; }
echo "DOPAMINE_REAL_X ok: window 'Dopamine' shown"
"""


@pytest.fixture
def fake_app(tmp_path):
    path = tmp_path / "bundle" / "dopamine"
    path.parent.mkdir()
    path.write_text(FAKE_APP)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    python = tmp_path / "bundle-python"
    python.write_text(FAKE_REAL_X)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return path


def smoke(executable, **env):
    python = Path(executable).parent.parent / "bundle-python"
    return subprocess.run(["bash", str(SMOKE), str(executable)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env, "SMOKE_GUI_MS": "10", "SMOKE_PYTHON": str(python)})


def test_a_healthy_app_passes(fake_app):
    done = smoke(fake_app)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "smoke test passed: 12 steps"
    for name in ("version", "privacy", "demo-data", "train", "predict", "dicom-write", "dicom-decode", "module-alias",
                 "child-job", "simulate", "gui", "gui-real-x"):
        assert f"ok   {name} " in done.stdout


@pytest.mark.parametrize(("broken", "message"), [
    ("train:traceback", "FAIL train: a Python traceback"),
    ("gui:traceback", "FAIL gui: a Python traceback"),
    ("privacy:exit", "FAIL privacy: exit code 3"),
    ("child-job:traceback", "FAIL child-job: a Python traceback"),
    ("child-job:silent", "FAIL child-job: the output lacks"),
    ("simulate:exit", "FAIL simulate: exit code 3"),
    ("gui:silent", "FAIL gui: the output lacks"),
    ("predict:silent", "FAIL predict: no DR grade"),
    ("demo-data:silent", "FAIL predict: demo-data wrote no test image"),
    ("gui-real-x", "FAIL gui-real-x: exit code 1"),
])
def test_a_broken_step_fails_the_test(fake_app, broken, message):
    done = smoke(fake_app, FAKE_BREAK=broken)
    assert done.returncode == 1
    assert message in done.stderr
    assert "smoke test passed" not in done.stdout


def test_a_missing_bundle_fails(tmp_path):
    done = smoke(tmp_path / "nothing" / "dopamine")
    assert done.returncode == 1
    assert "make bundle" in done.stderr


@pytest.mark.parametrize("env", [{"FAKE_USABLE": "15"}, {"FAKE_PROBLEMS": '[{"kind": "unreadable"}]'}])
def test_a_dicom_file_that_does_not_decode_fails_the_smoke_test(fake_app, env):
    done = smoke(fake_app, **env)
    assert done.returncode == 1
    assert "FAIL dicom-decode" in done.stderr and "smoke test passed" not in done.stdout
