"""``dopamine coordinator serve`` that stops itself (SIGSTOP) once, at one named point, so that the kill -9
matrix can SIGKILL it exactly there (or kill hospitals while it is held there, then SIGCONT it).

Used where no event marks the point from outside: the coordinator between writing a round's signed model
and committing the round (``publish``), and while its evaluation child evaluates a model (``evaluate``).
Only the first start runs through this wrapper; the restart is the plain ``python -m core.cli coordinator
serve``, as the design says.

    python tests/reliability/pausing_serve.py POINT FOLDER [serve options]
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

POINTS = ("publish", "evaluate")
_done = threading.Event()


def _pause(point: str) -> None:
    if _done.is_set():
        return
    _done.set()
    print(f"pausing at {point}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)


def _install(point: str) -> None:
    if point == "publish":
        from core.federation.publisher import ModelPublisher

        original = ModelPublisher.publish

        def publish(self, round, **kwargs):
            sha = original(self, round, **kwargs)
            if round >= 1:  # the signed model and optimizer state are written, the round not yet committed
                _pause(point)
            return sha

        ModelPublisher.publish = publish  # type: ignore[method-assign]
    elif point == "evaluate":
        from core.federation.evaluation import EvaluationProcess

        inside = threading.local()
        evaluate, answer = EvaluationProcess.evaluate, EvaluationProcess._answer

        def wrapped_evaluate(self, weights):
            inside.yes = True
            try:
                return evaluate(self, weights)
            finally:
                inside.yes = False

        def wrapped_answer(self):
            if getattr(inside, "yes", False):  # the weights went to the child: it is evaluating them now
                _pause(point)
            return answer(self)

        EvaluationProcess.evaluate = wrapped_evaluate  # type: ignore[method-assign]
        EvaluationProcess._answer = wrapped_answer  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown pause point {point!r}; one of {', '.join(POINTS)}")


def main() -> int:
    point, *rest = sys.argv[1:]
    _install(point)
    from core.cli import main as cli

    return cli(["coordinator", "serve", *rest])


if __name__ == "__main__":
    sys.exit(main())
