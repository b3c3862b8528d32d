"""The one error hierarchy. Every message is for a user: what happened and what to do."""


class DopamineError(Exception):
    """Base class of every error Dopamine raises on purpose.

    The message is one line a hospital's staff member can act on. The CLI prints it
    without a traceback; the GUI shows it in a dialog.
    """


class Cancelled(DopamineError):
    """A long job was cancelled by its caller. Treated as a normal end, not a failure."""

    def __init__(self, message: str = "Cancelled.") -> None:
        super().__init__(message)


class ConfigError(DopamineError):
    """A configuration value or combination of values is invalid."""


class DataError(DopamineError):
    """A dataset, image, CSV or DICOM file cannot be used."""


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


class InferenceError(DopamineError):
    """A prediction could not be made."""


class KeyFileError(DopamineError):
    """A signing key file is missing, unreadable or not an Ed25519 private key."""
