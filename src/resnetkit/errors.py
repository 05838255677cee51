"""Errors that are the user's to fix. The CLI prints them as one line (exit status 2), never a traceback.

Each is also the built-in exception a Python caller expects, so `except ValueError` catches a bad value
(`create_model("resnet_v2_50", output_stride=3)`, as TF-slim raises), `except FileNotFoundError` a
missing file, and `except OSError` a failed download. Messages name the parameter, never a CLI flag.
"""


class UserError(Exception):
    """Base of every resnetkit error a user can fix: the message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A bad value: an unknown name, an impossible option, a number out of range."""


class CheckpointError(UserError, ValueError):
    """A file that is corrupt, foreign, or does not fit the model (keys, shapes, metadata)."""


class DataError(UserError, ValueError):
    """A dataset file that is unreadable or inconsistent (a corrupt image, a mask with unknown classes)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that should exist does not."""


class OutputExistsError(UserError, FileExistsError):
    """An output would replace a file the command did not create (pass overwrite=True), or an input."""


class DownloadError(UserError, OSError):
    """The network could not deliver a file (offline, HTTP error, timeout)."""


class DependencyError(UserError, ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""
