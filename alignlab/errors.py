"""Errors that reach the user as one sentence (alignlab.run prints them without a traceback)."""


class AlignlabError(Exception):
    """Base class: the message is a complete sentence that says what to change."""


class ConfigError(AlignlabError, ValueError):
    """A config value is invalid; the message names the key."""


class WeightsNotFoundError(AlignlabError, OSError):
    """Model weights could not be found locally or downloaded."""
