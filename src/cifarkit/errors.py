"""Our own exception types.

A `CifarkitError` is a mistake the *user* can fix (bad path, bad file, bad config key): the CLI
catches it once and prints it as a single `error:` line. Anything else is a bug in cifarkit and
keeps its traceback.
"""

from __future__ import annotations


class CifarkitError(Exception):
    """A user-fixable problem; the message is one sentence naming the file or key and the fix."""


class DataError(CifarkitError):
    """A dataset file or folder is missing, unreadable, hostile or malformed."""


class ConfigError(CifarkitError):
    """A config file, key or value is wrong."""


class CheckpointError(CifarkitError):
    """A checkpoint or weights file cannot be used."""
