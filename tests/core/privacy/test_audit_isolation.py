"""The canaries stay in the audit: nothing outside core.privacy_audit (and the command, the page and
the job that start it) can reach the injection hook, no model file or config can name it, and an audit
writes nothing, opens no ledger, home or socket, and starts no process."""

from __future__ import annotations

import ast
import builtins
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# The only files that may import the audit package: itself, its command, the Privacy page and its job.
ALLOWED = {"core/commands/audit_dp.py", "gui/audit_jobs.py", "gui/pages/privacy.py", "gui/child_jobs.py"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_audit_command_page_and_job_import_the_audit():
    importers = set()
    for folder in ("core", "gui", "installer", "launcher"):
        for path in sorted((REPO / folder).rglob("*.py")) if (REPO / folder).is_dir() else []:
            relative = path.relative_to(REPO).as_posix()
            if relative.startswith("core/privacy_audit/"):
                continue
            if any(name.startswith("core.privacy_audit") for name in _imports(path)):
                importers.add(relative)
            assert "CanaryHarness" not in path.read_text(encoding="utf-8") or relative in ALLOWED, relative
    assert importers <= ALLOWED
    # The hook itself is only built by the runners.
    built = re.compile(r"(?<!class )CanaryHarness\(")
    users = {p.name for p in (REPO / "core/privacy_audit").glob("*.py") if built.search(p.read_text())}
    assert users == {"runners.py"}


def test_no_model_name_file_or_config_can_produce_the_harness():
    from core.errors import ModelError
    from core.models.registry import MODEL_NAMES, build_model

    assert not any("canary" in name.lower() or "harness" in name.lower() for name in MODEL_NAMES)
    for name in ("CanaryHarness", "canary", "core.privacy_audit.canaries.CanaryHarness"):
        with pytest.raises(ModelError):
            build_model(name)


def test_training_federation_and_cli_load_no_canary_code():
    code = (
        "import sys, core.cli, core.training.trainer, core.federation.client, core.federation.coordinator\n"
        "core.cli.build_parser()\n"
        "print(sorted(m for m in sys.modules if m.startswith('core.privacy_audit')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture
def sealed(monkeypatch, tmp_path):
    """Fail on any socket, ledger, hospital home, child process or file written during the test."""
    from core.home import HospitalHome
    from core.privacy.ledger import PrivacyLedger

    def refuse(*args, **kwargs):
        raise AssertionError("the audit tried to leave the process or touch hospital state")

    for name in ("connect", "connect_ex", "bind", "sendto", "sendall"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(PrivacyLedger, "__init__", refuse)
    monkeypatch.setattr(HospitalHome, "at", classmethod(lambda cls, *a, **k: refuse()))
    monkeypatch.setattr(subprocess, "Popen", refuse)
    real_open = builtins.open
    written = []

    def watching_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            written.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watching_open)
    home = Path(os.environ["DOPAMINE_HOME"])
    before = sorted(home.rglob("*"))
    yield written
    assert written == []
    assert sorted(home.rglob("*")) == before


@pytest.mark.parametrize("mode", ["cdp", "fscdp"])
def test_an_audit_stays_in_memory(sealed, mode):
    from core.privacy_audit.audit import AuditConfig, run

    result = run(AuditConfig(mode=mode, noise_multiplier=1.0, sample_rate=0.5, steps=2, gradient_canaries=20,
                             input_canaries=10, real_images=4, image_size=16))
    assert len(result.scores["gradient"]["scores"]) == 20 and result.epsilon > 0
