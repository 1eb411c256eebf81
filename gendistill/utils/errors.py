"""User-facing errors.

Every error a user can cause (bad config, missing data, corrupt file, NaN loss, an image size a network
cannot take) is raised as a :class:`GendistillError` whose message is one line saying what to do. The CLI
prints that line and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class GendistillError(Exception):
    """An error caused by the user's input, with a one-line message that says how to fix it."""


class ConfigError(GendistillError):
    """Unknown config key, wrong type or out-of-range value."""


class DatasetNotFoundError(GendistillError):
    """The dataset files are not where they were looked for."""


class SynsetFormatError(GendistillError):
    """A synthetic-set folder or legacy file is missing, truncated or inconsistent."""


class CheckpointError(GendistillError):
    """A checkpoint cannot be read or does not belong to this run."""


class NetworkInputError(GendistillError):
    """A network cannot take the requested image size or channel count."""


class NonFiniteLossError(GendistillError):
    """A loss became NaN or infinite during training."""


class PluginError(GendistillError):
    """A declared method module cannot be imported, or its declaration is inconsistent."""
