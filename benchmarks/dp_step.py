"""DP-SGD step cost: one plain SGD step against one DP-SGD step, per model and image size.

For each model and image size, every variant below is built from the same initial weights and
timed on the same batch, in one run, with the repetitions interleaved (each repetition runs every
variant once, in a rotated order) so that a noisy, shared machine hits them alike; the reported
time is the median over repetitions and the ratio is DP median / plain median. paired_ratio is
the median of the per-repetition ratios; cpu_ratio compares the process's CPU time (all threads),
which other programs on a shared machine disturb far less than wall time.

Variants:
- plain: forward, mean cross-entropy, backward, SGD (momentum 0.9) step;
- fused, hooks, ew, functorch: core.privacy.dpsgd.make_private with that grad_sample_mode
  (fused: per-example gradients instead of the batch gradient, core.privacy.per_sample; the
  others: Opacus's hooks, expanded weights and per-layer torch.func), i.e. per-example gradients,
  clipping to C = 1, noise (sigma = 1), SGD step;
- torch_func: the whole model's per-example gradients by torch.func (vmap(grad(functional_call))),
  then the same clipping and noise by hand (a comparison point, not used by Dopamine).

Goal (DESIGN): a DP step of squeezenet1_1 at 224 px, batch 32, at most 1.2x a plain step.

Usage: python benchmarks/dp_step.py [--out benchmarks/results/dp_step.json] [--quick] [--repeats N]
       [--models ...] [--sizes ...] [--modes ...] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models import MODEL_NAMES, build_model, count_parameters  # noqa: E402
from core.privacy.dpsgd import GRAD_SAMPLE_MODES, make_private  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "dp_step.json"
DEFAULT_SIZES = (64, 128, 224)
DEFAULT_MODES = ("fused", "hooks", "ew", "torch_func")
BATCH = 32
# ResNet-18's per-example gradients at 224 px are 45 MB per example, held for every variant.
SMALLER_BATCH = {("resnet18_gn", 224): 16}
GOAL = {"model": "squeezenet1_1", "image_size": 224, "mode": "fused", "max_ratio": 1.2}
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0

Step = Callable[[], None]


def plain_step(name: str, x: torch.Tensor, y: torch.Tensor) -> Step:
    torch.manual_seed(0)
    model = build_model(name).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def opacus_step(name: str, mode: str, x: torch.Tensor, y: torch.Tensor) -> tuple[Step, Step]:
    torch.manual_seed(0)
    model = build_model(name).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    wrapped, dp_optimizer, _ = make_private(
        model, optimizer, loader, noise_multiplier=NOISE_MULTIPLIER, max_grad_norm=MAX_GRAD_NORM,
        poisson_sampling=False, grad_sample_mode=mode,
    )

    def step() -> None:
        dp_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), y).backward()
        dp_optimizer.step()

    def release() -> None:  # free the per-example gradients between timings
        dp_optimizer.zero_grad(set_to_none=True)

    return step, release


def torch_func_step(name: str, x: torch.Tensor, y: torch.Tensor) -> Step:
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = build_model(name).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)

    def loss(params, xi, yi):
        return F.cross_entropy(functional_call(model, params, (xi[None],)), yi[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")

    def step() -> None:
        params = {k: v.detach() for k, v in model.named_parameters()}
        grads = per_example(params, x, y)
        norms = torch.stack([g.reshape(len(x), -1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()
        factors = (MAX_GRAD_NORM / (norms + 1e-6)).clamp(max=1.0)
        for key, p in model.named_parameters():
            total = torch.einsum("n,n...->...", factors, grads[key])
            noise = torch.normal(0.0, NOISE_MULTIPLIER * MAX_GRAD_NORM, total.shape, generator=generator)
            p.grad = (total + noise) / len(x)
        optimizer.step()

    return step


def measure(name: str, size: int, batch: int, modes: list[str], repeats: int) -> dict:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=generator)
    y = torch.randint(0, 5, (batch,), generator=generator)
    steps: dict[str, Step] = {"plain": plain_step(name, x, y)}
    releases: dict[str, Step] = {}
    for mode in modes:
        if mode == "torch_func":
            steps[mode] = torch_func_step(name, x, y)
        else:
            steps[mode], releases[mode] = opacus_step(name, mode, x, y)
    names = list(steps)
    times: dict[str, list[float]] = {variant: [] for variant in names}
    cpu_times: dict[str, list[float]] = {variant: [] for variant in names}
    for repetition in range(repeats + 1):  # repetition 0 warms up and is not counted
        shift = repetition % len(names)
        for variant in names[shift:] + names[:shift]:
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[variant]()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if variant in releases:
                releases[variant]()
            if repetition:
                times[variant].append(elapsed)
                cpu_times[variant].append(cpu)
    plain = statistics.median(times["plain"])
    plain_cpu = statistics.median(cpu_times["plain"])
    result = {
        "model": name,
        "parameters": count_parameters(build_model(name)),
        "image_size": size,
        "batch_size": batch,
        "plain_s": plain,
        "plain_images_per_s": batch / plain,
        "plain_times_s": times["plain"],
        "plain_cpu_s": plain_cpu,
        # other programs' load while this row ran: rows measured on a busy machine are noisier
        "load_average_after": list(os.getloadavg()),
        "modes": {},
    }
    for mode in modes:
        median = statistics.median(times[mode])
        paired = statistics.median(t / p for t, p in zip(times[mode], times["plain"], strict=True))
        result["modes"][mode] = {
            "median_s": median,
            "images_per_s": batch / median,
            "ratio": median / plain,
            "paired_ratio": paired,
            "times_s": times[mode],
            "cpu_s": statistics.median(cpu_times[mode]),
            "cpu_ratio": statistics.median(cpu_times[mode]) / plain_cpu,
        }
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny images and batches")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 5; 2 with --quick)")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=None)
    parser.add_argument("--sizes", nargs="+", type=int, default=None)
    parser.add_argument("--modes", nargs="+", choices=(*GRAD_SAMPLE_MODES, "torch_func"), default=None)
    parser.add_argument("--batch", type=int, default=None, help=f"batch size (default {BATCH}; 4 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    models = args.models or (["small_cnn"] if quick else list(MODEL_NAMES))
    sizes = args.sizes or ([32] if quick else list(DEFAULT_SIZES))
    modes = args.modes or (["fused", "hooks"] if quick else list(DEFAULT_MODES))
    repeats = args.repeats or (2 if quick else 5)
    batch = args.batch or (4 if quick else BATCH)

    results = []
    for name in models:
        for size in sizes:
            size_batch = min(batch, SMALLER_BATCH.get((name, size), batch))
            print(f"{name} at {size} px, batch {size_batch} ...", file=sys.stderr, flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Opacus's backward-hook notices
                results.append(measure(name, size, size_batch, modes, repeats))

    goal = dict(GOAL)
    for entry in results:
        if (entry["model"], entry["image_size"]) == (GOAL["model"], GOAL["image_size"]) and GOAL["mode"] in entry["modes"]:
            goal["ratio"] = entry["modes"][GOAL["mode"]]["ratio"]
            goal["met"] = goal["ratio"] <= GOAL["max_ratio"]
    report = {
        "benchmark": "dp_step",
        "quick": quick,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()),
        },
        "versions": {"torch": torch.__version__, "opacus": _version("opacus"), "python": platform.python_version()},
        "settings": {
            "repeats": repeats,
            "noise_multiplier": NOISE_MULTIPLIER,
            "max_grad_norm": MAX_GRAD_NORM,
            "optimizer": "SGD momentum 0.9",
            "modes": modes,
        },
        "results": results,
        "goal": goal,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{'model':15} {'px':>4} {'batch':>5} {'plain s':>8}  " + "  ".join(f"{m + ' (cpu)':>16}" for m in modes))
    for entry in results:
        ratios = "  ".join(
            f"{entry['modes'][m]['ratio']:>7.2f}x ({entry['modes'][m]['cpu_ratio']:.2f}x)" for m in modes
        )
        print(f"{entry['model']:15} {entry['image_size']:>4} {entry['batch_size']:>5} {entry['plain_s']:>8.3f}  {ratios}")
    if "ratio" in goal:
        verdict = "met" if goal["met"] else "NOT met"
        print(f"goal {goal['model']} {goal['image_size']} px {goal['mode']}: {goal['ratio']:.2f}x <= {goal['max_ratio']}x {verdict}")
    print(f"wrote {args.out}")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main())
