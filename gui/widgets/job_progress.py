"""A progress bar, its message and a Cancel button, bound to one running job at a time."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from gui.workers import JobHandle


class JobProgress(QWidget):
    """Hidden while idle. ``bind(handle)`` shows it, follows progress and hides it at the end."""

    def __init__(self, parent: QWidget | None = None, *, cancel_text: str = "Cancel",
                 keep_space: bool = False) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setMaximumWidth(260)
        self.message = QLabel()
        self._cancel_text = cancel_text
        self.cancel_button = QPushButton(cancel_text)
        self.cancel_button.setProperty("danger", True)
        layout.addWidget(self.bar)
        layout.addWidget(self.message, 1)
        layout.addWidget(self.cancel_button)
        self.cancel_button.clicked.connect(self.cancel)
        self._handle: JobHandle | None = None
        if keep_space:
            # Showing it then does not re-lay out (and repaint) plots below it while a job runs.
            policy = self.sizePolicy()
            policy.setRetainSizeWhenHidden(True)
            self.setSizePolicy(policy)
        self.setVisible(False)

    def bind(self, handle: JobHandle, message: str = "Starting…") -> None:
        """Follow ``handle``; a job bound earlier no longer moves the bar, and its end does not hide it."""
        self._handle = handle
        self.bar.setValue(0)
        self.message.setText(message)
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText(self._cancel_text)
        self.setVisible(True)
        handle.progress.connect(lambda fraction, text, h=handle: self._progress(h, fraction, text))
        handle.finished.connect(lambda h=handle: self._finished(h))

    def _progress(self, handle: JobHandle, fraction: float, message: str) -> None:
        if handle is self._handle:
            self.set_progress(fraction, message)

    def set_progress(self, fraction: float, message: str) -> None:
        self.bar.setValue(int(max(0.0, min(1.0, fraction)) * 1000))
        if message and message != self.message.text():
            self.message.setText(message)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self.cancel_button.setEnabled(False)
            self.cancel_button.setText("Stopping…")
            self.message.setText("Stopping at the next safe point…")

    @property
    def running(self) -> bool:
        return self._handle is not None and self._handle.running

    def _finished(self, handle: JobHandle) -> None:
        if handle is not self._handle:
            return
        # Done, failed or cancelled: nothing of this job stays on screen.
        self._handle = None
        self.bar.setValue(0)
        self.message.setText("")
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText(self._cancel_text)
        self.setVisible(False)
