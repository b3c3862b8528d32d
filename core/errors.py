"""The one error hierarchy. Every message is for a user: what happened and what to do.

Every error Dopamine raises on purpose is defined here, so that it keeps its class when it crosses a
process boundary (the app's background jobs run in a child process): ``to_wire`` and ``from_wire``
carry the class name, the message and the extra fields a class lists in ``carried``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DopamineError(Exception):
    """Base class of every error Dopamine raises on purpose.

    The message is one line a hospital's staff member can act on. The CLI prints it
    without a traceback; the GUI shows it in a dialog.
    """

    carried: ClassVar[tuple[str, ...]] = ()  # attributes that travel with the message

    def to_wire(self) -> dict[str, Any]:
        return {"error_type": type(self).__name__, "message": str(self),
                "fields": {name: getattr(self, name) for name in self.carried}}

    @staticmethod
    def from_wire(data: dict[str, Any]) -> DopamineError | None:
        """The error ``to_wire`` described, of the same class (None when the class is not one of ours)."""
        cls = error_classes().get(str(data.get("error_type", "")))
        if cls is None:
            return None
        error = cls.__new__(cls)
        Exception.__init__(error, str(data.get("message", "")))
        fields = data.get("fields") or {}
        for name in cls.carried:
            setattr(error, name, fields.get(name))
        return error


def error_classes() -> dict[str, type[DopamineError]]:
    """Every DopamineError class, by name."""
    found: dict[str, type[DopamineError]] = {}
    pending: list[type[DopamineError]] = [DopamineError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


class Cancelled(DopamineError):
    """A long job was cancelled by its caller. Treated as a normal end, not a failure."""

    def __init__(self, message: str = "Cancelled.") -> None:
        super().__init__(message)


class ConfigError(DopamineError):
    """A configuration value or combination of values is invalid."""


class DeviceUnavailable(ConfigError):
    """The compute device asked for (``cuda``) is not there; ``auto`` or ``cpu`` works everywhere."""


class DataError(DopamineError):
    """A dataset, image, CSV or DICOM file cannot be used."""


# Kinds of decoding failure, as reported by validation.
UNREADABLE = "unreadable"
TRUNCATED = "truncated"
NOT_IMAGE = "not_image"


class ImageReadError(DataError):
    """An image file could not be decoded; ``kind`` says why (unreadable, truncated or not_image)."""

    carried = ("kind",)

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ModelError(DopamineError):
    """An unknown architecture or weights that do not fit it."""


class ModelPackageError(DopamineError):
    """A .dpm model package is malformed or cannot be read."""


class SignatureError(ModelPackageError):
    """A signature does not verify: the file was changed or signed by someone else."""


class PrivacyError(DopamineError):
    """Invalid privacy parameters (for example delta >= 1/N)."""


class PrivacyBudgetExceeded(PrivacyError):
    """The work would take the hospital past its privacy cap. Nothing was run."""


class LedgerError(PrivacyError):
    """The privacy ledger is unreadable or inconsistent."""


class ReleaseRefused(PrivacyError):
    """This computation was already charged and run once; running it again would release new noise for free."""


class AuditLogError(DopamineError):
    """The hospital's audit log is missing, damaged or cannot be written."""


class SecAggError(DopamineError):
    """A secure-aggregation message or request was refused."""


class SecAggAborted(SecAggError):
    """A secure-aggregation round ended without revealing anything (too few survivors)."""


class FederationError(DopamineError):
    """A federation plan, invitation or protocol step failed."""


class NetworkError(FederationError):
    """The coordinator could not be reached or refused the connection."""


class RequestFailure(FederationError):
    """A final (4xx) answer from the coordinator; ``detail`` is its one-line reason."""

    carried: ClassVar[tuple[str, ...]] = ("status", "detail", "code")

    def __init__(self, status: int, detail: str, code: str = "") -> None:
        super().__init__(f"The coordinator refused the request ({status}): {detail}")
        self.status = status
        self.detail = detail
        self.code = code


class ClockSkew(RequestFailure):
    """The coordinator refused a signed request as too old or too new: this computer's clock is off.

    ``offset_s``: this computer's clock minus the coordinator's (from its HTTP Date header), or None when
    the coordinator did not say its time.
    """

    carried: ClassVar[tuple[str, ...]] = ("status", "detail", "code", "offset_s")

    def __init__(self, offset_s: float | None, detail: str = "", window_s: float = 300.0) -> None:
        super().__init__(401, detail, "clock")
        self.offset_s = offset_s
        if offset_s is None:
            message = (f"The coordinator refused the request because this computer's clock differs from its own by "
                       f"more than {window_s:.0f} s ({detail}); fix this computer's date and time (turn on automatic "
                       "time / NTP) and try again.")
        else:
            way = "ahead of" if offset_s > 0 else "behind"
            message = (f"This computer's clock is off by about {abs(offset_s):.0f} s ({way} the coordinator's; at most "
                       f"{window_s:.0f} s are accepted): fix this computer's date and time (turn on automatic time / "
                       "NTP) and try again.")
        Exception.__init__(self, message)


class Refused(FederationError):
    """A request the coordinator will not act on; ``status`` is the HTTP status to answer."""

    carried = ("status", "code")

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # machine-readable reason where a client acts on it ("duplicate")


class AuthFailure(FederationError):
    """Why the coordinator refused to authenticate a request; ``status`` is the HTTP status to answer,
    ``code`` a machine-readable reason where the client acts on it ("clock": the timestamp is out of the window)."""

    carried = ("status", "code")

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def message(self) -> str:
        return str(self)


class RoundAborted(FederationError):
    """A round attempt ended without a release (too few hospitals answered); the next attempt follows."""


class StorageError(DopamineError):
    """A file or database could not be written: the disk is full, the folder is read-only, or no permission."""


class InferenceError(DopamineError):
    """A prediction could not be made."""


class KeyFileError(DopamineError):
    """A signing key file is missing, unreadable or not an Ed25519 private key."""
