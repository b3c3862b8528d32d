"""The app's own settings (folders, threads, device, accountant, theme, window state), saved as TOML.

They live in ``core.paths.config_dir()/gui.toml``; a missing or unreadable file means defaults, so a
broken settings file can never stop the app from starting (the problem is reported instead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from core import paths
from core.config import load_toml, save_toml
from core.device import DEFAULT_DEVICE, DEVICES
from core.errors import ConfigError

THEMES = ("light", "dark")
SETTINGS_FILE = "gui.toml"


def default_threads() -> int:
    """Leave one core to the window and the rest of the computer."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass
class AppSettings:
    schema_version: int = 1
    data_folder: Path = field(default_factory=lambda: paths.data_dir() / "datasets")
    # The hospital home (core.home.HospitalHome): ledger, identity key, audit log, models, federations, image
    # cache. The default is the one the command line uses without --home.
    work_folder: Path = field(default_factory=paths.data_dir)
    cpu_threads: int = field(default_factory=default_threads)
    # Where training, federation and comparison jobs compute (core.device): auto, cpu or cuda.
    device: str = DEFAULT_DEVICE
    accountant: str = "rdp"
    theme: str = "light"
    # The dataset chosen on the Data page (a folder or an APTOS-style CSV), remembered across starts.
    dataset: Path | None = None
    # The invitation of the federation this hospital joined, so Home and Federation can show it.
    invitation: Path | None = None
    window_geometry: str = ""
    window_state: str = ""
    last_page: str = "home"
    # The last folder of each kind of file dialog ("images", "model", "export", ...): gui.file_dialogs.
    last_folders: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.theme not in THEMES:
            raise ConfigError(f"Theme {self.theme!r} is unknown; choose one of {', '.join(THEMES)}.")
        if not 1 <= int(self.cpu_threads) <= 256:
            raise ConfigError("CPU threads must be between 1 and 256; change it in Settings.")
        if self.device not in DEVICES:
            raise ConfigError(f"Device {self.device!r} is unknown; choose Auto, CPU or CUDA in Settings.")


def settings_path() -> Path:
    return paths.config_dir() / SETTINGS_FILE


def load_settings() -> tuple[AppSettings, str | None]:
    """The saved settings, or defaults plus a one-line warning when the file could not be used."""
    path = settings_path()
    if not path.exists():
        return AppSettings(), None
    try:
        settings = load_toml(AppSettings, path)
        settings.validate()
    except ConfigError as exc:
        return AppSettings(), f"Your settings could not be read ({exc}); defaults are used until you save."
    return settings, None


def save_settings(settings: AppSettings) -> None:
    settings.validate()
    save_toml(settings, settings_path())
