"""The public ImageNet* release read in place: its layout, its files by key, its metadata.

Converting it to shards is :mod:`dsi_bench.convert`; reading it as a dataset source is
:mod:`dsi_bench.sources.release`.

Layout (Hub dataset ``madrylab/imagenet-star``): one ``{shift}.zip`` per shift; inside, one
folder per class named by WordNet id, files ``00.jpg`` ... ``49.jpg`` (512 px JPEG). A root
may be a folder of those zips, a folder of unpacked shift folders, one shift folder, or one
shift zip. Sorted WordNet ids are the standard ImageNet-1k class indices.

Every file becomes a sample with our key ``{shift}/{class:04d}/{index:02d}`` (``07.jpg`` of
class 3 -> ``in_the_snow/0003/07``) and keeps its release key ``in_the_snow/n01443537/07.jpg``
in the metadata. The expected files are known (50 per class), so files missing from a copy
are reported by name, and the masks stay bound to the right files.

Hostile copies are refused by name, never half-read: a file (or link) that resolves outside its
shift folder, two zip members or files for the same key (the last would win silently), a file
larger than :data:`MAX_FILE_BYTES` (checked from the zip directory or the file system before
reading), and bytes that are not the JPEG their name says or that do not decode.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .classes import ClassList
from .errors import ReleaseError, ShardError
from .images import IMAGE_EXTENSIONS, decode_error, decode_image
from .layout import sample_key
from .masks import RELEASE_PER_CLASS, Masks

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ReleaseEntry", "ReleaseSet", "release_shifts"]

logger = logging.getLogger(__name__)

_WNID = re.compile(r"n\d{8}")
_FILE = re.compile(r"(\d{2})\.jpe?g", re.IGNORECASE)
#: The largest release file read (its size is checked before reading): the release's 512 px JPEGs are ~50 KB.
MAX_FILE_BYTES = 32 << 20


@dataclass(frozen=True)
class ReleaseEntry:
    """One file of the release."""

    key: str  # {shift}/{class:04d}/{index:02d}
    label: int
    release_key: str  # {shift}/{wnid}/{file}
    member: str  # path inside the zip or relative to the shift folder
    size: int
    keep: bool | None = None  # the release records no flag per file; its masks are separate


def _skip(name: str) -> bool:
    parts = name.split("/")
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or name.endswith("/")


def release_shifts(root: str | os.PathLike) -> list[str]:
    """Shift ids present under a release root (zips or folders), sorted."""
    root = Path(root).expanduser()
    if not root.exists():
        raise ReleaseError(f"release root {str(root)!r} does not exist; pass the folder holding the shift zips "
                           "(e.g. in_the_snow.zip) downloaded from madrylab/imagenet-star")
    if root.is_file():
        return [root.stem]
    found = set()
    for p in root.iterdir():
        if p.name.startswith("."):
            continue
        if p.suffix == ".zip" and p.is_file():
            found.add(p.stem)
        elif p.is_dir() and not _WNID.fullmatch(p.name):
            found.add(p.name)
    if not found and any(_WNID.fullmatch(p.name) for p in root.iterdir() if p.is_dir()):
        found.add(root.name)
    return sorted(found)


class ReleaseSet:
    """One shift of the ImageNet* release, indexed by key.

    Args:
        root: release root (see the module docs).
        shift_id: the shift's directory name (``"in_the_snow"``).
        class_list: the 1000 ImageNet classes with WordNet ids (labels are their indices).
        classes: class indices expected to be present (default: all 1000).
        missing: ``"error"`` (default) raises :class:`ReleaseError` listing missing files;
            ``"skip"`` logs the same list and serves the files that are present.

    Raises:
        ReleaseError: missing root or shift, unknown class folders, unexpected or missing files.
    """

    def __init__(self, root, shift_id: str, class_list: ClassList, classes: Sequence[int] | None = None,
                 missing: str = "error"):
        if missing not in ("error", "skip"):
            raise ReleaseError(f"missing={missing!r} must be 'error' or 'skip'")
        self.shift_id = shift_id
        self.root = Path(root).expanduser()
        self._zip_path, self._folder = self._locate()
        self._local = threading.local()
        listing = self._list()
        wnid_to_index = self._wnid_index(class_list, listing)
        expected = list(range(len(class_list))) if classes is None else list(classes)
        by_key: dict[str, ReleaseEntry] = {}
        problems = []
        for member, size in listing:
            wnid, fname = member.split("/")[-2:]
            if wnid not in wnid_to_index:
                problems.append(f"folder {wnid!r} is not an ImageNet class ({member})")
                continue
            m = _FILE.fullmatch(fname)
            if not m or int(m.group(1)) >= RELEASE_PER_CLASS:
                kind = "not an image" if Path(fname).suffix.lower().lstrip(".") not in IMAGE_EXTENSIONS else \
                    f"not one of 00.jpg..{RELEASE_PER_CLASS - 1}.jpg"
                problems.append(f"unexpected file {member!r} ({kind})")
                continue
            c, i = wnid_to_index[wnid], int(m.group(1))
            key = sample_key(shift_id, c, i)
            if key in by_key:
                problems.append(f"{by_key[key].member!r} and {member!r} are both file {i:02d} of class {wnid}")
                continue
            by_key[key] = ReleaseEntry(key, c, f"{shift_id}/{wnid}/{fname}", member, size)
        if problems:
            raise ReleaseError(f"{self.where}: {len(problems)} unexpected entr{'y' if len(problems) == 1 else 'ies'}: "
                               + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
                               + ". Remove them or point root at an unmodified copy of the release")
        self.class_list = class_list
        self.entries: list[ReleaseEntry] = []
        self.missing: dict[int, list[str]] = {}
        wanted = set(expected)
        for c in sorted(wanted):
            for i in range(RELEASE_PER_CLASS):
                e = by_key.get(sample_key(shift_id, c, i))
                if e is None:
                    self.missing.setdefault(c, []).append(f"{i:02d}.jpg")
                else:
                    self.entries.append(e)
        if self.missing:
            message = self.missing_report()
            if missing == "error":
                raise ReleaseError(message + "; pass missing='skip' (--missing skip) to use the files that are there")
            logger.warning("%s; skipping them (masks stay bound to the right files)", message)

    @property
    def where(self) -> str:
        return f"{self.shift_id} in {str(self._zip_path or self._folder)!r}"

    def missing_report(self) -> str:
        n = sum(len(v) for v in self.missing.values())
        parts = []
        for c, files in sorted(self.missing.items())[:5]:
            info = self.class_list[c]
            shown = ", ".join(files[:4]) + (f", ... ({len(files)} files)" if len(files) > 4 else "")
            parts.append(f"class {c} {info.wnid} ({info.name}): {shown}")
        more = f"; and {len(self.missing) - 5} more classes" if len(self.missing) > 5 else ""
        return f"{self.where}: {n} file{'s' if n != 1 else ''} missing: " + "; ".join(parts) + more

    # -------------------------------------------------------------- layout
    def _locate(self) -> tuple[Path | None, Path | None]:
        root, s = self.root, self.shift_id
        if not root.exists():
            raise ReleaseError(f"release root {str(root)!r} does not exist; pass the folder holding the shift zips "
                               "(e.g. in_the_snow.zip) downloaded from madrylab/imagenet-star")
        if root.is_file():
            if not zipfile.is_zipfile(root):
                raise ReleaseError(f"{str(root)!r} is not a zip file; pass a shift zip or the release folder")
            return root, None
        if (root / f"{s}.zip").is_file():
            return root / f"{s}.zip", None
        if (root / s).is_dir():
            inner = root / s / s
            return None, inner if inner.is_dir() else root / s
        if root.name == s:
            return None, root
        have = release_shifts(root)
        from .errors import close_matches

        raise ReleaseError(f"shift {s!r} is not in the release at {str(root)!r} "
                           f"(found: {', '.join(have) or 'nothing'})." + close_matches(s, have))

    def _list(self) -> list[tuple[str, int]]:
        out = []
        if self._zip_path is not None:
            with zipfile.ZipFile(self._zip_path) as z:
                for info in z.infolist():
                    if info.is_dir() or _skip(info.filename):
                        continue
                    out.append((info.filename, info.file_size))
            names = [m for m, _ in out]
            if len(set(names)) != len(names):
                twice = sorted({m for m in names if names.count(m) > 1})
                raise ReleaseError(f"{self.where}: the zip holds {len(twice)} member name(s) twice "
                                   f"({', '.join(map(repr, twice[:3]))}); which copy is meant is ambiguous: "
                                   "download the shift's zip again")
        else:
            for p in sorted(self._folder.rglob("*")):
                rel = p.relative_to(self._folder).as_posix()
                if p.is_symlink():
                    self._inside(rel)
                if p.is_file() and not _skip(rel):
                    out.append((rel, p.stat().st_size))
        bad = [m for m, _ in out if m.count("/") < 1]
        if bad:
            raise ReleaseError(f"{self.where}: file {bad[0]!r} is not inside a WordNet-id class folder")
        big = [(m, n) for m, n in out if n > MAX_FILE_BYTES]
        if big:
            raise ReleaseError(f"{self.where}: file {big[0][0]!r} is {big[0][1]} bytes, more than the "
                               f"{MAX_FILE_BYTES} bytes a release image may have; replace it with the release's file")
        return out

    def _inside(self, member: str):
        """The path of a file of the unpacked shift folder, refused when it (or a link on the way) leads outside."""
        from .files import contained_path

        try:
            return contained_path(self._folder, member, f"{self.where}: release file")
        except ShardError as e:
            raise ReleaseError(f"{e}; replace the link with the release's file") from e

    def _wnid_index(self, class_list: ClassList, listing) -> dict[str, int]:
        index = {c.wnid: c.index for c in class_list if c.wnid}
        if index:
            return index
        folders = sorted({m.split("/")[-2] for m, _ in listing})
        if len(folders) == len(class_list):
            return {w: i for i, w in enumerate(folders)}
        raise ReleaseError(
            f"{self.where}: the class list has no WordNet ids and the release has {len(folders)} class folders, so "
            "folders cannot be mapped to ImageNet indices; install timm or set DSI_BENCH_IMAGENET_CLASSES to a class "
            "table (JSON with index and wnid)"
        )

    # -------------------------------------------------------------- reading
    def read(self, entry: ReleaseEntry) -> bytes:
        if self._zip_path is None:
            return self._inside(entry.member).read_bytes()
        z = getattr(self._local, "zip", None)
        if z is None or getattr(self._local, "pid", None) != os.getpid():
            z = self._local.zip = zipfile.ZipFile(self._zip_path)
            self._local.pid = os.getpid()
        return z.read(entry.member)

    def load_image(self, entry: ReleaseEntry, draft: int | None = None) -> Image.Image:
        """The entry's image (RGB), checked: it must decode as the JPEG its name says, within the size limits.

        Raises:
            ReleaseError: naming the file, when it cannot be read, is not a JPEG, or does not decode.
        """
        return self._decode(entry, self._read_checked(entry), draft)

    def checked_bytes(self, entry: ReleaseEntry) -> bytes:
        """The entry's bytes, after checking they decode as :meth:`load_image` (and ``verify``) require."""
        data = self._read_checked(entry)
        self._decode(entry, data)
        return data

    def _read_checked(self, entry: ReleaseEntry) -> bytes:
        try:
            return self.read(entry)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise ReleaseError(f"{self.where}: {entry.member!r} cannot be read ({e}); check the copy") from e

    def _decode(self, entry: ReleaseEntry, data: bytes, draft: int | None = None) -> Image.Image:
        try:
            return decode_image(data, draft, ext=Path(entry.member).suffix.lstrip("."))
        except Exception as e:  # noqa: BLE001 - PIL decoder errors
            raise ReleaseError(f"{self.where}: {entry.member!r} does not decode ({decode_error(e)}); "
                               "replace it with the release's file") from e

    def metadata(self, entry: ReleaseEntry, masks: Masks | None = None) -> dict:
        info = self.class_list[entry.label]
        return {
            "key": entry.key,
            "release_key": entry.release_key,
            "shift": self.shift_id,
            "class_index": entry.label,
            "class_name": info.name,
            "wnid": info.wnid,
            "index": int(entry.key.rsplit("/", 1)[1]),
            "source": "imagenet-star",
            "keep": None if masks is None else masks.get(entry.key),
            "mask_source": None if masks is None else Path(masks.source).name,
        }

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_local"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


def __getattr__(name: str):
    if name in ("convert_release", "ReleaseJob"):  # moved in 0.2
        from . import convert
        from .compat import deprecated

        deprecated(f"dsi_bench.release.{name} is now dsi_bench.convert.{name}")
        return getattr(convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
