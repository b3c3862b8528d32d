"""The Viewer: diagnose images offline with a signed model (page.py), its image view, panels and jobs."""

from gui.viewer.page import ViewerPage

__all__ = ["ViewerPage"]
