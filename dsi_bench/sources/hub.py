"""Source ``hub``: a set published with ``dsi-bench publish``, read back through ``datasets``.

The root is a Hub dataset id (``USER/NAME``) or a local export folder; each shift is one
configuration of split ``test``. Columns follow the export format: WebDataset members
(``png``/``jpg``, ``cls``, ``json``, ``__key__``) or Parquet (``image``, ``label``, ``key``,
``metadata``). The data fingerprint is the published manifest's, equal to the shard folder's.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OfflineError, ShardError
from ..shifts import TOKEN, Shift, get_shift
from .base import FLAGS, Source

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["SPLIT", "HubEntry", "HubSet", "HubSource"]

SPLIT = "test"
_CUSTOM_ID = re.compile(r"[a-z0-9_]+-[0-9a-f]{8}")


def _offline_message(root: str, reason: str) -> str:
    return (f"cannot load the published set {root!r} ({reason}); download it where you are online "
            f"(hf download --repo-type dataset {root} --local-dir DIR) and pass the folder as the root (--root DIR)")


def _check_reachable(root: str) -> None:
    """A Hub id while the Hub is out of reach: one line at once (a cached copy still loads with HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    from ..online import hub_unreachable

    if Path(root).is_dir() or constants.HF_HUB_OFFLINE:  # datasets reads its cache in offline mode, without retries
        return
    reason = hub_unreachable()
    if reason is not None:
        raise OfflineError(_offline_message(root, reason))


@dataclass(frozen=True)
class HubEntry:
    key: str
    label: int
    keep: bool | None
    row: int


def published_manifest(root) -> dict | None:
    """The ``manifest.json`` a published set carries (a local export or a Hub dataset); ``None`` if none."""
    local = Path(str(root)).is_dir()
    if not local:
        _check_reachable(str(root))  # out of reach: one line now, not retries for half a minute
    try:
        if local:
            path = Path(str(root)) / "manifest.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(str(root), "manifest.json", repo_type="dataset"))
        return json.loads(path.read_text())
    except Exception:  # noqa: BLE001 - no manifest published (the set itself is checked when it is opened)
        return None


class HubSet:
    """One shift of a published set (a Hub repo id or a local export), through ``datasets``.

    ``entries`` are ``(key, label)`` rows; images decode on access.
    """

    def __init__(self, root, shift_id: str, *, revision: str | None = None, streaming: bool = False):
        import datasets

        self.root = str(root)
        self.shift_id = shift_id
        kwargs = {}
        _check_reachable(self.root)
        if Path(self.root).is_dir() and self.fingerprint:
            # datasets keys its cache of a local folder by the folder's name, not its content: key it by
            # the manifest instead, so a re-export into the same folder is never served stale
            from ..files import default_cache_dir

            kwargs["cache_dir"] = str(default_cache_dir() / "hub-datasets" / self.fingerprint[:16])
        try:
            self.ds = datasets.load_dataset(self.root, name=shift_id, split=SPLIT, revision=revision,
                                            streaming=streaming, **kwargs)
        except ValueError as e:
            raise ShardError(f"{self.root!r} has no configuration {shift_id!r} ({str(e).splitlines()[0][:200]})") \
                from e
        except (FileNotFoundError, ConnectionError) as e:
            raise OfflineError(_offline_message(self.root, type(e).__name__)) from e
        cols = set(self.ds.column_names or [])
        self.image_col = next((c for c in ("image", "png", "jpg", "jpeg", "webp") if c in cols), None)
        self.label_col = "label" if "label" in cols else "cls"
        self.key_col = "key" if "key" in cols else "__key__"
        self.meta_col = "metadata" if "metadata" in cols else "json"
        if self.image_col is None or self.label_col not in cols:
            raise ShardError(f"{self.root!r} config {shift_id!r} has no image or label column "
                             f"(columns: {sorted(cols)})")

    @functools.cached_property
    def fingerprint(self) -> str | None:
        """The published manifest's fingerprint (equal to the source shard folder's), if it has one."""
        import hashlib

        manifest = published_manifest(self.root)
        if manifest is None:
            return None
        return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

    def entries(self, with_flags: bool = False) -> list[HubEntry]:
        """Every row as ``(key, label, keep flag, row)``; flags read from the metadata only when asked."""
        cols = [self.key_col, self.label_col] + ([self.meta_col] if with_flags else [])
        table = self.ds.select_columns(cols)
        keys, labels = table[self.key_col], table[self.label_col]
        flags = [None] * len(keys)
        if with_flags:
            metas = table[self.meta_col]
            flags = [(json.loads(m) if isinstance(m, str) else (m or {})).get("keep") for m in metas]
        return [HubEntry(k, int(y), f, i) for i, (k, y, f) in enumerate(zip(keys, labels, flags))]

    def load_image(self, row: int) -> Image.Image:
        from ..images import to_rgb

        return to_rgb(self.ds[row][self.image_col])

    def metadata(self, row: int) -> dict:
        meta = self.ds[row][self.meta_col]
        return json.loads(meta) if isinstance(meta, str) else dict(meta or {})


class HubSource(Source):
    name = "hub"
    root_help = "a Hub dataset id (USER/NAME) published with `dsi-bench publish`, or a local export folder"
    description = "a set published with `dsi-bench publish` (a Hub dataset id or a local export)"

    def __init__(self, root, shift, **kwargs):
        super().__init__(root, shift, **kwargs)
        self.store = HubSet(root, self.shift.id)

    @classmethod
    def recorded_class_list(cls, root, **options):
        """The classes the published manifest records (a build with a custom token bank)."""
        from ..classes import ClassList

        manifest = published_manifest(root) if root is not None else None
        data = (manifest or {}).get("plan", {}).get("class_list")
        return None if data is None else ClassList.from_dict(data)

    @classmethod
    def available_shifts(cls, root) -> list[str]:
        import datasets

        _check_reachable(str(root))
        try:
            return list(datasets.get_dataset_config_names(str(root)))
        except (FileNotFoundError, ConnectionError) as e:
            raise OfflineError(_offline_message(str(root), type(e).__name__)) from e

    def resolve_shift(self, shift) -> Shift:
        if isinstance(shift, str) and _CUSTOM_ID.fullmatch(shift):
            # a custom shift's id, as published: the template is in the samples' metadata
            return Shift(shift, shift, TOKEN, "custom", source="custom")
        return get_shift(shift)

    def entries(self) -> list[HubEntry]:
        return self.store.entries(with_flags=self.masks is FLAGS)

    def load_image(self, entry, draft=None):
        return self.store.load_image(entry.row)

    def metadata(self, entry) -> dict:
        return self.store.metadata(entry.row)

    def fingerprint(self, entries) -> str:
        return f"{self.store.fingerprint}\n" + "".join(f"{e.key}:{e.label}\n" for e in entries)

    @property
    def data_fingerprint(self) -> str | None:
        return self.store.fingerprint
