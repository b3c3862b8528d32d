"""Where user files live: platformdirs locations, overridable with DOPAMINE_HOME (tests, portable installs)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "Dopamine"


def _base(kind: str) -> Path:
    override = os.environ.get("DOPAMINE_HOME")
    if override:
        return Path(override) / kind
    getter = {
        "config": platformdirs.user_config_path,
        "data": platformdirs.user_data_path,
        "cache": platformdirs.user_cache_path,
        "log": platformdirs.user_log_path,
    }[kind]
    return Path(getter(APP_NAME, appauthor=False))


def config_dir() -> Path:
    return _base("config")


def data_dir() -> Path:
    """Default work folder: ledger, identity keys, models, run logs."""
    return _base("data")


def cache_dir() -> Path:
    """Preprocessed image cache (safe to delete)."""
    return _base("cache")


def log_dir() -> Path:
    return _base("log")


def default_ledger_path() -> Path:
    return data_dir() / "privacy-ledger.sqlite"
