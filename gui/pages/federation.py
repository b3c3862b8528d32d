"""Federation page (being written)."""

from __future__ import annotations

from gui.widgets.page import Page


class FederationPage(Page):
    key = "federation"
    title = "Federation"
