"""Failures a user can fix. Stages print these as one line (no traceback) and exit 2."""


class ConfigError(ValueError):
    """A params.yaml problem; the message names the key, the value and what is allowed."""


class DataError(RuntimeError):
    """A data source or prepared-data problem; the message names the path (and file)."""


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or used."""


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class UnsafeCheckpointError(RuntimeError):
    """A .pt file that holds more than tensors and plain types (it could run code)."""
