#!/usr/bin/env bash
# Smoke test of a built bundle: the CLI (version, privacy, demo data, DP training, prediction), DICOM
# decoding (one file of every transfer syntax: JPEG, JPEG Lossless, JPEG-LS, JPEG 2000, RLE, deflated,
# ..., plus multi-frame), the desktop app's background training job, a 2-hospital federation on this computer (coordinator and
# hospitals as child processes of the bundle, HTTPS, secure aggregation), and the GUI (offscreen, then in a
# real X server, Xvfb, with a screenshot: the main window is shown and the app exits cleanly by itself).
#
#   installer/smoke_test.sh [EXECUTABLE]     (default: dist/Dopamine/dopamine)
#
# Every step must exit 0 and print no Python traceback; the first failure stops the test with exit 1.
# All user files go to a temporary DOPAMINE_HOME, removed at the end.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
EXE=${1:-dist/Dopamine/dopamine}
if [[ ! -x "$EXE" ]]; then
    echo "smoke test: $EXE is not an executable; build it first (make bundle)" >&2
    exit 1
fi
EXE=$(cd "$(dirname "$EXE")" && pwd)/$(basename "$EXE")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dopamine-smoke.XXXXXX")
feeder=
trap '[[ -n $feeder ]] && kill "$feeder" 2>/dev/null; rm -rf "$WORK"' EXIT
export DOPAMINE_HOME="$WORK/home"
export QT_QPA_PLATFORM=offscreen
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Run from an empty folder, so nothing can come from a source checkout instead of the bundle.
cd "$WORK"

STEP_TIMEOUT=${SMOKE_STEP_TIMEOUT:-300}
passed=0

# step NAME EXPECTED_TEXT COMMAND...: run, keep the output, fail on a non-zero exit, a traceback,
# or output that lacks EXPECTED_TEXT (a grep -E pattern; empty: no check).
step() {
    local name=$1 expected=$2
    shift 2
    local log="$WORK/$name.log" start=$SECONDS code
    timeout "$STEP_TIMEOUT" "$@" >"$log" 2>&1
    code=$?
    if (( code != 0 )); then
        echo "FAIL $name: exit code $code" >&2
    elif grep -q "Traceback" "$log"; then
        echo "FAIL $name: a Python traceback in the output" >&2
        code=1
    elif [[ -n "$expected" ]] && ! grep -Eq "$expected" "$log"; then
        echo "FAIL $name: the output lacks /$expected/" >&2
        code=1
    fi
    if (( code != 0 )); then
        echo "--- output of $name ($*):" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    echo "ok   $name ($((SECONDS - start)) s)"
    passed=$((passed + 1))
}

step version '^dopamine [0-9]+\.[0-9]+' "$EXE" --version
step privacy '^epsilon = [0-9.]+' \
    "$EXE" privacy --sample-rate 0.01 --noise-multiplier 1.1 --steps 100 --delta 1e-5
step demo-data '' "$EXE" demo-data demo --hospitals 1 --per-hospital 40 --test-images 10 --size 64
step train 'Privacy: epsilon = [0-9.]+' \
    "$EXE" train demo/hospital_01 --model small_cnn --image-size 32 --epochs 1 --mode cdp \
    --noise-multiplier 1 --delta 1e-3 --out model.dpm
image=$(find demo/test -name '*.png' | sort | head -n 1)
if [[ -z "$image" ]]; then
    echo "FAIL predict: demo-data wrote no test image" >&2
    exit 1
fi
step predict '' "$EXE" predict model.dpm "$image" --json
# The prediction must name one of the five grades for the image.
if ! grep -Eq '"(No DR|Mild|Moderate|Severe|Proliferative DR)"' "$WORK/predict.log"; then
    echo "FAIL predict: no DR grade in the output" >&2
    tail -n 40 "$WORK/predict.log" >&2
    exit 1
fi
# Compressed DICOM: the bundle writes one SYNTHETIC file per transfer syntax (14 files, 16 frames) with its
# own encoders and must decode every one, which fails if a decoder plugin or its metadata is missing.
step dicom-write '' "$EXE" demo-data dicomdemo --hospitals 1 --per-hospital 2 --test-images 0 --size 64 --dicom
step dicom-decode '"usable": 16,' "$EXE" inspect dicomdemo/dicom --json --min-size 32
if ! grep -Eq '"problems": \[\],' "$WORK/dicom-decode.log"; then
    echo "FAIL dicom-decode: some DICOM files did not decode" >&2
    tail -n 40 "$WORK/dicom-decode.log" >&2
    exit 1
fi
# The same command through the alias the federation simulator uses for its child processes.
step module-alias '^dopamine [0-9]+\.[0-9]+' "$EXE" -m core.cli --version
# The Train page's background job (gui/child_jobs.py): one JSON request on stdin, JSON lines back.
# stdin must stay open while the job runs (closing it cancels the job), hence the fifo.
mkfifo "$WORK/job-input"
request='{"job": "train", "args": {"config": {"data": "demo/hospital_01", "out": "job-model.dpm", '\
'"mode": "cdp", "model": "small_cnn", "epochs": 1, "image_size": 32, "noise_multiplier": 1.0, "delta": 0.001}}}'
( echo "$request"; exec sleep "$STEP_TIMEOUT" ) >"$WORK/job-input" &
feeder=$!
step child-job '^\{"type": "result"' "$EXE" --dopamine-child-job <"$WORK/job-input"
kill "$feeder" 2>/dev/null
feeder=
step simulate 'status: finished' \
    "$EXE" simulate --hospitals 2 --mode fscdp --rounds 2 --per-hospital 30 --test-images 10 --image-size 32 \
    --workdir federation
# The GUI: shown offscreen, then quit 3 s later (after the engine preload has started).
DOPAMINE_STARTUP_PROBE=1 DOPAMINE_SMOKE_EXIT_MS=${SMOKE_GUI_MS:-3000} \
    step gui '^DOPAMINE_WINDOW_SHOWN [0-9.]+ Dopamine' "$EXE"
# The GUI in a real X server (Xvfb): Qt's xcb plug-in with the libraries the bundle carries and those of the
# system, as on a hospital's desktop; the screenshot is kept beside the bundle (dist/real-x-screenshot.png).
SHOT="$(dirname "$(dirname "$EXE")")/real-x-screenshot.png"
step gui-real-x '^DOPAMINE_REAL_X ok' "${SMOKE_PYTHON:-python3}" "$HERE/real_x.py" --out "$SHOT" -- "$EXE"

echo "smoke test passed: $passed steps"
