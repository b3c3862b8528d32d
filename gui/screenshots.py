"""Render every page with demo content, offscreen, to PNGs: ``python -m gui.screenshots OUTDIR``.

Everything shown is made on the fly with the real core code, in a temporary DOPAMINE_HOME (the
user's own settings, ledger and models are never touched): SYNTHETIC fundus images (with one damaged
file and one duplicate, so the Data page has problems to list), a local DP training run that charges
the ledger and writes a signed model, and, unless ``--quick``, a real 2-hospital federation over
loopback HTTPS in which this window is hospital 1 (``--quick``: less data, no federation run). Each page is saved at 1280x800 as the user sees
it, plus a taller ``-full`` image when the page scrolls; Home and Train are also saved in the dark
theme. The states staff meet besides (issue 17) are saved under their own names: the parent folder of the
demo data warned about (state-data-wrong-folder), a failed check (state-data-failed), the cap set where joining
needs it (state-federation-set-cap), the completion card (state-federation-finished), a model no better than
always answering one class (state-viewer-baseline-model), a batch with grade folders and true labels
(state-viewer-batch) and a photograph far larger than the tested images (state-viewer-unusual-image).
The Host page (issue 15) plans a second federation (host-plan: the form and its live preview) and, unless
``--quick``, runs it with its coordinator started from the page and two `dopamine join` hospitals, so its
dashboard shows the finished rounds, each hospital's ε and the accuracy on the held-out set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

WIDTH, HEIGHT = 1280, 800


def _settle(app, window, *, timeout_s: float = 600.0, quiet_s: float = 0.3) -> None:
    """Process events until no background job has run for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        app.processEvents()
        if window.context.runner.active:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > quiet_s:
            return
        time.sleep(0.01)
    raise TimeoutError("background jobs did not finish while preparing the screenshots")


def _wait(app, condition, *, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo did not reach the expected state")
        app.processEvents()
        time.sleep(0.01)


def _make_data(root: Path, *, quick: bool) -> tuple[Path, Path]:
    from core.data.synthetic import write_demo_data

    write_demo_data(root, hospitals=2, per_hospital=16 if quick else 60, test_images=10 if quick else 30,
                    size=64 if quick else 160, seed=11)
    hospital = root / "hospital_01"
    first = sorted((hospital / "0").glob("*.png"))[0]
    shutil.copyfile(first, hospital / "0" / "copy_of_first.png")  # an exact duplicate
    damaged = first.read_bytes()
    (hospital / "2" / "scan_interrupted.png").write_bytes(damaged[: len(damaged) // 3])
    return hospital, root / "hospital_02"


def _train(window, app, data: Path, *, quick: bool) -> None:
    from core.budget import change_cap

    change_cap(window.context.home, 20.0, delta=1e-4, source="screenshot demo")  # on the audit log, as in the app
    page = window.show_page("train")
    page.data_picker.set_path(data)
    page.mode.setCurrentIndex(page.mode.findData("cdp"))
    page.model.setCurrentIndex(page.model.findData("small_cnn"))
    page.image_size.setCurrentIndex(page.image_size.findData(64))
    page.epochs.setValue(1 if quick else 6)
    page.batch_size.setValue(16)
    page.lr.setValue(0.1)
    page.target_epsilon.setValue(4.0)
    page.start()
    _wait(app, lambda: page.job is not None and not page.job.running)
    if page.job.error is not None:
        raise page.job.error
    _settle(app, window)


def _invite(window, app, tmp: Path, evaluation: Path):
    """A 2-hospital federation whose invitation this window (hospital 1) reviews."""
    from core.federation.layout import InitConfig, init_federation
    from core.federation.simulate import free_port

    init = init_federation(InitConfig(
        folder=tmp / "federation", name="Retina network (demo)", mode="fscdp", rounds=8, hospitals=2,
        hosts=["127.0.0.1", "localhost"], port=free_port(), image_size=48, sample_rate=0.3,
        noise_multiplier=1.0, max_grad_norm=1.0, lr=0.5, delta=1e-4, eval_data=evaluation,
        hospital_names=["St. Mary's (this hospital)", "City Eye Clinic"]))
    invitations = sorted(init.invitations)
    page = window.show_page("federation")
    page.picker.set_path(invitations[0])
    page.open_invitation(invitations[0])
    _settle(app, window)
    return init, invitations


def _federate(window, app, tmp: Path, other_data: Path, init, invitations, *, run: bool):
    """Take part to the end (``run``), or show the completion card from a last model's events (quick)."""
    from core.federation.simulate import CoordinatorProcess, HospitalProcess

    page = window.show_page("federation")
    page.open_invitation(invitations[0])  # again: the cap is set now
    _settle(app, window)
    if not run:
        _finish_without_processes(page)
        _settle(app, window)
        return None
    coordinator = CoordinatorProcess(init.folder, tmp / "logs" / "coordinator.out")
    coordinator.start(url=init.coordinator_url, ca_file=init.folder / "tls" / "ca.pem")
    other = HospitalProcess(2, invitations[1], other_data, tmp / "hospital_2", tmp / "logs" / "hospital_2.err",
                            max_epsilon=100.0)
    other.start()
    page.start()
    _wait(app, lambda: not page.running)
    if page.job.error is None and page.job.result.reason == "roster":
        # Every hospital enrolled: here one person plays both, so the fingerprints match by construction and
        # the question the page asks is answered yes.
        import gui.pages.federation as federation_page

        asked = federation_page.confirm
        federation_page.confirm = lambda *_args, **_kwargs: True
        try:
            page.confirm_roster()
        finally:
            federation_page.confirm = asked
        _wait(app, lambda: not page.running)
    if page.job.error is not None:
        raise page.job.error
    page.session.refresh_view()
    _settle(app, window)
    return coordinator, other


def _finish_without_processes(page) -> None:
    """The events of a federation's last round, as the client sends them (for --quick)."""
    from core.federation.events import BudgetCharged, ModelReceived, RoundStarted
    from core.inference import held_out_evaluation
    from core.training.metrics import compute_metrics
    from gui.federation_session import Membership

    rounds = page.review.invitation.plan.rounds
    truth = [0] * 15 + [1] * 3 + [2] * 6 + [3] * 2 + [4] * 4
    answers = [t if i % 3 else 0 for i, t in enumerate(truth)]
    evaluation = held_out_evaluation(compute_metrics(truth, answers, 5), truth, list(page.review.invitation.plan.classes),
                                     described="the coordinator's own held-out images in folder test",
                                     held_by="the coordinator")
    page.session._set_state(Membership.RUNNING)
    page.handle_event(RoundStarted(round=rounds, rounds=rounds))
    page.handle_event(BudgetCharged(round=rounds, epsilon=6.93, max_epsilon=20.0))
    page.handle_event(ModelReceived(round=rounds, metrics=evaluation, included=True))


def _journeys(window, app, out: Path, tmp: Path, data: Path) -> list[Path]:
    """The Data page's warning for the parent of the demo data, and a failed check (saved at once)."""
    from PySide6.QtWidgets import QMessageBox

    page = window.show_page("data")
    saved = []
    for name, path in (("state-data-wrong-folder", data.parent), ("state-data-failed", tmp / "no-such-folder")):
        page.picker.set_path(path)
        page.check(path)
        _settle(app, window)
        for box in window.findChildren(QMessageBox):
            box.close()
        saved += _save(window, app, out, name)
    page.check(data)
    _settle(app, window)
    return saved


def _viewer_states(window, app, out: Path, tmp: Path, data: Path, test: Path, model: Path) -> list[Path]:
    """A batch over the graded test folder, and a photograph far larger than the images the model was tested
    on; then the Viewer as the main screenshot shows it."""
    from PIL import Image

    viewer = window.viewer
    saved = []
    viewer.open_model(model)
    _settle(app, window)
    viewer.run_batch([test])
    _settle(app, window)
    viewer.open_paths([sorted((test / "2").glob("*.png"))[0]])
    _settle(app, window)
    window.show_page("viewer")
    saved += _save(window, app, out, "state-viewer-batch")
    big = tmp / "photograph_1411px.png"
    Image.open(sorted((data / "3").glob("*.png"))[0]).convert("RGB").resize((1411, 1411)).save(big)
    viewer.open_paths([big])
    _settle(app, window)
    viewer.heatmap_check.setChecked(True)
    _settle(app, window)
    saved += _save(window, app, out, "state-viewer-unusual-image")
    viewer.heatmap_check.setChecked(False)
    viewer.open_paths([sorted((data / "2").glob("*.png"))[1]])
    _settle(app, window)
    return saved


def _baseline_model(window, tmp: Path) -> Path:
    """A model whose card says it answered "No DR" for every test image (the issue's federation)."""
    import torch

    from core.data import DR_CLASSES, Preprocessing
    from core.inference import held_out_evaluation
    from core.models.package import ModelCard, write_package
    from core.models.registry import build_model
    from core.training.metrics import compute_metrics

    truth = [0] * 99 + [1] * 20 + [2] * 40 + [3] * 15 + [4] * 26
    evaluation = held_out_evaluation(compute_metrics(truth, [0] * 200, 5), truth, list(DR_CLASSES),
                                     described="the coordinator's own held-out images in folder test",
                                     held_by="the coordinator")
    torch.manual_seed(0)
    card = ModelCard(architecture="small_cnn", classes=list(DR_CLASSES),
                     preprocessing=Preprocessing(size=48).to_dict(), mode="fscdp", epsilon=2.2, delta=1e-4,
                     accountant="rdp", noise_multiplier=1.0, sample_rate=0.3, max_grad_norm=1.0, steps=4,
                     rounds=4, hospitals=2, image_counts={"St. Mary's": 60, "City Eye Clinic": 60},
                     metrics={"evaluation": evaluation}, created="2026-01-01T00:00:00+00:00",
                     software_version="0.1.0", description="A short federation: the model learned nothing.")
    path = tmp / "short-federation.dpm"
    write_package(path, build_model("small_cnn", 5).state_dict(), card, window.context.home.identity())
    return path


def _host(window, app, out: Path, tmp: Path, data: list[Path], evaluation: Path, *, run: bool) -> list[Path]:
    """The lead site's view: a plan with its preview, then (``run``) the federation hosted to its end."""
    from core.federation.service import CoordinatorService
    from core.federation.simulate import HospitalProcess, free_port

    page = window.show_page("host")
    page.name.setText("Regional screening (demo)")
    page.hospital_names.setPlainText("City Eye Clinic\nNorth Clinic")
    page.lead_trains.setChecked(False)
    page.expected.setText("60")
    page.rounds.setValue(8)
    page.image_size.setValue(48)
    page.sample_rate.setValue(0.3)
    page.delta.setText("1e-4")
    page.hosts.setText("127.0.0.1, localhost")
    page.port.setValue(free_port())
    page.eval_data.set_path(evaluation)
    page.invitations_dir.set_path(tmp / "host-invitations")
    page.refresh_preview()
    _wait(app, lambda: page.preview is not None)
    _settle(app, window)
    saved = _save(window, app, out, "host-plan")
    page.create()
    _wait(app, lambda: page.folder is not None)
    _settle(app, window)
    if not run:
        return saved
    folder = page.folder
    hospitals = [HospitalProcess(n, invitation, data[n - 1], tmp / "host-homes" / f"h{n}", tmp / "logs" / f"host-{n}.err",
                                 max_epsilon=100.0)
                 for n, invitation in enumerate(sorted((tmp / "host-invitations").glob("*.invite")), start=1)]
    try:
        page.start()
        _wait(app, lambda: page.status is not None and page.status.running)
        for hospital in hospitals:
            hospital.start()
        _wait(app, lambda: page.status is not None and page.status.status == "finished")
        _wait(app, lambda: page.models_button.isVisible())
    finally:
        for hospital in hospitals:
            hospital.kill()
        CoordinatorService(folder).stop()
    page.refresh_dashboard()
    _settle(app, window)
    return saved


def _compared(window) -> None:
    """The Compare modes page showing the README's default comparison (docs/compare: a real run's results;
    running it takes half an hour)."""
    import json

    folder = Path(__file__).resolve().parents[1] / "docs" / "compare"
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    window.pages["compare"].show_result({"results": results, "paths": {"figure": str(folder / "figure.png"),
                                                                        "report": str(folder / "results.json")}})


def _save(window, app, out: Path, name: str) -> list[Path]:
    """The window at 1280x800, and a taller copy when the page scrolls."""
    saved = []
    window.resize(WIDTH, HEIGHT)
    for _ in range(5):
        app.processEvents()
    path = out / f"{name}.png"
    window.grab().save(str(path))
    saved.append(path)
    page = window.stack.currentWidget()
    content = getattr(page, "body", None)
    needed = content.parentWidget().sizeHint().height() if content is not None else HEIGHT
    if needed > HEIGHT:
        window.resize(WIDTH, needed + 10)
        for _ in range(5):
            app.processEvents()
        full = out / f"{name}-full.png"
        window.grab().save(str(full))
        saved.append(full)
        window.resize(WIDTH, HEIGHT)
    return saved


def render(out: Path, *, quick: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="dopamine-screenshots-"))
    os.environ["DOPAMINE_HOME"] = str(tmp / "home")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from gui.app import application, create_window
    from gui.main_window import NAVIGATION

    app = application([])
    window = create_window(app)
    window.resize(WIDTH, HEIGHT)
    window.show()
    processes = None
    try:
        data, other = _make_data(tmp / "demo-data", quick=quick)
        window.show_page("data").check(data)
        _settle(app, window)
        saved = _journeys(window, app, out, tmp, data)
        init, invitations = _invite(window, app, tmp, tmp / "demo-data" / "test")
        saved += _save(window, app, out, "state-federation-set-cap")  # no cap yet: set here, with the plan's δ
        _train(window, app, data, quick=quick)
        processes = _federate(window, app, tmp, other, init, invitations, run=not quick)
        window.show_page("federation")
        _settle(app, window)
        saved += _save(window, app, out, "state-federation-finished")
        saved += _host(window, app, out, tmp, [data, other], tmp / "demo-data" / "test", run=not quick)
        _compared(window)
        for key in ("models", "privacy", "activity", "settings", "home"):
            window.show_page(key)
            _settle(app, window)
        models = window.pages["models"].entries
        viewer = window.viewer
        viewer.open_model(_baseline_model(window, tmp))
        _settle(app, window)
        viewer.open_paths([sorted((data / "2").glob("*.png"))[1]])
        _settle(app, window)
        window.show_page("viewer")
        saved += _save(window, app, out, "state-viewer-baseline-model")
        if models:
            saved += _viewer_states(window, app, out, tmp, data, tmp / "demo-data" / "test", models[-1].path)

        order = [key for key, _text, _icon in NAVIGATION]
        for number, key in enumerate(order, start=1):
            window.show_page(key)
            _settle(app, window)
            saved += _save(window, app, out, f"{number:02d}-{key}")
        window.context.theme_changed.emit("dark")
        for key in ("home", "train", "federation"):
            window.show_page(key)
            _settle(app, window)
            saved += _save(window, app, out, f"dark-{key}")
        window.context.theme_changed.emit(window.context.settings.theme)
        return saved
    finally:
        if processes is not None:
            coordinator, hospital = processes
            hospital.kill()
            coordinator.stop()
        window.context.runner.cancel_all()
        window.context.runner.wait_all(30000)
        window.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gui.screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the PNG files")
    parser.add_argument("--quick", action="store_true",
                        help="fewer, smaller images and no real federation run (the plan review only)")
    args = parser.parse_args(argv)
    for path in render(args.out, quick=args.quick):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
