"""Source ``imagenet-star``: the public ImageNet* release read in place (zips or folders).

A plugin over :class:`~dsi_bench.release.ReleaseSet`. ``masks=True`` means the release's own CLIP
masks (fetched from the code release); a path reads them from a local ``masks.npy`` / ``.npz``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Source

if TYPE_CHECKING:
    from PIL import Image

    from ..masks import Masks
    from ..release import ReleaseEntry

__all__ = ["ReleaseSource"]


class ReleaseSource(Source):
    name = "imagenet-star"
    root_help = "the ImageNet* release: a folder of {shift}.zip or shift folders, or one shift zip"
    description = "the public ImageNet* release (madrylab/imagenet-star), zips or unpacked folders"
    options = ("missing",)

    def __init__(self, root, shift, *, missing: str = "error", **kwargs):
        super().__init__(root, shift, **kwargs)
        from ..release import ReleaseSet

        self.store = ReleaseSet(root, self.shift.id, self.class_list, self.classes, missing)

    @classmethod
    def available_shifts(cls, root) -> list[str]:
        from ..release import release_shifts

        return release_shifts(root)

    def resolve_masks(self, masks) -> Masks | None:
        from ..masks import resolve_masks

        return resolve_masks(masks)  # True: the release's masks, fetched

    def entries(self) -> list[ReleaseEntry]:
        return self.store.entries

    def load_image(self, entry, draft=None) -> Image.Image:
        return self.store.load_image(entry, draft)

    def metadata(self, entry) -> dict:
        return self.store.metadata(entry, self.masks)

    def fingerprint(self, entries) -> str:
        return "".join(f"{e.release_key}\0{e.size}\n" for e in self.store.entries)
