"""Deprecated names: they keep working for one release (removed in 0.3) with a ``DeprecationWarning``.

The package's vocabulary (README, "One vocabulary") has one name per concept; this module is
the only place that knows the old ones.
"""

from __future__ import annotations

import warnings

__all__ = ["deprecated", "renamed"]


def deprecated(message: str, stacklevel: int = 3) -> None:
    """Warn that something is deprecated (``message`` says what to use instead)."""
    warnings.warn(f"{message} (deprecated in dsi-bench 0.2, removed in 0.3)", DeprecationWarning,
                  stacklevel=stacklevel)


def renamed(kwargs: dict, old: str, new: str, current, *, default=None, where: str = "") -> object:
    """Take a renamed keyword out of ``kwargs``: the value of ``new`` (``current``) or, with a
    warning, the one given under ``old``. Giving both with different values is an error.

    Raises:
        TypeError: both names given.
    """
    if old not in kwargs:
        return current
    value = kwargs.pop(old)
    if current is not default and current != value:
        raise TypeError(f"{where}got both {new}= and its deprecated name {old}=; pass only {new}=")
    deprecated(f"{where}{old}= is now {new}=", stacklevel=4)
    return value


def reject_unknown(kwargs: dict, where: str) -> None:
    """Raise ``TypeError`` for keywords left after the renamed ones were taken out."""
    if kwargs:
        names = ", ".join(sorted(kwargs))
        raise TypeError(f"{where}() got unexpected keyword argument(s): {names}")
