"""One error hierarchy: every error Dopamine raises on purpose is defined in core/errors.py and keeps its
class, message and fields across the child process the app runs its jobs in."""

import importlib
import json
import pkgutil

import core
from core import errors


def _import_all_of_core() -> None:
    for module in pkgutil.walk_packages(core.__path__, "core."):
        if module.name.endswith("__main__"):
            continue
        importlib.import_module(module.name)


def test_every_dopamine_error_lives_in_core_errors():
    _import_all_of_core()
    classes = errors.error_classes()
    assert {"RequestFailure", "Refused", "AuthFailure", "ImageReadError", "RoundAborted"} <= set(classes)
    outside = sorted(f"{c.__module__}.{c.__name__}" for c in classes.values() if c.__module__ != "core.errors")
    assert outside == []


def test_every_error_crosses_a_process_boundary_by_class():
    for name, cls in errors.error_classes().items():
        fields = {field: f"{field}-value" for field in cls.carried}
        wire = {"error_type": name, "message": f"what {name} says", "fields": fields}
        original = errors.DopamineError.from_wire(wire)
        assert type(original) is cls
        line = json.loads(json.dumps({"type": "error", **original.to_wire()}))  # what the child writes
        again = errors.DopamineError.from_wire(line)
        assert type(again) is cls and str(again) == f"what {name} says"
        assert {f: getattr(again, f) for f in cls.carried} == fields


def test_a_coordinator_refusal_during_a_join_reaches_the_app_as_itself():
    from gui.child_jobs import _raise_error

    refusal = errors.RequestFailure(409, "The federation has already started", "closed")
    try:
        _raise_error({"type": "error", **refusal.to_wire()})
    except errors.RequestFailure as exc:
        assert (exc.status, exc.detail, exc.code) == (409, "The federation has already started", "closed")
        assert "already started" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("not raised")
    assert errors.DopamineError.from_wire({"error_type": "ZeroDivisionError", "message": "x"}) is None
