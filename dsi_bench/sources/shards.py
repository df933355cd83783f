"""Source ``shards``: WebDataset shard folders written by ``dsi-bench build`` or ``convert``.

A thin plugin over :class:`~dsi_bench.shards.ShardSet` (manifest, cached tar-offset index,
checked reads). Streaming gives each reader whole shards, read front to back through one handle.
Option ``verify`` (default ``True``): serve only shards whose sha256 matches the manifest
(``False`` for data checked already with ``dsi-bench verify``); results record it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ..shifts import Shift, get_shift
from .base import Source

if TYPE_CHECKING:
    from PIL import Image

    from ..shards import SampleEntry

__all__ = ["ShardSource"]


class ShardSource(Source):
    name = "shards"
    root_help = "the shard folder or fsspec URL (file://, s3://, hf://datasets/USER/NAME) holding manifest.json"
    description = "WebDataset shards written by `dsi-bench build` or `convert` (a folder or any fsspec URL)"
    options = ("verify",)

    def __init__(self, root, shift, *, verify: bool = True, **kwargs):
        from ..shards import ShardSet

        # opened once: it also resolves custom ids
        self.store = ShardSet(root, verify=verify) if root is not None else None
        super().__init__(root, shift, **kwargs)
        self.records = self.store.shards(self.shift.id)

    @classmethod
    def available_shifts(cls, root) -> list[str]:
        from ..shards import ShardSet

        return ShardSet(root).shifts

    @classmethod
    def recorded_class_list(cls, root, **options):
        """The classes a build with a custom token bank recorded in the manifest."""
        from ..shards import ShardSet

        return None if root is None else ShardSet(root).class_list

    def resolve_shift(self, shift) -> Shift:
        """An id the folder holds (custom ones too) is taken as it is; the template comes from the plan."""
        if isinstance(shift, str) and "<" not in shift:
            try:
                direct = get_shift(shift)
                if direct.id == shift:
                    return self._held(direct)
            except Exception:  # noqa: BLE001 - a near-miss of a catalog name; maybe a custom id below
                pass
            for s in self.store.plan.get("shifts", []):
                if s.get("id") == shift and s.get("template"):
                    return self._held(get_shift(s["template"]))
        return self._held(get_shift(shift))

    def _held(self, shift: Shift) -> Shift:
        self.store.shards(shift.id)  # fails now (naming what the folder holds) on a shift it does not hold
        return shift

    def entries(self) -> list[SampleEntry]:
        return self.store.entries(self.shift.id)

    def load_image(self, entry, draft=None) -> Image.Image:
        return self.store.load_image(entry, draft)

    def iter_images(self, entries: Sequence, draft=None) -> Iterator:
        """Images in order; each shard is opened once and read front to back (hashed as it is read
        when this process has not verified it yet: a bad shard fails at its end, before its last image)."""
        for shard, run in itertools.groupby(entries, key=lambda e: e.shard):
            *head, tail = run
            with self.store.open_checked(shard) as f:
                for e in head:
                    yield self.store.load_image(e, draft, f=f)
                last = self.store.load_image(tail, draft, f=f)
            yield last  # after the check: callers may stop pulling once they have every image

    def metadata(self, entry) -> dict:
        return self.store.load_metadata(entry)

    def fingerprint(self, entries) -> str:
        return "".join(f"{r['path']}:{r['sha256']}\n" for r in self.records)

    @property
    def data_fingerprint(self) -> str:
        return self.store.fingerprint

    @property
    def checked_reads(self) -> bool:
        """Whether reads are checked against the manifest's sha256 (results record it)."""
        return self.store.verify

    def partition(self, entries, position: int, count: int) -> list[list[int]]:
        """Whole shards: shard ``j`` of the shift goes to reader ``j mod count``."""
        by_shard: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            by_shard.setdefault(e.shard, []).append(i)
        return [by_shard[r["path"]] for j, r in enumerate(self.records)
                if j % count == position and r["path"] in by_shard]
