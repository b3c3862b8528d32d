"""Shared test set-up: offscreen Qt, few threads, user folders under tmp."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Point every platformdirs location at a temporary folder, so tests never touch the real ones."""
    home = tmp_path_factory.mktemp("userhome")
    monkeypatch.setenv("DOPAMINE_HOME", str(home))
    yield
