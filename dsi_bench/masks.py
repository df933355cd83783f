"""Keep/drop masks over samples, bound to sample keys, never to positions.

Two forms are read:

* **The ImageNet* release's masks** (``masks.npy`` from the code release, a pickled dict of
  24 arrays of 50,000 entries, or the same data as a plain ``.npz``). Entry ``j`` of a shift's
  array belongs to the ``j``-th file in ``ImageFolder`` order: sorted WordNet folder, then
  sorted file name, which for the complete release is class ``j // 50`` (standard ImageNet
  index), file ``{j % 50:02d}.jpg``. :class:`Masks` binds every entry to that key at load
  time, so a file missing from someone's copy of the release is reported by name and cannot
  shift the later entries.
* **Keyed masks** (what ``dsi-bench clip-filter`` writes): an ``.npz`` with a string array
  ``keys`` (sample keys, ``{shift}/{class:04d}/{index:02d}``) and a bool array ``keep``.

The ``.npy`` pickle is read by a restricted unpickler that only rebuilds numpy arrays and
dtypes; any other object in the file raises :class:`MaskError` without being executed.

Sizes are checked before anything is allocated: every array's ``.npy`` header (the file's own,
or each ``.npz`` member's) is read first; a release array may have at most
:data:`MAX_RELEASE_ENTRIES` (1000 classes x 50 files) entries, and no array may declare more
bytes than its file holds.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path

import numpy as np

from .errors import MaskError, OfflineError
from .layout import sample_key

__all__ = [
    "PUBLISHED_KEPT",
    "resolve_masks",
    "RELEASE_MASKS_URL",
    "RELEASE_PER_CLASS",
    "MAX_RELEASE_ENTRIES",
    "Masks",
    "fetch_release_masks",
    "load_release_masks",
    "release_file_key",
]

logger = logging.getLogger(__name__)

#: Images per class in the ImageNet* release (files ``00.jpg`` ... ``49.jpg``).
RELEASE_PER_CLASS = 50
#: Entries of one shift's release mask at most: 1000 classes x 50 files.
MAX_RELEASE_ENTRIES = 1000 * RELEASE_PER_CLASS

#: Where online users get the release's ``masks.npy`` (the public code release). Override with
#: ``$DSI_BENCH_MASKS_URL``. Offline, pass a local ``masks.npy`` / ``.npz`` path instead.
RELEASE_MASKS_URL = "https://github.com/MadryLab/dataset-interfaces/raw/main/masks.npy"

#: Kept images per shift under the release's CLIP masks (of 50,000 each), as published.
PUBLISHED_KEPT = {
    "base": 46316,
    "in_the_grass": 40141,
    "in_the_beach": 31426,
    "in_the_forest": 33660,
    "in_the_water": 30044,
    "on_the_road": 32243,
    "on_the_rocks": 38282,
    "in_the_snow": 36606,
    "in_the_rain": 24167,
    "in_the_fog": 29672,
    "in_bright_sunlight": 44963,
    "at_night": 30530,
    "at_dusk": 30948,
    "studio_lighting": 33315,
    "blue": 29555,
    "green": 25628,
    "red": 29779,
    "yellow": 21633,
    "orange": 20497,
    "person_and_a": 14959,
    "and_a_flower": 30972,
    "oil_painting": 23373,
    "pencil_sketch": 22312,
    "embroidery": 11032,
}


def release_file_key(shift_id: str, wnid: str, file_index: int) -> str:
    """The release's key of a file: ``{shift}/{wnid}/{NN}.jpg``."""
    return f"{shift_id}/{wnid}/{file_index:02d}.jpg"


# ---------------------------------------------------------------------- safe .npy reading
def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and dtypes, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise MaskError(
                f"mask file contains a pickled {module}.{name}, which is not a numpy array; refusing to load it "
                "(masks hold only arrays: re-save them as .npz with numpy.savez)"
            )
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def _read_header(f, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an open ``.npy`` stream's header (nothing else is read).

    Raises:
        MaskError: not a ``.npy`` header.
    """
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f)
    except ValueError as e:
        raise MaskError(f"{where} is not a .npy array ({e})") from e
    return shape, dtype


def _check_release_array(shape: tuple[int, ...], dtype: np.dtype, where: str, size: int) -> None:
    """Refuse, from its header, a release mask array that is not 1-d, too long, or larger than its file."""
    if len(shape) != 1:
        raise MaskError(f"{where} has shape {shape}, expected one entry per image")
    if shape[0] > MAX_RELEASE_ENTRIES:
        raise MaskError(f"{where} declares {shape[0]} entries of {dtype}; a release mask holds at most "
                        f"{MAX_RELEASE_ENTRIES} flags (1000 classes x {RELEASE_PER_CLASS} files): it is not the "
                        "release's mask file")
    _check_declared_bytes(shape, dtype, where, size)


def _check_declared_bytes(shape: tuple[int, ...], dtype: np.dtype, where: str, size: int) -> None:
    declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if declared > size:
        raise MaskError(f"{where} declares {declared} bytes of data but holds {size}: it is damaged")


def _npz_headers(z, path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """``{name: (shape, dtype, bytes stored)}`` of an open ``.npz``'s arrays, from their headers only."""
    out = {}
    for info in z.zip.infolist():
        name = info.filename.removesuffix(".npy")
        with z.zip.open(info) as f:
            out[name] = (*_read_header(f, f"{name!r} in {str(path)!r}"), info.file_size)
    return out


def _load_npy(path: Path):
    with open(path, "rb") as f:
        shape, dtype = _read_header(f, repr(str(path)))
        if not dtype.hasobject or shape != ():  # the release's file is one pickled dict
            raise MaskError(f"{str(path)!r} holds a {shape} array of {dtype}, expected a dict of per-shift arrays "
                            "(the release's masks.npy, or an .npz)")
        try:
            value = _ArrayUnpickler(io.BytesIO(f.read())).load()
        except MaskError:
            raise
        except Exception as e:  # noqa: BLE001 - any malformed pickle
            raise MaskError(f"{str(path)!r} could not be read as a pickled dict of arrays ({e})") from e
    if isinstance(value, np.ndarray) and value.dtype == object and value.shape == ():
        value = value.item()
    return value


def load_release_masks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The release's masks as ``{shift_id: bool array}``, from ``masks.npy`` or ``.npz``.

    Raises:
        MaskError: unreadable file, unsafe pickle content, or not a dict of 1-d arrays.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MaskError(f"mask file {str(path)!r} does not exist; pass the release's masks.npy or .npz")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                for k, (shape, dtype, size) in _npz_headers(z, path).items():
                    _check_release_array(shape, dtype, f"mask for {k!r} in {str(path)!r}", size)
                value = {k: z[k] for k in z.files}
        except MaskError:
            raise
        except Exception as e:  # noqa: BLE001
            raise MaskError(f"{str(path)!r} could not be read as .npz ({e})") from e
    else:
        value = _load_npy(path)
    if not isinstance(value, dict) or not value:
        raise MaskError(f"{str(path)!r} holds {type(value).__name__}, expected a dict of per-shift arrays")
    out = {}
    for shift, arr in value.items():
        arr = np.asarray(arr)
        _check_release_array(arr.shape, arr.dtype, f"mask for {shift!r} in {str(path)!r}", arr.nbytes)
        out[str(shift)] = arr.astype(bool)
    return out


def fetch_release_masks(url: str | None = None) -> Path:
    """Download the release's ``masks.npy`` into the cache (once) and return its path.

    Raises:
        OfflineError: the URL cannot be reached; the message says how to pass a local file.
    """
    from .files import default_cache_dir

    url = url or os.environ.get("DSI_BENCH_MASKS_URL") or RELEASE_MASKS_URL
    target = default_cache_dir() / "masks" / Path(url).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise OfflineError(f"offline (HF_HUB_OFFLINE=1): cannot fetch the ImageNet* masks from {url}; "
                           "pass masks=PATH (--masks PATH) with a local masks.npy or .npz")
    import torch.hub

    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, timeouts
        raise OfflineError(f"could not fetch the ImageNet* masks from {url} ({e}); "
                           "pass masks=PATH (--masks PATH) with a local masks.npy or .npz") from e
    return target


# ---------------------------------------------------------------------- keyed masks
class Masks:
    """Keep flags bound to sample keys (``{shift}/{class:04d}/{index:02d}``).

    Build with :meth:`from_release` (the release's positional arrays, each entry bound to its
    class and file) or :meth:`from_keyed` / :meth:`load` (any file this package writes).
    :meth:`get` answers ``None`` for a key the masks say nothing about.
    """

    def __init__(self, keyed: dict[str, bool] | None = None, source: str = "",
                 arrays: dict[str, np.ndarray] | None = None, per_class: int = RELEASE_PER_CLASS):
        self._keyed = keyed or {}
        self._arrays = arrays or {}
        self.per_class = per_class
        self.source = source

    def __repr__(self) -> str:
        return f"Masks({len(self)} keys, {self.kept()} kept, source={self.source!r})"

    def __len__(self) -> int:
        return len(self._keyed) + sum(len(a) for a in self._arrays.values())

    def kept(self, shift_id: str | None = None) -> int:
        """Number of kept entries (of one shift, or all)."""
        n = sum(int(a.sum()) for s, a in self._arrays.items() if shift_id in (None, s))
        return n + sum(v for k, v in self._keyed.items() if shift_id is None or k.startswith(shift_id + "/"))

    def get(self, key: str) -> bool | None:
        if key in self._keyed:
            return self._keyed[key]
        shift, _, rest = key.partition("/")
        arr = self._arrays.get(shift)
        if arr is None:
            return None
        try:
            c, i = (int(x) for x in rest.split("/"))
        except ValueError:
            return None
        j = c * self.per_class + i
        return bool(arr[j]) if 0 <= i < self.per_class and 0 <= j < len(arr) else None

    def shifts(self) -> set[str]:
        return set(self._arrays) | {k.split("/", 1)[0] for k in self._keyed}

    @classmethod
    def from_release(cls, arrays: dict[str, np.ndarray], source: str = "", per_class: int = RELEASE_PER_CLASS) -> Masks:
        """Bind the release's arrays to keys: entry ``j`` is class ``j // 50``, file ``j % 50``.

        Raises:
            MaskError: an array whose length is not a whole number of classes.
        """
        for shift, arr in arrays.items():
            if len(arr) % per_class:
                raise MaskError(
                    f"mask for {shift!r} has {len(arr)} entries, not a multiple of {per_class} images per class; "
                    "it does not belong to the ImageNet* release layout"
                )
        return cls(source=source, arrays={s: np.asarray(a, dtype=bool) for s, a in arrays.items()},
                   per_class=per_class)

    @classmethod
    def from_keyed(cls, keys, keep, source: str = "") -> Masks:
        keys = [str(k) for k in keys]
        flags = np.asarray(keep).astype(bool).tolist()
        if len(keys) != len(flags):
            raise MaskError(f"mask file {source!r} has {len(keys)} keys but {len(flags)} keep flags")
        return cls(dict(zip(keys, flags)), source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Masks:
        """Keyed ``.npz`` (``keys`` + ``keep``), or the release's ``masks.npy``/``.npz``."""
        path = Path(path).expanduser()
        if path.suffix == ".npz" and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if "keys" in z.files and "keep" in z.files:
                        for name, (shape, dtype, size) in _npz_headers(z, path).items():
                            _check_declared_bytes(shape, dtype, f"{name!r} in {str(path)!r}", size)
                        return cls.from_keyed(z["keys"], z["keep"], str(path))
            except MaskError:
                raise
            except (OSError, ValueError) as e:
                raise MaskError(f"{str(path)!r} could not be read as .npz ({e})") from e
        return cls.from_release(load_release_masks(path), str(path))

    def save(self, path: str | os.PathLike, settings: dict | None = None) -> Path:
        """Write the keyed ``.npz`` form (atomically); ``settings`` (how the flags were made, e.g. the
        CLIP rule and thresholds) go in as a JSON string entry that :meth:`load` does not need."""
        import json

        from .files import atomic_write

        keep = dict(self._keyed)
        for shift, arr in self._arrays.items():
            for j, flag in enumerate(arr.tolist()):
                keep.setdefault(sample_key(shift, j // self.per_class, j % self.per_class), bool(flag))
        keys = sorted(keep)
        buf = io.BytesIO()
        extra = {} if settings is None else {"settings": np.array(json.dumps(settings))}
        np.savez(buf, keys=np.array(keys), keep=np.array([keep[k] for k in keys], dtype=bool), **extra)
        return atomic_write(path, buf.getvalue())

    def check_shift(self, shift_id: str) -> None:
        """Raise :class:`MaskError` when the masks say nothing about this shift."""
        if shift_id not in self.shifts():
            have = sorted(self.shifts())
            raise MaskError(f"masks from {self.source or 'memory'} have no entries for shift {shift_id!r} "
                            f"(they cover: {', '.join(have[:6])}{', ...' if len(have) > 6 else ''}); pass "
                            "masks=False or a mask file for this shift")


def resolve_masks(masks) -> Masks | None:
    """``False``/``None`` -> none; ``True`` -> the release's (fetched); a path or :class:`Masks`."""
    if masks is None or masks is False:
        return None
    if isinstance(masks, Masks):
        return masks
    if masks is True:
        return Masks.load(fetch_release_masks())
    return Masks.load(masks)
