"""``ConfigError``, a setting the user can fix, and the tests the start-up checks
(``config_checks``, ``learning_checks``) are written with: each failed test is one sentence that
says what is wrong, the value seen and what to do."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting the user can fix; the message says how."""


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
