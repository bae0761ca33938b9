"""Exceptions raised by lfopt.

Every error that a user can cause derives from :class:`LfoptError` so that
callers (and the CLI) can report it cleanly instead of showing a traceback.
"""


class LfoptError(Exception):
    """Base class of every error lfopt raises for bad input or bad usage."""


class DataError(LfoptError, ValueError):
    """Input data is malformed: bad file, bad line, bad value, duplicates..."""


class ConfigError(LfoptError, ValueError):
    """A hyper-parameter or option has an invalid value."""


class ModelFileError(LfoptError, ValueError):
    """A file is not a model saved by lfopt, or is damaged."""


class DivergenceError(LfoptError, RuntimeError):
    """Training diverged (NaN/inf or exploding loss)."""
