"""Worker job of the Compare modes page: core.compare.run in a child process (gui.child_jobs' "compare").

The comparison trains on the hospital's own images on this computer only: nothing is sent and no privacy
budget is spent. Its folder is named after its settings, so running the same settings again resumes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gui.child_jobs import run_child


def comparison_folder(root: Path, config: dict[str, Any]) -> Path:
    """HOME/comparisons/<settings hash>: the same settings resume the same comparison."""
    from core.compare.config import CompareConfig

    fingerprint = CompareConfig(**{**config, "out": root}).fingerprint()
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / digest


def run_compare(config: dict[str, Any], *, progress, cancel) -> dict[str, Any]:
    """``config``: CompareConfig fields (paths as text). Returns the results and the report's paths."""
    return run_child("compare", {"config": config}, progress=progress, cancel=cancel)
