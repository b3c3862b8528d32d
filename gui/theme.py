"""Light and dark themes: Fusion style, a palette, a style sheet and matching plot colours."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from gui.resources import read_text


@dataclass(frozen=True)
class Colors:
    window: str
    base: str
    text: str
    muted: str
    accent: str
    ok: str
    warn: str
    bad: str
    plot_background: str
    plot_foreground: str
    series: tuple[str, ...]


COLORS = {
    "light": Colors(window="#f5f7fa", base="#ffffff", text="#1b1f24", muted="#57606a", accent="#1f6feb",
                    ok="#1a7f37", warn="#9a6700", bad="#cf222e", plot_background="#ffffff",
                    plot_foreground="#57606a",
                    series=("#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bc4c00", "#0598bc")),
    "dark": Colors(window="#0d1117", base="#010409", text="#e6edf3", muted="#9da7b3", accent="#4493f8",
                   ok="#3fb950", warn="#d29922", bad="#f85149", plot_background="#161b22",
                   plot_foreground="#9da7b3",
                   series=("#4493f8", "#f85149", "#3fb950", "#a371f7", "#f0883e", "#39c5cf")),
}


def colors(theme: str) -> Colors:
    return COLORS.get(theme, COLORS["light"])


def _palette(c: Colors) -> QPalette:
    palette = QPalette()
    role = QPalette.ColorRole
    for r, value in ((role.Window, c.window), (role.Base, c.base), (role.AlternateBase, c.window),
                     (role.Text, c.text), (role.WindowText, c.text), (role.ButtonText, c.text),
                     (role.Button, c.base), (role.ToolTipBase, c.base), (role.ToolTipText, c.text),
                     (role.Highlight, c.accent), (role.HighlightedText, "#ffffff"),
                     (role.PlaceholderText, c.muted), (role.Link, c.accent)):
        palette.setColor(r, QColor(value))
    # Fusion draws frames and indicators from these: keep them visible on both themes.
    window = QColor(c.window)
    dark_theme = window.lightness() < 128
    palette.setColor(role.Light, window.lighter(260) if dark_theme else QColor("#ffffff"))
    palette.setColor(role.Midlight, window.lighter(200) if dark_theme else window.darker(110))
    palette.setColor(role.Mid, window.lighter(240) if dark_theme else window.darker(130))
    palette.setColor(role.Dark, window.lighter(300) if dark_theme else window.darker(160))
    disabled = QPalette.ColorGroup.Disabled
    for r in (role.Text, role.WindowText, role.ButtonText):
        palette.setColor(disabled, r, QColor(c.muted))
    return palette


def apply_theme(app: QApplication, theme: str) -> None:
    """The palette and style sheet; plots follow with gui.widgets.plots.restyle_all (called by the window)."""
    c = colors(theme)
    app.setStyle("Fusion")
    app.setPalette(_palette(c))
    sheet = read_text("styles", "base.qss") + read_text("styles", f"{theme}.qss")
    app.setStyleSheet(sheet)
