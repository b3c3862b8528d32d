"""installer/dopamine-coordinator.service: the systemd unit IT installs to run the coordinator headless.

Its command line is parsed by the real `dopamine` parser (a typo there would only show on a server at
start-up), its stop is the graceful one, and where systemd-analyze exists (Debian's systemd package, as
on the CI image) the unit also passes `systemd-analyze verify`, run on a copy whose ExecStart points
at this checkout's `dopamine` (verify checks that the program exists).
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[3] / "installer" / "dopamine-coordinator.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_file_runs_dopamine_coordinator_serve_and_stops_it_gracefully(tmp_path):
    from core.cli import build_parser
    from core.federation.service import STOP_TIMEOUT_S

    unit = _unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).is_absolute() and Path(argv[0]).name == "dopamine"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.coordinator_command) == ("coordinator", "serve")
    assert args.func.__name__ == "_serve" and Path(args.folder).is_absolute()
    assert service["KillSignal"] == "SIGTERM" and float(service["TimeoutStopSec"]) >= STOP_TIMEOUT_S
    assert service["Restart"] == "on-failure" and service["User"] != "root"
    assert service["UMask"] == "0077"  # the folder holds the CA and signing keys
    assert unit["Install"]["WantedBy"] == "multi-user.target"

    verifier = shutil.which("systemd-analyze")
    if verifier is not None:
        program = Path(sys.executable).with_name("dopamine")
        assert program.exists(), "the checkout's dopamine command (make setup installs it)"
        copy = tmp_path / UNIT.name
        copy.write_text(UNIT.read_text().replace(argv[0], str(program)))
        result = subprocess.run([verifier, "verify", str(copy)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr
