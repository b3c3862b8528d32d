"""Inference latency: warm single-image prediction and the first prediction after opening a model.

Targets (issue: offline inference viewer): warm prediction with squeezenet1_1 at 224 px <= 30 ms on 2 CPU
cores; first prediction after opening the model < 1 s. The first-prediction numbers come from fresh
processes (torch already imported there, as in the running app), so one-time set-up costs count.

    python benchmarks/inference.py [--quick] [--threads 2] [--out benchmarks/results/inference.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARM_TARGET_MS = 30.0
FIRST_TARGET_S = 1.0


def _make_inputs(folder: Path, architecture: str, size: int) -> tuple[Path, Path, Path]:
    import numpy as np
    import torch

    from core.data import DR_CLASSES, Preprocessing
    from core.data.synthetic import generate_fundus, hospital_style
    from core.models.package import ModelCard, write_package
    from core.models.registry import build_model
    from core.signing import generate_private_key

    torch.manual_seed(0)
    model = build_model(architecture, len(DR_CLASSES))
    card = ModelCard(
        architecture=architecture, classes=list(DR_CLASSES), preprocessing=Preprocessing(size=size).to_dict(),
        mode="c", epsilon=None, delta=None, accountant=None, noise_multiplier=None, sample_rate=None,
        max_grad_norm=None, steps=None, rounds=None, hospitals=None, image_counts={}, metrics={},
        created="2026-01-01T00:00:00Z", software_version="benchmark",
    )
    package = folder / "bench.dpm"
    write_package(package, model.state_dict(), card, generate_private_key())
    fundus = generate_fundus(2, size=512, rng=np.random.default_rng(0), style=hospital_style(0, 0))
    png = folder / "fundus.png"
    fundus.save(png)
    jpeg = folder / "fundus.jpg"
    fundus.save(jpeg, quality=90)
    return package, png, jpeg


def _first_call(package: Path, image: Path, threads: int) -> dict:
    """Runs in a fresh process: open the package and predict once."""
    begin = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    from core.inference import open_model

    start = time.perf_counter()
    predictor = open_model(package)
    opened = time.perf_counter()
    predictor.predict_file(image)
    done = time.perf_counter()
    return {"import_s": start - begin, "open_s": opened - start, "first_prediction_s": done - start}


def _timed(fn, repeats: int) -> dict:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p90_ms": samples[math.ceil(0.9 * len(samples)) - 1],
            "min_ms": samples[0], "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke test, numbers are rough)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--architecture", default="squeezenet1_1")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "inference.json")
    parser.add_argument("--first-call", nargs=2, type=Path, metavar=("PACKAGE", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.first_call:
        print(json.dumps(_first_call(*args.first_call, args.threads)))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    from core.data import load_image
    from core.inference import open_model

    warm_repeats, fresh_processes, saliency_repeats = (5, 1, 2) if args.quick else (60, 7, 15)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        package, png, jpeg = _make_inputs(Path(tmp), args.architecture, args.size)

        first = []
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        for _ in range(fresh_processes):
            output = subprocess.run(
                [sys.executable, __file__, "--threads", str(args.threads), "--first-call", str(package), str(jpeg)],
                check=True, capture_output=True, text=True, env=env,
            ).stdout
            first.append(json.loads(output.strip().splitlines()[-1]))

        predictor = open_model(package)
        fundus = load_image(png)
        model_input = predictor.model_view(fundus)  # already args.size x args.size
        batch = predictor.input_tensor(fundus)
        for _ in range(3):
            predictor.predict_image(model_input)

        def forward() -> None:
            with torch.inference_mode():
                predictor.model(batch)

        results = {
            "benchmark": "inference",
            "architecture": args.architecture,
            "input_px": args.size,
            "threads": args.threads,
            "quick": args.quick,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "warm": {
                "forward_only": _timed(forward, warm_repeats),
                "predict_image_at_input_size": _timed(lambda: predictor.predict_image(model_input), warm_repeats),
                "predict_image_512px": _timed(lambda: predictor.predict_image(fundus), warm_repeats),
                "predict_file_512px_png": _timed(lambda: predictor.predict_file(png), warm_repeats),
                "predict_file_512px_jpeg": _timed(lambda: predictor.predict_file(jpeg), warm_repeats),
                "grad_cam": _timed(lambda: predictor.saliency(model_input), saliency_repeats),
            },
            "first_prediction": {
                "processes": fresh_processes,
                "import_torch_and_core_s_median": statistics.median(r["import_s"] for r in first),
                "open_s_median": statistics.median(r["open_s"] for r in first),
                "first_prediction_s_median": statistics.median(r["first_prediction_s"] for r in first),
                "first_prediction_s_max": max(r["first_prediction_s"] for r in first),
            },
        }
    # Timings on a shared machine mean little without the load they were taken under.
    results["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    warm_ms = results["warm"]["predict_image_at_input_size"]["median_ms"]
    first_s = results["first_prediction"]["first_prediction_s_median"]
    results["targets"] = {
        "warm_predict_ms": WARM_TARGET_MS, "warm_predict_ok": warm_ms <= WARM_TARGET_MS,
        "first_prediction_s": FIRST_TARGET_S, "first_prediction_ok": first_s < FIRST_TARGET_S,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"warm prediction ({args.architecture}, {args.size} px, {args.threads} threads): median {warm_ms:.1f} ms "
          f"(target <= {WARM_TARGET_MS:.0f}); first prediction after open: median {first_s:.2f} s "
          f"(target < {FIRST_TARGET_S:.0f}); written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
