"""The one place errors become dialogs (DESIGN §6), plus a yes/no question and the confirmation of an export.

Dopamine's own errors already say what happened and what to do in one line, so they are shown as
they are. Anything else is a bug: the dialog says the hospital's data was not changed, where the
details were written, and keeps the traceback behind "Show Details".
"""

from __future__ import annotations

import logging
import traceback

from PySide6.QtWidgets import QMessageBox, QWidget

from core import errors
from core.paths import log_dir

_TITLES: tuple[tuple[type[errors.DopamineError], str], ...] = (
    (errors.PrivacyBudgetExceeded, "Privacy budget would be exceeded"),
    (errors.SignatureError, "Signature does not verify"),
    (errors.NetworkError, "Cannot reach the coordinator"),
    (errors.SecAggError, "Secure aggregation refused"),
    (errors.FederationError, "Federation problem"),
    (errors.PrivacyError, "Privacy settings problem"),
    (errors.DataError, "Problem with the images"),
    (errors.ModelPackageError, "Problem with the model file"),
    (errors.ModelError, "Problem with the model"),
    (errors.InferenceError, "Prediction failed"),
    (errors.ConfigError, "Setting needs a change"),
)

_log = logging.getLogger("dopamine.gui")


def error_title(exc: BaseException) -> str:
    for cls, title in _TITLES:
        if isinstance(exc, cls):
            return title
    return "Something went wrong" if isinstance(exc, errors.DopamineError) else "Unexpected error"


def _log_unexpected(exc: BaseException, details: str) -> str:
    """Append the traceback to the app's log file and return its path for the dialog."""
    path = log_dir() / "gui.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(f"--- {type(exc).__name__}: {exc}\n{details}\n")
    except OSError:
        _log.exception("could not write %s", path)
    return str(path)


def show_error(parent: QWidget | None, exc: BaseException) -> QMessageBox | None:
    """Show ``exc`` to the user in a window-modal, non-blocking dialog; Cancelled shows nothing."""
    if isinstance(exc, errors.Cancelled):
        return None
    box = QMessageBox(parent)
    box.setObjectName("errorDialog")
    box.setWindowTitle(error_title(exc))
    if isinstance(exc, errors.DopamineError):
        box.setIcon(QMessageBox.Icon.Warning)
        box.setText(str(exc))
    elif isinstance(exc, OSError):
        # Files and folders the user chose: a full disk, a missing folder, no permission.
        box.setWindowTitle("File problem")
        box.setIcon(QMessageBox.Icon.Warning)
        where = f" {exc.filename}" if exc.filename else ""
        box.setText(f"Could not use{where}: {exc.strerror or exc}. Check that the folder exists, "
                    "that you may write to it and that the disk is not full, then try again.")
    else:
        details = getattr(exc, "__dopamine_traceback__", None) or "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__))
        log_path = _log_unexpected(exc, details)
        box.setIcon(QMessageBox.Icon.Critical)
        box.setText(f"Dopamine hit an unexpected problem ({type(exc).__name__}: {exc}). "
                    "Your images and privacy ledger were not changed.")
        box.setInformativeText(f"Please send the file {log_path} to your IT support.")
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.open()
    return box


def confirm(parent: QWidget | None, title: str, text: str, *, yes: str = "Continue") -> bool:
    """Ask a yes/no question; True when the user chose ``yes``."""
    box = QMessageBox(parent)
    box.setWindowTitle(title)
    box.setIcon(QMessageBox.Icon.Question)
    box.setText(text)
    yes_button = box.addButton(yes, QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is yes_button


def saved(parent: QWidget | None, path: object, what: str) -> QMessageBox:
    """Confirm that an export was written, and where (window-modal, non-blocking)."""
    box = QMessageBox(parent)
    box.setObjectName("savedDialog")
    box.setWindowTitle("Saved")
    box.setIcon(QMessageBox.Icon.Information)
    box.setText(f"{what[:1].upper()}{what[1:]} saved to {path}.")
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.open()
    return box
