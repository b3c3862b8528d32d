"""The coordinator's evaluation of each global model on its own labelled held-out images
(coordinator.toml's eval_data).

Evaluating needs torch, which the coordinator's serving process does not import (it would carry about
250 MB for it in every round). ``EvaluationProcess`` runs the evaluation in one child process,
``dopamine coordinator evaluator DIR``: started with the coordinator (which waits until it has decoded
the images, so a folder without usable images stops the start with its reason, as before), sent the
weights whenever an evaluation is due, ended with the coordinator. ``Evaluation`` is what the child runs.

Between them: the parent writes a frame, 8 bytes of length (little-endian) then the float32 parameters
as safetensors; the child answers each frame with one JSON line, {"metrics": {...}} or {"error": "..."},
after a first line {"ready": <images>} (or {"error": "..."} when it cannot evaluate at all).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.errors import DopamineError, FederationError
from core.federation.layout import CoordinatorSettings, FederationPaths, load_settings
from core.federation.plan import FederationPlan, load_plan
from core.federation.weights import ParameterLayout, arrays_to_bytes

log = logging.getLogger("dopamine.coordinator")

MAX_FRAME_BYTES = 1 << 30


class Evaluation:
    """The coordinator's own labelled held-out images, decoded once (in the evaluation process)."""

    def __init__(self, settings: CoordinatorSettings, plan: FederationPlan, cache_dir: Path) -> None:
        from core.data import Preprocessing, validate
        from core.data.cache import load_images
        from core.inference.input_check import reference_statistics

        assert settings.eval_data is not None  # the coordinator evaluates only when eval_data is set
        report = validate(Path(settings.eval_data), min_size=16)
        samples = [s for s in report.usable_samples if s.label is not None]
        if not samples:
            raise FederationError(f"The evaluation folder {settings.eval_data} has no usable labelled images.")
        self.spec = Preprocessing(size=plan.image_size)
        self.images, self.labels = load_images(samples, self.spec, cache_dir=cache_dir)
        self.num_classes = len(plan.classes)
        self.classes = list(plan.classes)
        # Published in every evaluated card, so a hospital can tell how the test images look and whose they are.
        self.reference = reference_statistics(self.images, report.make_up)
        self.described = f"the coordinator's own held-out images in folder {Path(settings.eval_data).name}"
        log.info("evaluation set: %d images from %s", len(samples), settings.eval_data)

    def evaluate(self, model) -> dict:
        from core.inference.assessment import held_out_evaluation
        from core.training.loop import evaluate_model

        metrics = evaluate_model(model, self.images, self.labels, self.spec, num_classes=self.num_classes)
        # Accuracy, kappa and recall per class, the majority baseline, the test set's size and holder, and
        # that these figures (a release about the held-out images) are not covered by epsilon.
        return held_out_evaluation(metrics, self.labels.tolist(), self.classes, described=self.described,
                                   held_by="the coordinator", reference=self.reference)


class EvaluationProcess:
    """The serving process's handle on its evaluation child (one request at a time: the advancing thread)."""

    def __init__(self, folder: Path, settings: CoordinatorSettings, plan: FederationPlan,
                 layout: ParameterLayout) -> None:
        self.folder = Path(folder).resolve()
        self.every = settings.eval_every
        self.last_round = plan.rounds
        self.layout = layout
        self._process: subprocess.Popen | None = None
        self._start()

    def due(self, round: int) -> bool:
        return round % self.every == 0 or round == self.last_round

    def _start(self) -> None:
        # `-m core.cli` also works in the frozen app (launcher.MODULE_ALIASES).
        argv = [sys.executable, "-m", "core.cli", "coordinator", "evaluator", str(self.folder)]
        self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ready = self._answer()
        if "ready" not in ready:
            self.close()
            raise FederationError(str(ready.get("error") or "The coordinator's evaluation could not start."))

    def _answer(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None  # started with pipes
        line = self._process.stdout.readline()
        if not line:
            raise FederationError("The coordinator's evaluation process ended unexpectedly; see coordinator.log.")
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise FederationError("The coordinator's evaluation process answered garbage.") from exc
        if not isinstance(answer, dict):
            raise FederationError("The coordinator's evaluation process answered garbage.")
        return answer

    def evaluate(self, weights: np.ndarray) -> dict:
        """The held-out metrics of the model with these (flat) weights."""
        payload = arrays_to_bytes(self.layout.unflatten_arrays(weights))
        try:
            answer = self._ask(payload)
        except (OSError, FederationError) as first:  # the child died (killed, out of memory): one fresh try
            log.warning("evaluation process failed (%s); starting a new one", first)
            self.close()
            self._start()
            answer = self._ask(payload)
        if "metrics" not in answer:
            raise FederationError(f"Evaluating the global model failed: {answer.get('error', 'no answer')}")
        return answer["metrics"]

    def _ask(self, payload: bytes) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdin is not None  # started with pipes
        process.stdin.write(len(payload).to_bytes(8, "little") + payload)
        process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()  # the child's read ends: it exits
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def serve(folder: Path, source: IO[bytes] | None = None, sink: IO[bytes] | None = None) -> int:
    """The evaluation child: answer every frame on ``source`` (stdin) on ``sink`` (stdout) until it closes."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from core.models.registry import build_model, load_weights

    source = source or sys.stdin.buffer
    sink = sink or sys.stdout.buffer

    def send(message: dict) -> None:
        sink.write((json.dumps(message) + "\n").encode())
        sink.flush()

    paths = FederationPaths(Path(folder))
    try:
        plan = load_plan(paths.plan)
        evaluation = Evaluation(load_settings(paths), plan, paths.root / "cache")
        model = build_model(plan.model, len(plan.classes))
    except DopamineError as exc:
        send({"error": str(exc)})
        return 1
    send({"ready": len(evaluation.labels)})
    while True:
        header = source.read(8)
        if len(header) < 8:
            return 0  # the coordinator closed the pipe: it stopped
        size = int.from_bytes(header, "little")
        data = source.read(size) if size <= MAX_FRAME_BYTES else b""
        if len(data) != size:
            send({"error": "a weights frame was cut short"})
            return 1
        try:
            load_weights(model, load(data), source="the global model to evaluate")
            send({"metrics": evaluation.evaluate(model)})
        except (DopamineError, SafetensorError, ValueError, RuntimeError) as exc:
            send({"error": str(exc)})
