"""Errors that reach the user as one sentence (alignlab.run prints them without a traceback)."""


class AlignlabError(Exception):
    """Base class: the message is a complete sentence that says what to change."""


class ConfigError(AlignlabError, ValueError):
    """A config value is invalid; the message names the key."""


def require_at_least_one(group: str, **values: int) -> None:
    """The one check of count-like settings: each must be >= 1, or one sentence names the first that is not."""
    for key, value in values.items():
        if value < 1:
            raise ConfigError(f"{group}.{key} must be >= 1, got {value}")


def require_positive(group: str, **values: float) -> None:
    """The one check of scale-like settings (clip ranges, norms): each must be > 0."""
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"{group}.{key} must be > 0, got {value}")


class WeightsNotFoundError(AlignlabError, OSError):
    """Model weights could not be found locally or downloaded."""
