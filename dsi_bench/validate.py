"""Argument checks shared by the whole package: one wording for every message, one rule for bools.

``True`` is an ``int`` in Python; none of these checks accept it as a number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from .errors import SpecError, close_matches

__all__ = ["MAX_PER_CLASS", "MAX_SAMPLES", "check_choice", "check_finite_float", "check_int_range",
           "check_non_negative_int", "check_positive_int", "check_sample_counts", "is_int"]


#: The most samples per class that ``generate`` and ``build`` make (keys number them from 0).
MAX_PER_CLASS = 10**6
#: The most samples one ``generate``/``build`` run plans (shifts x classes x per class): the plan
#: holds one request per sample in memory (about 150 bytes each).
MAX_SAMPLES = 10**7


def is_int(value) -> bool:
    """Whether ``value`` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(value, name: str, *, example: int | None = None, optional: bool = False,
                       error: type[Exception] = SpecError) -> int | None:
    """``value`` if it is an int > 0 (or ``None`` when ``optional``).

    Raises:
        SpecError (or ``error``): ``"{name}={value!r} must be a positive integer"``, with an example.
    """
    if optional and value is None:
        return None
    if not is_int(value) or value <= 0:
        tail = " (or None for the default)" if optional else (f", e.g. {example}" if example is not None else "")
        raise error(f"{name}={value!r} must be a positive integer{tail}")
    return value


def check_non_negative_int(value, name: str, *, error: type[Exception] = SpecError) -> int:
    """``value`` if it is an int >= 0.

    Raises:
        SpecError (or ``error``): naming the value.
    """
    if not is_int(value) or value < 0:
        raise error(f"{name}={value!r} must be a non-negative integer")
    return value


def check_int_range(value, name: str, low: int, high: int, *, example: int | None = None,
                    error: type[Exception] = SpecError) -> int:
    """``value`` if it is an int within ``low..high``.

    Raises:
        SpecError (or ``error``): naming the value and the range.
    """
    if not is_int(value) or not low <= value <= high:
        tail = f", e.g. {example}" if example is not None else ""
        raise error(f"{name}={value!r} must be within {low}..{high}{tail}")
    return value


def check_choice(value, name: str, choices: Iterable[str], *, error: type[Exception] = SpecError) -> str:
    """``value`` if it is one of ``choices``.

    Raises:
        SpecError (or ``error``): naming the value, the choices and close matches.
    """
    choices = list(choices)
    if value not in choices:
        raise error(f"unknown {name} {value!r}; use one of: {', '.join(choices)}."
                    + close_matches(str(value), choices))
    return value


def check_finite_float(value, name: str, *, low: float | None = None, above: float | None = None,
                       example: float | None = None, optional: bool = False,
                       error: type[Exception] = SpecError) -> float | None:
    """``value`` as a float if it is a finite real number (not NaN, not ±inf) within the bounds
    (or ``None`` when ``optional``): ``low`` is an inclusive lower bound, ``above`` an exclusive one.

    Raises:
        SpecError (or ``error``): ``"{name}={value!r} must be a finite number >= low"``, with an example.
    """
    if optional and value is None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (low is not None and value < low) or (above is not None and value <= above):
        bounds = "".join(f" {op} {bound:g}" for op, bound in ((">=", low), (">", above)) if bound is not None)
        tail = f", e.g. {example:g}" if example is not None else ""
        raise error(f"{name}={value!r} must be a finite number{bounds}{tail}")
    return float(value)


def check_sample_counts(per_class, classes: int, shifts: int) -> int:
    """``per_class`` if it is a positive int within :data:`MAX_PER_CLASS` and the run's total
    (``shifts * classes * per_class``) within :data:`MAX_SAMPLES`; checked before anything is allocated.

    Raises:
        SpecError: naming the count, the limit and the fix.
    """
    check_positive_int(per_class, "per_class", example=50)
    if per_class > MAX_PER_CLASS:
        raise SpecError(f"per_class={per_class} is more than the {MAX_PER_CLASS} samples per class a run can make; "
                        "ask for fewer")
    total = per_class * classes * shifts
    if total > MAX_SAMPLES:
        raise SpecError(f"{shifts} shift(s) x {classes} class(es) x per_class={per_class} = {total} samples is more "
                        f"than the {MAX_SAMPLES} one run can plan; split it into several runs (fewer classes or "
                        "shifts each, into separate output folders)")
    return per_class
