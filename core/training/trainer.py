"""Local training job, modes C (plain SGD) and CDP (DP-SGD): ``run(config, *, progress, cancel)``.

Everything lives in the hospital home (core.home): the one ledger the app and ``dopamine join`` also
charge, the identity key that signs the model, the run log and the image cache.

Order matters for privacy: the ledger is refused when it is behind the home's audit log (a restored
backup), the whole run's cost is checked against the hospital's cap (and the run's own limit) before
any step, and each epoch is charged to the ledger (durably) before that epoch runs. Sigma is calibrated
at the ledger's delta, the one every epsilon of this hospital is stated at.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core import __version__
from core.device import resolve_device
from core.errors import DataError
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress
from core.training.config import TrainConfig, plan_run, resolve_delta

if TYPE_CHECKING:  # pragma: no cover
    from core.home import HospitalHome

log = logging.getLogger("dopamine.training")


@dataclass
class EpochStats:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_kappa: float
    epsilon: float | None
    seconds: float


@dataclass
class TrainResult:
    mode: str
    model_path: str
    model_sha256: str
    epsilon: float | None
    delta: float | None
    sample_rate: float
    noise_multiplier: float | None
    max_grad_norm: float | None
    steps: int
    accountant: str | None
    metrics: dict
    train_images: int
    val_images: int
    majority_baseline: float
    ledger_path: str | None
    ledger_spent: float | None
    log_path: str
    seconds: float
    history: list[EpochStats] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. a cap left unchanged)

    def to_dict(self) -> dict:
        return asdict(self)


def _open_ledger(config: TrainConfig, home: HospitalHome, num_train: int, run_id: str):
    """The home's ledger, its delta and this run's epsilon limit (None: the cap alone).

    The ledger's delta wins: every charge composes at it, so sigma is calibrated at it too, and a run
    asking for another delta is refused. A new ledger adopts this run's delta and accountant.
    ``max_epsilon`` sets the cap only when the ledger has none yet (written to the audit log); with a
    cap already set it is a limit on this run, which can only tighten the cap, never raise it.
    """
    from core.audit import check_ledger_not_behind
    from core.budget import change_cap
    from core.privacy.ledger import PrivacyLedger

    home.ensure()
    ledger = PrivacyLedger(home.ledger)
    notes: list[str] = []
    try:
        check_ledger_not_behind(ledger, home.audit_log)
        delta = resolve_delta(ledger.delta, config.delta, num_train)
        limit = None
        source = f"dopamine train --max-epsilon (run {run_id})"
        if ledger.max_epsilon is None and config.max_epsilon is not None:
            change_cap(home, config.max_epsilon, delta=delta if ledger.delta is None else None,
                       accountant=config.accountant if ledger.delta is None else None, source=source)
        elif ledger.delta is None:
            change_cap(home, None, delta=delta, accountant=config.accountant,
                       source=f"first private run {run_id} (the new ledger adopts its delta)")
        elif config.max_epsilon is not None:
            limit = config.max_epsilon
            if ledger.max_epsilon is not None and limit > ledger.max_epsilon:
                notes.append(f"--max-epsilon {limit:g} is above the hospital's cap of {ledger.max_epsilon:g}; "
                             "the cap stands (a run never raises it; use `dopamine ledger set-cap`).")
                log.info(notes[-1])
    except BaseException:
        ledger.close()
        raise
    return ledger, delta, limit, notes


def _check_writable(out: Path) -> None:
    """OSError now, before any privacy is spent, when the model could not be saved where asked (a read-only
    folder, no permission); a disk that fills up during training still fails at the end."""
    import os
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(out.parent)) from exc  # name the folder, not the probe
    os.close(fd)
    os.unlink(probe)


class _RunLogHandler(logging.FileHandler):
    """train.log is a convenience: on a full disk its lines are dropped quietly (logging would print a
    traceback for each), and the run fails in one line where it writes what matters (ledger, model)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 -- logging's name
        pass


def _open_run_log(run_dir: Path) -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _RunLogHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def run(
    config: TrainConfig,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken = NEVER_CANCELLED,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    config.validate()
    from core.config import storage_errors
    from core.home import HospitalHome

    # A full disk or a read-only folder: one line (StorageError); the ledger is charged in one transaction
    # and the model package is written atomically, so nothing is left half-written.
    with storage_errors(config.home or "this hospital's folder"):
        home = HospitalHome.at(config.home).ensure()
        _check_writable(Path(config.out))
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        run_dir = home.runs / f"{run_id}-{config.mode}"
        handler = _open_run_log(run_dir)
        try:
            log.info("run %s in home %s config %s", run_id, home.root, config)
            result = _run(config, home, run_id, run_dir, progress, cancel, on_epoch)
            log.info("finished: %s", {k: v for k, v in result.to_dict().items() if k != "history"})
            return result
        except Exception as exc:
            log.error("failed: %s", exc)
            raise
        finally:
            log.removeHandler(handler)
            handler.close()


def _run(config, home, run_id, run_dir, progress, cancel, on_epoch) -> TrainResult:
    with ExitStack() as closing:
        return _train(config, home, run_id, run_dir, progress, cancel, on_epoch, closing)


def _train(config, home, run_id, run_dir, progress, cancel, on_epoch, closing: ExitStack) -> TrainResult:
    import torch

    from core.data import Preprocessing, stratified_split, validate
    from core.data.cache import load_images
    from core.inference.assessment import held_out_evaluation
    from core.inference.input_check import reference_statistics
    from core.models.package import ModelCard, write_package
    from core.models.registry import build_model
    from core.privacy.accountant import compute_epsilon
    from core.training.loop import DPSettings, evaluate_model, train_local
    from core.training.metrics import majority_baseline

    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    log.info("computing on %s (--device %s)", device, config.device)

    progress(0.0, "Checking the images")
    report = validate(config.data, labels_csv=config.labels_csv, min_size=config.image_size,
                      progress=lambda f, m: progress(0.05 * f, m), cancel=cancel)
    samples = [s for s in report.usable_samples if s.label is not None]
    classes = report.classes
    if len(samples) < 2 * len(classes) or len({s.label for s in samples}) < 2:
        raise DataError(
            f"{config.data}: only {len(samples)} usable labelled images in {len({s.label for s in samples})} "
            "classes; training needs at least two classes with two images each."
        )
    labels = [s.label for s in samples if s.label is not None]  # every one: samples are labelled
    train_idx, val_idx = stratified_split(labels, config.val_fraction, config.seed)
    train_samples = [samples[i] for i in train_idx]
    val_samples = [samples[i] for i in val_idx]
    num_train = len(train_samples)
    log.info("%d usable images (%d train, %d validation); %d problems",
             len(samples), num_train, len(val_samples), len(report.problems))

    spec = Preprocessing(size=config.image_size, fundus_crop=config.fundus_crop,
                         local_contrast=config.local_contrast)
    progress(0.05, "Preparing images (decoded once, then cached)")
    x_train, y_train = load_images(train_samples, spec, cache_dir=home.image_cache,
                                   progress=lambda f, m: progress(0.05 + 0.07 * f, m), cancel=cancel)
    x_val, y_val = load_images(val_samples, spec, cache_dir=home.image_cache,
                               progress=lambda f, m: progress(0.12 + 0.03 * f, m), cancel=cancel)

    dp = None
    ledger = None
    limit = None
    notes: list[str] = []
    delta = None
    if config.mode == "cdp":
        ledger, delta, limit, notes = _open_ledger(config, home, num_train, run_id)
        closing.callback(ledger.close)
        progress(0.15, "Working out the noise and the privacy cost")
    run_plan = plan_run(config, num_train, delta)
    per_epoch, sample_rate, total_steps = run_plan.steps_per_epoch, run_plan.sample_rate, run_plan.steps
    noise_multiplier, epsilon = run_plan.noise_multiplier, run_plan.epsilon
    if config.mode == "cdp":
        assert ledger is not None and noise_multiplier is not None  # opened above; plan_run sets sigma for CDP
        dp = DPSettings(noise_multiplier=noise_multiplier, max_grad_norm=config.max_grad_norm)
        # Refuse before any step when the whole run would pass the cap or this run's own limit.
        bounds = [b for b in (ledger.max_epsilon, limit) if b is not None]
        if bounds:
            after = ledger.epsilon_if(noise_multiplier, sample_rate, total_steps)
            if after > min(bounds):
                from core.errors import PrivacyBudgetExceeded

                named = "this run's --max-epsilon" if min(bounds) != ledger.max_epsilon else "its cap"
                raise PrivacyBudgetExceeded(
                    f"This run would bring the hospital's epsilon from {ledger.spent():.3g} to {after:.3g}, "
                    f"above {named} of {min(bounds):.3g}; train fewer epochs, add noise or raise the limit."
                )
        log.info("DP-SGD: q=%.5f sigma=%.4f C=%.3f steps=%d delta=%.3g epsilon=%.4f (%s)",
                 sample_rate, noise_multiplier, config.max_grad_norm, total_steps, delta, epsilon,
                 config.accountant)

    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=len(classes), weights=config.initial_weights)
    history: list[EpochStats] = []
    epoch_started = time.monotonic()

    def on_step(step: int, loss: float) -> None:
        progress(0.15 + 0.8 * step / total_steps, f"epoch {len(history) + 1}/{config.epochs}, loss {loss:.3f}")

    def before_epoch(epoch: int) -> None:
        nonlocal epoch_started
        epoch_started = time.monotonic()
        if ledger is not None:
            ledger.charge(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=per_epoch,
                          description=f"local DP-SGD run {run_id}, epoch {epoch}/{config.epochs}",
                          key=f"local:{run_id}:epoch:{epoch}", limit=limit)

    def after_epoch(epoch: int, train_loss: float) -> None:
        val = evaluate_model(model, x_val, y_val, spec, num_classes=len(classes), device=device)
        spent = None
        if dp is not None:
            assert noise_multiplier is not None and delta is not None  # both set for a CDP run
            spent = compute_epsilon(sample_rate=sample_rate, noise_multiplier=noise_multiplier,
                                    steps=epoch * per_epoch, delta=delta, accountant=config.accountant)
        stats = EpochStats(epoch, config.epochs, train_loss, val["loss"], val["accuracy"], val["kappa"],
                           spent, time.monotonic() - epoch_started)
        history.append(stats)
        log.info("epoch %s", stats)
        if on_epoch is not None:
            on_epoch(stats)

    train_local(
        model, x_train, y_train, spec, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        momentum=config.momentum, lr_schedule=config.lr_schedule, optimizer=config.optimizer, dp=dp,
        seed=config.seed,
        on_step=on_step, before_epoch=before_epoch, after_epoch=after_epoch, cancel=cancel, device=device,
    )

    progress(0.96, "Evaluating and signing the model")
    metrics = evaluate_model(model, x_val, y_val, spec, num_classes=len(classes), device=device)
    # The validation figures with their baseline and test set, and that they are not covered by epsilon.
    card_metrics = held_out_evaluation(
        metrics, y_val.tolist(), list(classes), held_by="the training hospital",
        described="the training hospital's held-out validation images",
        reference=reference_statistics(x_val, report.make_up))
    card = ModelCard(
        architecture=config.model, classes=list(classes), preprocessing=spec.to_dict(), mode=config.mode,
        epsilon=epsilon, delta=delta, accountant=config.accountant if dp else None,
        noise_multiplier=noise_multiplier if dp else None, sample_rate=sample_rate,
        max_grad_norm=config.max_grad_norm if dp else None, steps=total_steps, rounds=None, hospitals=1,
        image_counts={"local": num_train}, metrics={"validation": card_metrics},
        created=datetime.now(UTC).isoformat(timespec="seconds"), software_version=__version__,
        description=(config.description or f"Local {config.mode.upper()} training on {Path(config.data).name}.")
        + (" Epsilon holds against anyone who obtains this model (DP-SGD on this hospital's own images)."
           if config.mode == "cdp" else " No differential privacy: the model may reveal its training images."),
    )
    key = home.identity()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sha256 = write_package(Path(config.out), state, card, key)
    progress(1.0, "Done")
    return TrainResult(
        mode=config.mode, model_path=str(Path(config.out).resolve()), model_sha256=sha256,
        epsilon=epsilon, delta=delta, sample_rate=sample_rate,
        noise_multiplier=noise_multiplier if dp else None,
        max_grad_norm=config.max_grad_norm if dp else None, steps=total_steps,
        accountant=config.accountant if dp else None, metrics=metrics, train_images=num_train,
        val_images=len(val_samples), majority_baseline=majority_baseline(y_val.tolist()),
        ledger_path=str(ledger.path) if ledger is not None else None,
        ledger_spent=ledger.spent() if ledger is not None else None,
        log_path=str(run_dir / "train.log"), seconds=time.monotonic() - started, history=history,
        notes=notes,
    )
