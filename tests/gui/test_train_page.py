"""Train page: a tiny DP job runs to completion with live plots and a result card, and can be cancelled."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.models.package import read_package


def _fill(page, data: Path, *, epochs: int = 2) -> None:
    page.data_picker.set_path(data)
    page.mode.setCurrentIndex(page.mode.findData("cdp"))
    page.model.setCurrentIndex(page.model.findData("small_cnn"))
    page.image_size.setCurrentIndex(page.image_size.findData(64))
    page.epochs.setValue(epochs)
    page.batch_size.setValue(4)
    page.by_epsilon.setChecked(True)
    page.target_epsilon.setValue(8.0)


def test_model_names_match_core():
    from core.models.registry import MODEL_NAMES
    from core.privacy.accountant import ACCOUNTANTS
    from gui.pages.train import ACCOUNTANTS as GUI_ACCOUNTANTS
    from gui.pages.train import MODELS

    assert set(MODELS) == set(MODEL_NAMES)
    assert set(GUI_ACCOUNTANTS) == set(ACCOUNTANTS)


def test_a_tiny_dp_job_runs_to_completion(window, qtbot, image_folder):
    page = window.show_page("train")
    _fill(page, image_folder)
    page.start()
    assert page.job is not None and page.job.precious
    assert not page.start_button.isEnabled()
    qtbot.waitUntil(lambda: not page.job.running, timeout=120000)
    assert page.job.error is None, page.job.error

    result = page.result
    # Done, and said plainly whether the model beat always answering the largest class (from its signed card).
    qtbot.waitUntil(lambda: page.verdict is not None, timeout=20000)
    assert page.result_card.isVisible() and page.status.kind == ("ok" if page.verdict.trustworthy else "error")
    assert page.verdict.trustworthy or f"But: {page.verdict.headline}" in page.status.text()
    assert result.epsilon is not None and result.epsilon <= 8.0
    assert "ε = " in page.result_card.value("Privacy")
    xs, losses = page.loss_plot.series("training")
    assert xs == [1.0, 2.0] and all(loss > 0 for loss in losses)
    assert page.epsilon_plot.series("ε")[1][-1] == pytest.approx(result.epsilon)
    assert page.start_button.isEnabled()

    model = Path(result.model_path)
    assert model.parent == window.context.models_folder
    package = read_package(model)
    assert package.signature_ok and package.card.mode == "cdp"

    # The run was charged to the hospital's ledger, which the Privacy page shows.
    privacy = window.show_page("privacy")
    qtbot.waitUntil(lambda: privacy.snapshot is not None and privacy.snapshot.exists, timeout=20000)
    assert privacy.table.rowCount() == 2  # one charge per epoch
    assert privacy.snapshot.spent == pytest.approx(result.epsilon)
    # The child process trained in the app's hospital home: its ledger, run log, image cache and key.
    home = window.context.home
    assert result.ledger_path == str(home.ledger)
    assert Path(result.log_path).is_relative_to(home.runs)
    assert list(home.image_cache.rglob("*.npy"))
    from core.signing import public_key_bytes

    assert package.signer_public_key == public_key_bytes(home.identity())

    models = window.show_page("models")
    qtbot.waitUntil(lambda: len(models.entries) == 1, timeout=20000)
    assert models.entries[0].signature_text == "valid — signed by this hospital"


def test_training_can_be_cancelled(window, qtbot, image_folder):
    page = window.show_page("train")
    _fill(page, image_folder, epochs=50)
    page.start()
    qtbot.waitUntil(lambda: page.loss_plot.series("training")[0] != [], timeout=120000)
    page.cancel()
    qtbot.waitUntil(lambda: not page.job.running, timeout=60000)
    assert page.job.was_cancelled and page.job.error is None
    assert page.status.kind == "warning" and "cancelled" in page.status.text().lower()
    assert not page.result_card.isVisible()
    assert not list(window.context.models_folder.glob("*.dpm"))
    assert len(page.loss_plot.series("training")[0]) < 50
