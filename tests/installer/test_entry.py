"""The launcher (the `dopamine` console script and installer/entry.py, the bundle's executable) routes to
the GUI, the CLI, or a background job; core never names the app."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import launcher as entry
from core import __version__
from gui.child_jobs import FROZEN_FLAG

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "installer" / "entry.py"


@pytest.mark.parametrize(("argv", "expected"), [
    ([], ("gui", [])),
    (["gui"], ("gui", [])),
    (["gui", "-style", "fusion"], ("gui", ["-style", "fusion"])),
    (["--version"], ("cli", ["--version"])),
    (["privacy", "--steps", "10"], ("cli", ["privacy", "--steps", "10"])),
    (["train", "gui"], ("cli", ["train", "gui"])),
    (["-m", "core.cli", "join", "inv.toml"], ("cli", ["join", "inv.toml"])),
    (["-m", "gui.app"], ("gui", [])),
    (["-m", "gui.child_jobs"], ("child", [])),
    ([FROZEN_FLAG], ("child", [])),
])
def test_route(argv, expected):
    assert entry.route(argv) == expected


@pytest.mark.parametrize("argv", [["-m"], ["-m", "os"], ["-m", "core.federation.simulate"]])
def test_only_known_modules_run_with_dash_m(argv, capsys):
    assert entry.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: -m ") and "core.cli" in err and "\n" == err[-1] and err.count("\n") == 1


def test_dash_m_core_cli_is_the_cli(capsys):
    with pytest.raises(SystemExit) as done:  # argparse's --version exits
        entry.main(["-m", "core.cli", "--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"dopamine {__version__}"


def test_cli_errors_keep_their_exit_code(capsys):
    with pytest.raises(SystemExit) as done:
        entry.main(["privacy", "--no-such-option"])
    assert done.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(("value", "expected"), [("", None), ("  ", None), ("0", 0), ("2500", 2500)])
def test_smoke_exit_ms(value, expected):
    assert entry.smoke_exit_ms({entry.SMOKE_EXIT_ENV: value}) == expected
    assert entry.smoke_exit_ms({}) is None


@pytest.mark.parametrize("value", ["soon", "1.5", "-1"])
def test_bad_smoke_exit_ms_is_a_usage_error(value):
    with pytest.raises(entry.UsageError, match=entry.SMOKE_EXIT_ENV):
        entry.smoke_exit_ms({entry.SMOKE_EXIT_ENV: value})


def test_gui_reports_its_window_and_exits_by_itself(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "DOPAMINE_HOME": str(tmp_path),
           entry.STARTUP_PROBE_ENV: "1", entry.SMOKE_EXIT_ENV: "0"}
    done = subprocess.run([sys.executable, str(ENTRY)], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    marks = [line.split(" ", 2) for line in done.stdout.splitlines() if line.startswith(entry.WINDOW_SHOWN_MARK)]
    assert len(marks) == 1  # reported once, at the first paint only
    _, shown_at, title = marks[0]
    assert float(shown_at) > 0 and title.startswith("Dopamine")
    # Start-up stays fast because torch and friends load only after the window is up.
    assert f"{entry.HEAVY_MODULES_MARK} -" in done.stdout.splitlines()


def test_the_bundle_entry_script_is_the_launcher():
    done = subprocess.run([sys.executable, str(ENTRY), "--version"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == f"dopamine {__version__}"


def test_dopamine_gui_is_listed_but_run_by_the_launcher(monkeypatch, capsys):
    import gui.app
    from core.cli import main as cli_main

    calls = []
    monkeypatch.setattr(gui.app, "main", lambda argv=None: calls.append(argv) or 0)
    assert entry.main(["gui"]) == 0 and calls == [[]]
    with pytest.raises(SystemExit):  # core alone does not know the app: argparse refuses the command
        cli_main(["gui"])
    assert cli_main(["gui"], extra_commands={"gui": "open the desktop app"}) == 1
    assert "started by the dopamine program" in capsys.readouterr().err
