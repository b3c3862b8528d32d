"""Render every page with demo content, offscreen, to PNGs: ``python -m gui.screenshots OUTDIR``.

Everything shown is made on the fly with the real core code, in a temporary DOPAMINE_HOME (the
user's own settings, ledger and models are never touched): SYNTHETIC fundus images (with one damaged
file and one duplicate, so the Data page has problems to list), a local DP training run that charges
the ledger and writes a signed model, and, unless ``--quick``, a real 2-hospital federation over
loopback HTTPS in which this window is hospital 1 (``--quick``: less data, no federation run). Each page is saved at 1280x800 as the user sees
it, plus a taller ``-full`` image when the page scrolls; Home and Train are also saved in the dark
theme.
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


def _federate(window, app, tmp: Path, other_data: Path, evaluation: Path, *, run: bool):
    """Invite this window as hospital 1 of a 2-hospital federation; with ``run``, take part to the end."""
    from core.federation.layout import InitConfig, init_federation
    from core.federation.simulate import CoordinatorProcess, HospitalProcess, free_port

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
    if not run:
        return None
    coordinator = CoordinatorProcess(init.folder, tmp / "logs" / "coordinator.out")
    coordinator.start(url=init.coordinator_url, ca_file=init.folder / "tls" / "ca.pem")
    other = HospitalProcess(2, invitations[1], other_data, tmp / "hospital_2", tmp / "logs" / "hospital_2.err",
                            max_epsilon=100.0)
    other.start()
    page.start()
    _wait(app, lambda: not page.running)
    page.refresh_view()
    _settle(app, window)
    return coordinator, other


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

    app = application([])
    window = create_window(app)
    window.resize(WIDTH, HEIGHT)
    window.show()
    processes = None
    try:
        data, other = _make_data(tmp / "demo-data", quick=quick)
        window.show_page("data").check(data)
        _settle(app, window)
        _train(window, app, data, quick=quick)
        processes = _federate(window, app, tmp, other, tmp / "demo-data" / "test", run=not quick)
        for key in ("models", "privacy", "activity", "settings", "home"):
            window.show_page(key)
            _settle(app, window)
        viewer = window.viewer
        models = window.pages["models"].entries
        if models and hasattr(viewer, "open_model"):
            viewer.open_model(models[-1].path)
            _settle(app, window)
            if hasattr(viewer, "open_paths"):
                viewer.open_paths([sorted((data / "2").glob("*.png"))[1]])
                _settle(app, window)

        saved = []
        order = ("home", "data", "train", "federation", "privacy", "models", "viewer", "settings", "activity")
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
