"""The error types user-facing failures raise.

The CLI prints an `LmforgeError` as one line (`error: …`) and exits non-zero, never a traceback.
Messages name the culprit (file, key, value) and say what to do.
"""


class LmforgeError(Exception):
    """A user-facing error: bad input, missing file, unsupported option."""


class ConfigError(LmforgeError, ValueError):
    """A configuration value is missing, unknown or inconsistent."""
