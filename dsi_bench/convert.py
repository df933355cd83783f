"""Converting the ImageNet* release into dsi-bench shards (original JPEG bytes, masks as keep flags)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .build import ShardJob, ShardTask
from .classes import ClassList
from .errors import ReleaseError
from .files import canonical_json
from .masks import Masks
from .release import ReleaseSet, release_shifts

if TYPE_CHECKING:
    from .build import BuildSummary

__all__ = ["ReleaseJob", "convert_release"]


class ReleaseJob(ShardJob):
    """Converts release shifts to shards: original JPEG bytes, masks recorded as ``keep`` in ``.json``.

    Every image is checked as ``verify`` checks it (it decodes, as the JPEG its name says, within the
    pixel limit) before it is written: a file that would fail ``verify`` stops the conversion, named.
    """

    verb = "convert"

    def __init__(self, sets: list[ReleaseSet], masks: Masks | None, masks_sha256: str | None,
                 samples_per_shard: int):
        import hashlib

        self.sets = {s.shift_id: s for s in sets}
        self.masks = masks
        self.samples_per_shard = samples_per_shard
        listing = hashlib.sha256()
        for s in sets:
            for e in s.entries:
                listing.update(f"{e.release_key}\0{e.size}\n".encode())
        self.plan = {
            "kind": "imagenet-star",
            "shifts": [{"id": s.shift_id} for s in sets],
            "classes": sorted({e.label for s in sets for e in s.entries}),
            "files_sha256": listing.hexdigest(),
            "missing": {s.shift_id: {str(c): f for c, f in sorted(s.missing.items())} for s in sets if s.missing},
            "masks_sha256": masks_sha256,
            "samples_per_shard": samples_per_shard,
            "image_format": "jpg",
        }

    def tasks(self) -> list[ShardTask]:
        out = []
        for shift_id, s in self.sets.items():
            n = self.samples_per_shard
            for k in range(0, len(s.entries), n):
                out.append(ShardTask(shift_id, k // n, tuple(s.entries[k : k + n])))
        return out

    def wants_gpu(self) -> bool:
        return False

    def samples(self, task: ShardTask) -> Iterator[dict]:
        s = self.sets[task.shift]
        for e in task.items:
            yield {
                "__key__": e.key,
                "jpg": s.checked_bytes(e),
                "cls": str(e.label).encode(),
                "json": canonical_json(s.metadata(e, self.masks)),
            }


def convert_release(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shifts: Sequence[str] | None = None,
    masks: str | os.PathLike | Masks | bool | None = None,
    class_list: ClassList | None = None,
    classes=None,
    missing: str = "error",
    samples_per_shard: int = 1000,
    engine: str = "local",
    overwrite: bool = False,
    progress: bool = True,
) -> BuildSummary:
    """Turn the ImageNet* release into dsi-bench shards (same layout and manifest as a build).

    Masked-out samples are kept, flagged ``"keep": false`` in their ``.json``, so readers can
    take either view (``ShiftedImageNet(source="shards", masks=True)`` applies the flags).

    Returns:
        a :class:`~dsi_bench.build.BuildSummary`.
    """
    from .build import run_job
    from .classes import imagenet_classes
    from .files import sha256_file
    from .masks import resolve_masks
    from .shifts import get_shift
    from .validate import check_positive_int

    check_positive_int(samples_per_shard, "samples_per_shard", example=1000)
    class_list = class_list or imagenet_classes()
    indices = None if classes is None else class_list.resolve(classes)
    ids = [get_shift(s).id for s in shifts] if shifts else release_shifts(root)
    if not ids:
        raise ReleaseError(f"no shifts found under {str(root)!r}; expected files like in_the_snow.zip")
    mask_obj = resolve_masks(masks)
    mask_sha = None
    if mask_obj is not None:
        for s in ids:
            mask_obj.check_shift(s)
        mask_sha = sha256_file(mask_obj.source) if mask_obj.source and Path(mask_obj.source).is_file() else None
    sets = [ReleaseSet(root, s, class_list, indices, missing) for s in ids]
    job = ReleaseJob(sets, mask_obj, mask_sha, samples_per_shard)
    return run_job(job, out, engine=engine, overwrite=overwrite, progress=progress)
