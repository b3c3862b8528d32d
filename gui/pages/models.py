"""Models: the packages trained here or received from a federation, their cards and signatures."""

from __future__ import annotations

import shutil
from pathlib import Path

from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from gui.context import AppContext
from gui.dialogs import saved, show_error
from gui.file_dialogs import open_file, save_file
from gui.model_jobs import SIGNATURE_COLORS, ModelEntry, home_of, scan_with_trust
from gui.theme import colors
from gui.widgets.common import Banner, KeyValueCard, button
from gui.widgets.page import Page

MODE_WORDS = {"c": "C (local, no privacy)", "cdp": "CDP (local, DP-SGD)", "f": "F (federated)",
              "fpdp": "FPDP (federated, local DP)", "fscdp": "FSCDP (Dopamine)"}


def card_rows(entry: ModelEntry) -> list[tuple[str, object]]:
    if entry.card is None:
        return [("File", str(entry.path)), ("Problem", entry.error)]
    card = entry.card
    privacy = "none (no differential privacy)"
    if card.epsilon is not None:
        privacy = f"ε = {card.epsilon:.3f} at δ = {card.delta:.2g} ({(card.accountant or '').upper()})"
    verdict = entry.assessment
    if not entry.signer_trusted:
        # Anyone can make a key and sign any card: the claims of an unknown signer prove nothing.
        privacy += " (unverified claim)"
    rows: list[tuple[str, object]] = [
        ("File", str(entry.path)),
        ("Where it came from", entry.source),
        ("Signature", entry.signature_text),
        ("Signer fingerprint", entry.signer_fingerprint),
        ("What it proves", SIGNATURE_MEANING[entry.level]),
        ("Architecture", card.architecture),
        ("Classes", ", ".join(card.classes)),
        ("Training mode", MODE_WORDS.get(card.mode, card.mode)),
        ("Privacy", privacy),
        ("Held-out evaluation", _verdict_text(verdict)),
        ("Hospitals / rounds", f"{card.hospitals or '—'} / {card.rounds or '—'}"),
        ("Images", ", ".join(f"{k}: {v}" for k, v in card.image_counts.items())),
        ("Created", card.created),
        ("Software", card.software_version),
        ("Description", card.description),
    ]
    return rows


def _verdict_text(verdict) -> str | None:
    """The card's held-out evaluation in words (accuracy, κ, the baseline, whose images), or None."""
    if verdict is None:
        return None
    if verdict.trustworthy:
        return verdict.message
    return f"{verdict.headline.upper()}: {verdict.message}"


SIGNATURE_MEANING = {
    "trusted": "The signer is trusted here, so the card's privacy and training claims are the signer's word.",
    "unknown signer": ("The file is intact, but anyone can sign with a key of their own: its card's claims "
                       "(ε, training, accuracy) are unverified. To trust this signer, compare the fingerprint "
                       "with its sender, then add it under Settings → Trusted signers."),
    "invalid": "The file was changed after it was signed, or its signature is damaged: do not use it.",
    "unreadable": "The file is not a readable model package.",
}


class ModelsPage(Page):
    key = "models"
    title = "Models"
    subtitle = ("Models trained on this computer and models received from a federation. A valid signature "
                "means the file is exactly what its signer produced; its card counts only when the signer "
                "is trusted (this hospital, a federation it joined, or a signer added in Settings).")

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        self.body.addWidget(Banner(
            "A model file contains learned weights, never patient images. Models trained without privacy "
            "(mode C or F) may still reveal details of training images: keep them inside the hospital.",
            "info"))
        self.table = QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(["Model", "From", "Mode", "ε", "Created", "Signature"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(220)
        self.body.addWidget(self.table)

        buttons = QHBoxLayout()
        self.open_button = button("Open in viewer", primary=True)
        self.export_button = button("Export a copy…")
        self.add_button = button("Add a model file…")
        self.refresh_button = button("Refresh")
        for widget in (self.open_button, self.export_button, self.add_button):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        buttons.addWidget(self.refresh_button)
        self.body.addLayout(buttons)
        self.details = KeyValueCard("Model card")
        self.body.addWidget(self.details)
        self.body.addStretch(1)

        self.entries: list[ModelEntry] = []
        self._loaded = False
        self.table.itemSelectionChanged.connect(self._selected)
        self.open_button.clicked.connect(self.open_selected)
        self.export_button.clicked.connect(self.export_selected)
        self.add_button.clicked.connect(self.add_model)
        self.refresh_button.clicked.connect(self.refresh)
        context.models_changed.connect(self._changed)
        self._selected()

    def on_shown(self) -> None:
        if not self._loaded:
            self.refresh()

    def _changed(self) -> None:
        # Reading packages loads torch-sized work: a hidden page catches up when it is shown.
        if self.isVisible():
            self.refresh()
        else:
            self._loaded = False

    def folders(self) -> list[tuple[Path, str]]:
        return [(self.context.models_folder / "imported", "added"),
                (self.context.models_folder, "trained here"),
                (self.context.federations_folder, "from a federation")]

    def refresh(self) -> None:
        self._loaded = True
        self.context.runner.start(
            scan_with_trust, self.folders(), home_of(self.context), name="scan models",
            on_done=self.show_entries, on_error=lambda e: show_error(self, e))

    def show_entries(self, entries: list[ModelEntry]) -> None:
        self.entries = entries
        self.table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            card = entry.card
            values = (entry.path.name, entry.source,
                      MODE_WORDS.get(card.mode, card.mode) if card else "—",
                      f"{card.epsilon:.3g}" if card is not None and card.epsilon is not None else "none",
                      (card.created[:16].replace("T", " ") if card else "—"), entry.signature_text)
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setToolTip(str(entry.path) if column == 0 else value)
                if column == 5:
                    item.setToolTip(SIGNATURE_MEANING[entry.level])
                    color = SIGNATURE_COLORS.get(entry.level)
                    if color is not None:
                        item.setForeground(QColor(getattr(colors(self.context.settings.theme), color)))
                self.table.setItem(row, column, item)
        if entries:
            self.table.selectRow(0)
        self._selected()

    def selected(self) -> ModelEntry | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows or rows[0].row() >= len(self.entries):
            return None
        return self.entries[rows[0].row()]

    def _selected(self) -> None:
        entry = self.selected()
        for widget in (self.open_button, self.export_button):
            widget.setEnabled(entry is not None and entry.card is not None)
        if entry is None:
            self.details.set_rows([("Model", "Select a model above." if self.entries else
                                    "No models yet. Train one on the Train locally page or join a federation.")])
        else:
            self.details.set_rows(card_rows(entry))

    def open_selected(self) -> None:
        entry = self.selected()
        if entry is not None:
            self.context.open_in_viewer(entry.path)

    def export_selected(self) -> None:
        entry = self.selected()
        if entry is None:
            return
        chosen = save_file(self, self.context.folders, "model", "Export the model", entry.path.name,
                           "Dopamine model (*.dpm)")
        if chosen is not None:
            self.export_to(entry, chosen)

    def export_to(self, entry: ModelEntry, chosen: Path) -> None:
        self.context.runner.start(shutil.copy2, entry.path, Path(chosen), name="export model",
                                  on_done=lambda _r: saved(self, chosen, "the model"),
                                  on_error=lambda e: show_error(self, e))

    def add_model(self) -> None:
        chosen = open_file(self, self.context.folders, "model", "Add a model file", "Dopamine model (*.dpm)")
        if chosen is not None:
            self.context.runner.start(_import_model, chosen, self.context.models_folder / "imported",
                                      name="add model", on_done=lambda _p: self.refresh(),
                                      on_error=lambda e: show_error(self, e))


def _import_model(source: Path, folder: Path) -> Path:
    """Check the file is a readable package before copying it in (never trust a file by its name)."""
    from core.models.package import read_package

    read_package(source, require_signature=False)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    shutil.copy2(source, target)
    return target
