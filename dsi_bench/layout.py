"""Names on disk that writers and readers share: sample keys, the shard folder layout, the manifest.

Sample keys are ``{shift}/{class:04d}/{index:02d}`` in every source (minimum widths: class 12345
and sample 100 are ``base/12345/100``; :func:`parse_key` reads back exactly what :func:`sample_key`
writes, for any width); a shifted sample's unshifted *twin* is the same key under ``base``. A shard folder is::

    DIR/manifest.json                         plan + one record per shard (sha256, bytes, samples)
    DIR/{shift_id}/{shift_id}-{k:06d}.tar     WebDataset shards

and each sample in a shard is ``{key}.{jpg|png}``, ``{key}.cls`` and ``{key}.json``.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "DATASET_FORMATS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "key_class",
    "key_index",
    "parse_key",
    "plan_digest",
    "sample_key",
    "shard_path",
    "shift_summary",
    "split_member",
    "twin_key",
]

#: Layouts a shard folder can be exported to as a Hugging Face dataset (:mod:`dsi_bench.hub`).
DATASET_FORMATS = ("webdataset", "parquet")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dsi-bench/shards"
MANIFEST_VERSION = 1


def sample_key(shift_id: str, class_index: int, index: int) -> str:
    """The stable key of a sample: ``{shift_id}/{class_index:04d}/{index:02d}``."""
    return f"{shift_id}/{class_index:04d}/{index:02d}"


_KEY = re.compile(r"([^/]+)/(\d{4,})/(\d{2,})")


def parse_key(key: str) -> tuple[str, int, int] | None:
    """``(shift_id, class_index, index)`` of a key exactly as :func:`sample_key` writes it, else ``None``.

    Any width round-trips (``"base/0000/100"`` -> ``("base", 0, 100)``); a key that :func:`sample_key`
    would write otherwise (``"base/0000/007"``, ``"base/7/07"``) is not a sample key.
    """
    m = _KEY.fullmatch(key)
    if m is None:
        return None
    shift_id, class_index, index = m.group(1), int(m.group(2)), int(m.group(3))
    return (shift_id, class_index, index) if sample_key(shift_id, class_index, index) == key else None


def key_class(key: str) -> int:
    """The class index of a sample key: ``"base/0207/03"`` -> ``207``."""
    return int(key.split("/")[1])


def key_index(key: str) -> int:
    """The per-class index of a sample key: ``"base/0207/03"`` -> ``3``."""
    return int(key.rsplit("/", 1)[1])


def twin_key(key: str) -> str:
    """The unshifted twin of a sample: ``in_the_snow/0207/03`` -> ``base/0207/03``."""
    return "base/" + key.split("/", 1)[1]


def plan_digest(plan: dict) -> str:
    """The ``plan_hash`` a manifest records: sha256 of the plan's canonical JSON."""
    from .files import canonical_json

    return hashlib.sha256(canonical_json(plan)).hexdigest()


def shift_summary(records) -> dict[str, dict]:
    """A manifest's per-shift summary of its shard records: ``{shift: {"samples", "shards", "bytes"}}``."""
    shifts: dict[str, dict] = {}
    for r in records:
        s = shifts.setdefault(r["shift"], {"samples": 0, "shards": 0, "bytes": 0})
        s["samples"] += r["samples"]
        s["shards"] += 1
        s["bytes"] += r["bytes"]
    return shifts


def shard_path(shift_id: str, k: int) -> str:
    """Relative path of shard ``k`` of a shift: ``{shift}/{shift}-{k:06d}.tar``."""
    return f"{shift_id}/{shift_id}-{k:06d}.tar"


def split_member(name: str) -> tuple[str, str]:
    """``"base/0001/07.json"`` -> ``("base/0001/07", "json")`` (WebDataset's rule: first dot of the basename)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()
