"""pyqtgraph plots that follow the app theme: live line plots and a labelled bar chart.

Plots sit on scrolling pages, so they never take the mouse wheel (it scrolls the page) and cannot be
zoomed or dragged away from their data; rounds and epochs get whole-number ticks."""

from __future__ import annotations

import weakref

import pyqtgraph as pg
import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QWidget

from gui.theme import Colors, colors

pg.setConfigOptions(antialias=True)

_plots: weakref.WeakSet[_ThemedPlot] = weakref.WeakSet()
_current = colors("light")


def restyle_all(theme: str) -> None:
    """Recolour every plot (called when the user switches theme)."""
    global _current
    _current = colors(theme)
    for plot in list(_plots):
        if shiboken6.isValid(plot):  # a closed window's plots may outlive their C++ side
            plot.restyle(_current)
        else:
            _plots.discard(plot)


class CountAxis(pg.AxisItem):
    """An axis of whole things (rounds, epochs): ticks only on whole numbers, at round steps (1, 2, 5, 10 ...)."""

    def tickSpacing(self, minVal: float, maxVal: float, size: float):  # noqa: N802, N803 -- pyqtgraph's names
        levels = [(spacing, 0) for spacing, _offset in super().tickSpacing(minVal, maxVal, size) if spacing >= 1]
        return [(float(round(spacing)), 0) for spacing, _offset in levels] or [(1.0, 0)]


class _ThemedPlot(pg.PlotWidget):
    def __init__(self, title: str, y_label: str, x_label: str, parent: QWidget | None = None, *,
                 counted_x: bool = False) -> None:
        super().__init__(parent, axisItems={"bottom": CountAxis("bottom")} if counted_x else None)
        self._title = title
        # Plots share pages with forms and tables: a steady height, never the whole page.
        self.setMinimumHeight(200)
        self.setMaximumHeight(280)
        self.setMenuEnabled(False)
        # The data decide the view: no dragging or zooming it away from them.
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self.setLabel("left", y_label)
        self.setLabel("bottom", x_label)
        self.showGrid(x=True, y=True, alpha=0.15)
        for axis in ("left", "bottom"):  # "accuracy (x0.001)" is not how people read 0.5
            self.getAxis(axis).enableAutoSIPrefix(False)
        _plots.add(self)
        self.restyle(_current)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 (Qt override)
        event.ignore()  # the page scrolls

    def restyle(self, c: Colors) -> None:
        self.setBackground(c.plot_background)
        self.setTitle(self._title, color=c.text, size="10pt")
        for axis in ("left", "bottom"):
            item = self.getAxis(axis)
            item.setPen(pg.mkPen(c.plot_foreground))
            item.setTextPen(pg.mkPen(c.plot_foreground))


class LivePlot(_ThemedPlot):
    """Named series that grow while a job runs, plus optional horizontal limit lines (the ε cap)."""

    def __init__(self, title: str, y_label: str, x_label: str = "epoch", *,
                 y_range: tuple[float, float] | None = None, parent: QWidget | None = None) -> None:
        self._curves: dict[str, pg.PlotDataItem] = {}
        self._data: dict[str, tuple[list[float], list[float]]] = {}
        self._limits: dict[str, pg.InfiniteLine] = {}
        super().__init__(title, y_label, x_label, parent, counted_x=x_label in ("epoch", "round", "step"))
        self._legend = self.addLegend(offset=(-10, 10))
        if y_range is not None:  # e.g. accuracy: always 0..1, so a flat line is not mistaken for a trend
            self.setYRange(*y_range, padding=0.05)
            self.getViewBox().enableAutoRange(axis="y", enable=False)

    def _curve(self, name: str) -> pg.PlotDataItem:
        if name not in self._curves:
            color = _current.series[len(self._curves) % len(_current.series)]
            self._curves[name] = self.plot([], [], name=name, pen=pg.mkPen(color, width=2),
                                           symbol="o", symbolSize=5, symbolBrush=color, symbolPen=None)
            self._data[name] = ([], [])
        return self._curves[name]

    def set_series(self, name: str, xs: list[float], ys: list[float]) -> None:
        curve = self._curve(name)
        self._data[name] = (list(map(float, xs)), list(map(float, ys)))
        curve.setData(*self._data[name])

    def append(self, name: str, x: float, y: float) -> None:
        curve = self._curve(name)
        xs, ys = self._data[name]
        xs.append(float(x))
        ys.append(float(y))
        curve.setData(xs, ys)

    def set_x_range(self, low: float, high: float) -> None:
        """Fix the x axis (e.g. to all planned epochs): fewer re-layouts and repaints while a job runs."""
        self.setXRange(low, high, padding=0.02)
        self.getViewBox().enableAutoRange(axis="x", enable=False)

    def series(self, name: str) -> tuple[list[float], list[float]]:
        return self._data.get(name, ([], []))

    def set_limit(self, name: str, value: float | None) -> None:
        """A dashed horizontal line, e.g. the hospital's ε cap; None removes it."""
        line = self._limits.pop(name, None)
        if line is not None:
            self.removeItem(line)
        if value is None:
            return
        line = pg.InfiniteLine(pos=float(value), angle=0, movable=False,
                               pen=pg.mkPen(_current.bad, width=1.5, style=Qt.PenStyle.DashLine),
                               label=f"{name} {value:g}", labelOpts={"position": 0.08, "color": _current.bad})
        self._limits[name] = line
        self.addItem(line)

    def clear_series(self) -> None:
        for curve in self._curves.values():
            self.removeItem(curve)
        self._curves.clear()
        self._data.clear()
        self._legend.clear()

    def restyle(self, c: Colors) -> None:
        super().restyle(c)
        for index, curve in enumerate(getattr(self, "_curves", {}).values()):
            color = c.series[index % len(c.series)]
            curve.setPen(pg.mkPen(color, width=2))
            curve.setSymbolBrush(color)


class BarChart(_ThemedPlot):
    """Counts per category with the numbers written above the bars (class balance)."""

    def __init__(self, title: str, y_label: str = "images", parent: QWidget | None = None) -> None:
        self._bars: pg.BarGraphItem | None = None
        self._texts: list[pg.TextItem] = []
        self._counts: dict[str, int] = {}
        super().__init__(title, y_label, "", parent)
        self.setMouseEnabled(x=False, y=False)
        self.showGrid(x=False, y=True, alpha=0.15)

    def set_counts(self, counts: dict[str, int]) -> None:
        self._counts = dict(counts)
        self._draw()

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def _draw(self) -> None:
        if self._bars is not None:
            self.removeItem(self._bars)
            self._bars = None
        for text in self._texts:
            self.removeItem(text)
        self._texts.clear()
        names = list(self._counts)
        values = [self._counts[n] for n in names]
        self.getAxis("bottom").setTicks([list(enumerate(names))])
        if not names:
            return
        self._bars = pg.BarGraphItem(x=list(range(len(names))), height=values, width=0.6,
                                     brush=_current.series[0], pen=None)
        self.addItem(self._bars)
        for i, value in enumerate(values):
            text = pg.TextItem(str(value), color=_current.text, anchor=(0.5, 1.0))
            text.setPos(i, value)
            self.addItem(text)
            self._texts.append(text)
        self.setXRange(-0.6, len(names) - 0.4, padding=0)
        self.setYRange(0, max(values) * 1.18 + 1, padding=0)

    def restyle(self, c: Colors) -> None:
        super().restyle(c)
        if getattr(self, "_counts", None):
            self._draw()
