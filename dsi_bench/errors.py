"""Typed exceptions. Every message names the bad value and the fix.

All derive from :class:`DsiBenchError` (itself a ``ValueError``), which the CLI turns into
one line on stderr and exit code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CacheError",
    "ClassSpecError",
    "DsiBenchError",
    "LockError",
    "MaskError",
    "ModelLoadError",
    "OfflineError",
    "OptionalDependencyError",
    "PredictionsError",
    "ReleaseError",
    "ShardError",
    "ShiftError",
    "SpecError",
    "TokenBankError",
    "close_matches",
]


class DsiBenchError(ValueError):
    """Base class of every error this package raises on bad input or environment."""


class ShiftError(DsiBenchError):
    """Unknown shift name or malformed prompt template."""


class ClassSpecError(DsiBenchError):
    """A class index, name or range that does not exist in the class list."""


class TokenBankError(DsiBenchError):
    """A class-token file that cannot be read, lacks a class, or does not fit the model."""


class SpecError(DsiBenchError):
    """A pipeline/sampler setting or dataset argument out of its allowed values."""


class ModelLoadError(DsiBenchError):
    """A model folder or Hub id that cannot be loaded as a diffusers pipeline."""


class OfflineError(DsiBenchError):
    """Something had to be fetched from the Hub and the Hub is not reachable."""


class CacheError(DsiBenchError):
    """A cache or output folder that cannot be written."""


class LockError(CacheError):
    """An output folder or file that another run is writing (its lock names the holder)."""


class OptionalDependencyError(DsiBenchError, ImportError):
    """An optional extra (timm, ray, matplotlib) is needed and not installed."""


class ShardError(DsiBenchError):
    """A shard folder whose manifest or shards are missing, damaged, or from another plan."""


class ReleaseError(DsiBenchError):
    """An ImageNet* release folder or zip with missing, extra or unreadable files."""


class PredictionsError(DsiBenchError):
    """A predictions file with unknown, duplicate or missing keys, or unreadable rows."""


class MaskError(DsiBenchError):
    """A mask file that cannot be read safely or does not fit the samples it filters."""


def close_matches(word: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """Format "did you mean" text for an error message ('' when nothing is close)."""
    matches = difflib.get_close_matches(word, list(candidates), n=n, cutoff=cutoff)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
