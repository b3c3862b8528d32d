"""``dopamine compare``: the five modes on one collection, K virtual hospitals, several seeds.

The job: load the images (or draw synthetic ones), split them into hospitals and a test set, calibrate
sigma per DP mode when a target epsilon is given, search each mode's learning rate on a validation split,
then train every (mode, seed) and write results.json after each, so a killed or cancelled run resumes
where it stopped. report.py turns the results into figure.png and report.html.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from core.compare.config import MODES, PRIVATE, CompareConfig
from core.compare.modes import (
    CompareData,
    ModeSettings,
    RunOutcome,
    privacy_schedule,
    run_mode,
)
from core.errors import ConfigError
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

RESULTS_VERSION = 1
SEARCH_TIE = 0.01  # validation accuracies this close are a tie, decided by the validation loss
LR_CANDIDATES = {"c": (0.01, 0.03, 0.1), "cdp": (0.03, 0.1, 0.3), "f": (0.01, 0.03, 0.1),
                 "fpdp": (0.03, 0.1, 0.3), "fscdp": (0.1, 0.3, 1.0)}
SEARCH_NOTE = ("Each mode's learning rate was chosen by a search on a validation split of the hospitals' own "
               "images; that search is not covered by the epsilon shown (choosing hyper-parameters on the data "
               "leaks too: Papernot and Steinke 2022).")


@dataclass
class CompareResult:
    results: dict
    paths: dict[str, Path] = field(default_factory=dict)


def mode_settings(config: CompareConfig, mode: str, lr: float, union: int) -> ModeSettings:
    """The paper's protocol per mode at this config's scale. FSCDP samples the union at CDP's rate and runs
    as many rounds as CDP takes steps, so at equal sigma the two share (q, T) and so epsilon."""
    from core.privacy.accountant import steps_per_epoch

    per_epoch = steps_per_epoch(union, config.batch_size)
    return ModeSettings(
        mode=mode, lr=lr, model=config.model, epochs=config.epochs,
        batch_size=config.local_batch_size if mode in ("f", "fpdp") else config.batch_size,
        rounds=per_epoch * config.epochs if mode == "fscdp" else config.rounds, local_epochs=config.local_epochs,
        fraction=config.fraction, sample_rate=1.0 / per_epoch, noise_multiplier=config.noise_multiplier,
        delta=config.delta, accountant=config.accountant)


def calibrate(settings: ModeSettings, sizes: list[int], target: float) -> ModeSettings:
    """The smallest sigma that keeps this mode's epsilon (its worst hospital's) within ``target``."""
    from core.privacy.accountant import calibrate_noise_multiplier

    sigma = max(calibrate_noise_multiplier(target_epsilon=target, sample_rate=rate, steps=steps,
                                           delta=settings.delta, accountant=settings.accountant)
                for rate, steps in privacy_schedule(settings, sizes))
    return replace(settings, noise_multiplier=sigma)


def run(config: CompareConfig, *, progress: ProgressFn = no_progress,
        cancel: CancelToken = NEVER_CANCELLED) -> CompareResult:
    """Run (or resume) the comparison; write results.json, figure.png and report.html in config.out."""
    from core.compare.report import write_report
    from core.device import resolve_device
    from core.models.registry import MODEL_NAMES

    config.validate()
    if config.model not in MODEL_NAMES:
        raise ConfigError(f"Unknown model {config.model!r}; choose one of {', '.join(MODEL_NAMES)}.")
    plan = config.effective()
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    if plan.threads:
        torch.set_num_threads(plan.threads)
    device = resolve_device(plan.device)
    results = _open_results(out / "results.json", config)
    progress(0.0, "Preparing the images")
    data, described = _prepare(plan, results, progress=lambda f, m: progress(0.08 * f, m), cancel=cancel)
    results["data"] = described
    sizes = [len(h) for h in data.hospitals]
    union = sum(sizes)
    work = _Work(plan, results, progress, cancel, device)
    for mode in plan.modes:
        if mode not in results["lr_search"]:
            work.planned += len(LR_CANDIDATES[mode]) if plan.lr_search else 0
        work.planned += sum(1 for seed in range(plan.seeds) if not _finished(results, mode, seed))

    for mode in plan.modes:
        settings = mode_settings(plan, mode, LR_CANDIDATES[mode][1], union)
        if mode in PRIVATE and plan.target_epsilon is not None:
            settings = calibrate(settings, sizes, plan.target_epsilon)
        if plan.lr_search:
            settings = replace(settings, lr=_search(work, settings, data))
        for seed in range(plan.seeds):
            if _finished(results, mode, seed):
                continue
            outcome = work.train(settings, data, seed, f"{mode.upper()} seed {seed + 1}/{plan.seeds}")
            results["runs"].append(outcome.to_dict())
            results["summary"] = summarise(results["runs"])
            _save(out / "results.json", results)
    results["summary"] = summarise(results["runs"])
    _save(out / "results.json", results)
    progress(0.99, "Writing the report")
    paths = write_report(results, out)
    progress(1.0, f"Compared {len(plan.modes)} modes over {plan.seeds} seeds")
    return CompareResult(results, {"results": out / "results.json", **paths})


class _Work:
    """Progress with time left, from the runs done and the runs planned (search candidates included)."""

    def __init__(self, plan: CompareConfig, results: dict, progress: ProgressFn, cancel: CancelToken,
                 device: torch.device | str = "cpu") -> None:
        self.plan, self.results, self.progress, self.cancel = plan, results, progress, cancel
        self.device = device
        self.planned, self.done = 0.0, 0.0
        self.started = time.monotonic()

    def train(self, settings: ModeSettings, data: CompareData, seed: int, title: str) -> RunOutcome:
        def step(fraction: float) -> None:
            done = self.done + min(max(fraction, 0.0), 1.0)
            elapsed = time.monotonic() - self.started
            left = elapsed / done * (self.planned - done) if done > 0.02 * self.planned else None
            self.progress(0.08 + 0.9 * done / max(self.planned, 1e-9), f"{title}{_time_left(left)}")

        step(0.0)
        outcome = run_mode(settings, data, seed, cancel=self.cancel, progress=step, device=self.device)
        self.done += 1
        return outcome


def _time_left(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f" · about {max(1, round(seconds))} s left"
    return f" · about {round(seconds / 60)} min left"


def _search(work: _Work, settings: ModeSettings, data: CompareData) -> float:
    """The candidate learning rate with the best validation accuracy (recorded; reused on resume). Each
    candidate trains as long as the real runs: DP runs cut short learn too little to tell rates apart."""
    record = work.results["lr_search"].get(settings.mode)
    if record is None:
        validation = _validation_data(data)
        trials: list[dict[str, Any]] = []
        for lr in LR_CANDIDATES[settings.mode]:
            outcome = work.train(replace(settings, lr=lr), validation, seed=10_000,
                                 title=f"{settings.mode.upper()}: trying learning rate {lr:g}")
            trials.append({"lr": lr, "accuracy": outcome.accuracy, "kappa": outcome.kappa,
                           "loss": outcome.loss if math.isfinite(outcome.loss) else None})
        top = max(t["accuracy"] for t in trials)
        # Short DP runs often tie at the majority class; the loss still tells which rate learned most.
        best = min((t for t in trials if t["accuracy"] >= top - SEARCH_TIE), key=lambda t: math.inf if t["loss"] is None else t["loss"])
        record = {"trials": trials, "chosen": best["lr"]}
        work.results["lr_search"][settings.mode] = record
        _save(work.plan.out / "results.json", work.results)
    return float(record["chosen"])


def _validation_data(data: CompareData) -> CompareData:
    """Each hospital keeps 80% of its images; the rest, pooled, is the validation set (the test set is unused)."""
    from core.data.split import stratified_split

    kept, held = [], []
    for k, indices in enumerate(data.hospitals):
        train, val = stratified_split(data.labels[indices].tolist(), 0.2, seed=k)
        kept.append(indices[train])
        held.append(indices[val])
    return replace(data, hospitals=kept, test=torch.cat(held))


def _finished(results: dict, mode: str, seed: int) -> bool:
    return any(r["mode"] == mode and r["seed"] == seed for r in results["runs"])


def summarise(runs: list[dict]) -> dict:
    """Per mode: mean and sample standard deviation over seeds."""
    summary = {}
    for mode in MODES:
        rows = [r for r in runs if r["mode"] == mode]
        if not rows:
            continue
        entry: dict = {"runs": len(rows)}
        for key in ("accuracy", "kappa", "seconds"):
            values = [float(r[key]) for r in rows]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        epsilons = [r["epsilon"] for r in rows]
        entry["epsilon"] = None if any(e is None for e in epsilons) else max(epsilons)
        entry["noise_multiplier"] = rows[0]["noise_multiplier"]
        entry["lr"] = rows[0]["settings"]["lr"]
        summary[mode] = entry
    return summary


def _open_results(path: Path, config: CompareConfig) -> dict:
    """The results so far (a resume) or a fresh record; refuses a folder holding another comparison."""
    fingerprint = config.fingerprint()
    if not path.exists():
        return {"version": RESULTS_VERSION, "config": fingerprint, "runs": [], "lr_search": {}, "summary": {},
                "notes": [SEARCH_NOTE]}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(results, dict) and results.get("version") == RESULTS_VERSION
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{path} is not a comparison this version wrote; choose a new --out folder.")
    if results.get("config") != fingerprint:
        changed = sorted(k for k in fingerprint if results["config"].get(k) != fingerprint[k])
        raise ConfigError(f"{path.parent} holds a comparison with other settings ({', '.join(changed)}); resume it "
                          "with the same settings or choose a new --out folder.")
    return results


def _save(path: Path, results: dict) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _prepare(plan: CompareConfig, results: dict, *, progress: ProgressFn,
             cancel: CancelToken) -> tuple[CompareData, dict]:
    """Load the collection, split it, and describe both for the report."""
    from core.compare.collection import is_synthetic, load_collection, synthetic_folder
    from core.compare.splits import parse_split, split_dirichlet, split_folders, split_iid
    from core.data.preprocess import Preprocessing

    kind, alpha = parse_split(plan.split)
    folder = plan.data
    if folder is None:
        folder = synthetic_folder(plan.out, hospitals=plan.hospitals, images=plan.synthetic_images,
                                  size=plan.image_size, test_fraction=plan.test_fraction,
                                  progress=lambda f, m: progress(0.4 * f, m), cancel=cancel)
    spec = Preprocessing(size=plan.image_size)
    collection = load_collection(folder, labels_csv=plan.labels_csv, by_folder=kind == "folders" or is_synthetic(folder),
                                 spec=spec, cache_dir=plan.out / "cache", cancel=cancel,
                                 progress=lambda f, m: progress(0.4 + 0.6 * f, m))
    labels = collection.labels.tolist()
    if kind == "folders":
        split = split_folders(collection.groups)
    elif kind == "dirichlet":
        assert alpha is not None  # parse_split gives dirichlet an alpha
        split = split_dirichlet(labels, plan.hospitals, alpha=float(alpha), seed=0, test_fraction=plan.test_fraction)
    else:
        split = split_iid(labels, plan.hospitals, seed=0, test_fraction=plan.test_fraction)
    split.check(len(labels))
    if any(len(h) < 2 for h in split.hospitals) or len(split.test) < 2:
        raise ConfigError(f"{len(labels)} images are too few for {len(split.hospitals)} hospitals and a test set; "
                          "use fewer hospitals or more images.")
    data = CompareData(collection.images, collection.labels, [torch.tensor(h) for h in split.hospitals],
                       torch.tensor(split.test), spec, collection.classes)
    classes = len(collection.classes)
    described = {
        "source": collection.source, "split": plan.split, "classes": collection.classes,
        "hospitals": [{"name": name, "images": len(h), "class_counts": _counts(labels, h, classes)}
                      for name, h in zip(split.names, split.hospitals, strict=True)],
        "test": {"images": len(split.test), "class_counts": _counts(labels, split.test, classes)},
        "set_aside": collection.problems,
        "colluders": _fscdp_roles(plan, len(split.hospitals)),
    }
    return data, described


def _counts(labels: list[int], indices: list[int], classes: int) -> list[int]:
    counts = [0] * classes
    for i in indices:
        counts[labels[i]] += 1
    return counts


def _fscdp_roles(plan: CompareConfig, hospitals: int) -> dict:
    """FSCDP's m and t for these K hospitals (the plan's rules) and the noise price K / (m - t) in variance."""
    from core.compare.modes import federation_plan

    fscdp = federation_plan(mode_settings(plan, "fscdp", 1.0, 100), hospitals, plan.image_size)
    return {"hospitals": hospitals, "threshold": fscdp.threshold, "colluders": fscdp.colluders,
            "variance_factor": hospitals / (fscdp.threshold - fscdp.colluders)}
