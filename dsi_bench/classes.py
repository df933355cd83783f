"""Class lists: ImageNet-1k (offline) and custom lists for any dataset.

ImageNet-1k names come from torchvision's weight metadata (static, no download). WordNet
ids come, where known, from a class table the user points to (``table=`` or the
``DSI_BENCH_IMAGENET_CLASSES`` environment variable; JSON rows with ``index``, ``wnid``,
``common_name``/``name``), else from timm's bundled synset list when timm is installed,
else they are ``None``. Sorted WordNet ids are the standard class indices.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ClassSpecError, close_matches
from .memo import on_clear

__all__ = ["ClassInfo", "ClassList", "imagenet_classes", "parse_class_spec"]

IMAGENET_NUM_CLASSES = 1000
_CLASS_TABLE_ENV = "DSI_BENCH_IMAGENET_CLASSES"


@dataclass(frozen=True)
class ClassInfo:
    """One class: its index in the label space, display name and optional external id."""

    index: int
    name: str
    wnid: str | None = None

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "wnid": self.wnid}


class ClassList(Sequence[ClassInfo]):
    """An ordered list of classes, ``classes[i].index == i``.

    Build one with :meth:`imagenet`, :meth:`from_names` or :meth:`from_file`.
    """

    def __init__(self, classes: Iterable[ClassInfo], name: str = "custom"):
        self._classes = tuple(classes)
        self.name = name
        for i, c in enumerate(self._classes):
            if c.index != i:
                raise ClassSpecError(f"class list {name!r}: entry {i} has index {c.index}; indices must be 0..N-1")
        seen: dict[str, int] = {}
        for c in self._classes:
            if c.wnid is not None and seen.setdefault(c.wnid, c.index) != c.index:
                raise ClassSpecError(f"class list {name!r}: id {c.wnid!r} is given to classes {seen[c.wnid]} and "
                                     f"{c.index}; every class needs its own id")

    # Sequence protocol
    def __len__(self) -> int:
        return len(self._classes)

    def __getitem__(self, i):  # type: ignore[override]
        return self._classes[i]

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self._classes)

    def __repr__(self) -> str:
        return f"ClassList({self.name!r}, {len(self)} classes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassList) and self._classes == other._classes

    def __hash__(self) -> int:
        return hash(self._classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self._classes]

    @classmethod
    def imagenet(cls, table: str | os.PathLike | None = None) -> ClassList:
        """The 1000 ImageNet-1k classes (see :func:`imagenet_classes`)."""
        return imagenet_classes(table)

    @classmethod
    def from_names(cls, names: Sequence[str], ids: Sequence[str] | None = None, name: str = "custom") -> ClassList:
        """A custom class list: ``names[i]`` is class ``i``; ``ids`` are optional external ids."""
        names = [str(n).strip() for n in names]
        if not names:
            raise ClassSpecError("a class list needs at least one class name")
        if any(not n for n in names):
            raise ClassSpecError(f"class list has an empty name at index {names.index('')}; give every class a name")
        if ids is not None and len(ids) != len(names):
            raise ClassSpecError(f"got {len(names)} class names but {len(ids)} ids; give one id per class or none")
        return cls(
            (ClassInfo(i, n, None if ids is None else str(ids[i])) for i, n in enumerate(names)),
            name=name,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ClassList:
        """Read a class list: ``.txt`` (one name per line, or ``id<TAB>name``) or ``.json``.

        JSON may be a list of names or of objects with ``name``/``common_name`` and an
        optional ``wnid``/``id`` (and ``index``, which must then be 0..N-1 in order).
        """
        path = Path(path)
        if not path.is_file():
            raise ClassSpecError(f"class list file {str(path)!r} does not exist; pass a .txt or .json file")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise ClassSpecError(f"class list {str(path)!r} is not valid JSON ({e})") from e
            return _from_rows(rows, str(path), name=path.stem)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines and all("\t" in line for line in lines):
            ids, names = zip(*(line.split("\t", 1) for line in lines))
            return cls.from_names(names, ids, name=path.stem)
        return cls.from_names(lines, name=path.stem)

    def resolve(self, spec: str | int | Iterable[int | str] | None) -> list[int]:
        """Class indices selected by a spec (see :func:`parse_class_spec`)."""
        return parse_class_spec(spec, self)

    def class_to_idx(self) -> dict[str, int]:
        return {c.name: c.index for c in self._classes}


def _from_rows(rows, where: str, name: str) -> ClassList:
    if not isinstance(rows, list) or not rows:
        raise ClassSpecError(f"class list {where!r} must be a non-empty JSON list")
    if all(isinstance(r, str) for r in rows):
        return ClassList.from_names(rows, name=name)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ClassSpecError(f"class list {where!r}: entry {i} is {row!r}; use names or objects with 'name'")
        label = row.get("common_name") or row.get("name")
        if not label:
            raise ClassSpecError(f"class list {where!r}: entry {i} has no 'name' or 'common_name'")
        if int(row.get("index", i)) != i:
            raise ClassSpecError(f"class list {where!r}: entry {i} has index {row['index']}; sort it by index")
        out.append(ClassInfo(i, str(label), row.get("wnid") or row.get("id")))
    return ClassList(out, name=name)


def _timm_wnids() -> list[str] | None:
    """The sorted ImageNet-1k synsets bundled with timm, if timm is installed."""
    try:
        from importlib.resources import files

        text = files("timm.data._info").joinpath("imagenet_synsets.txt").read_text()
    except (ImportError, FileNotFoundError, ModuleNotFoundError, OSError):
        return None
    wnids = [w.strip() for w in text.splitlines() if w.strip()]
    return wnids if len(wnids) == IMAGENET_NUM_CLASSES else None


@functools.lru_cache(maxsize=8)
def _imagenet_cached(table: str | None) -> ClassList:
    if table:
        classes = ClassList.from_file(table)
        if len(classes) != IMAGENET_NUM_CLASSES:
            raise ClassSpecError(f"ImageNet class table {table!r} has {len(classes)} rows; expected 1000")
        return ClassList(classes, name="imagenet-1k")
    from torchvision.models import ResNet50_Weights

    names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    wnids = _timm_wnids()
    return ClassList(
        (ClassInfo(i, n, wnids[i] if wnids else None) for i, n in enumerate(names)),
        name="imagenet-1k",
    )


on_clear(_imagenet_cached.cache_clear)


def imagenet_classes(table: str | os.PathLike | None = None) -> ClassList:
    """The ImageNet-1k class list, available offline.

    Args:
        table: optional JSON class table (rows with ``index``, ``wnid``, ``common_name``)
            whose names and WordNet ids replace the defaults; defaults to the
            ``DSI_BENCH_IMAGENET_CLASSES`` environment variable.

    Returns:
        A :class:`ClassList` of 1000 classes (names from torchvision's weight metadata
        unless a table is given; WordNet ids where known).
    """
    table = table if table is not None else os.environ.get(_CLASS_TABLE_ENV)
    return _imagenet_cached(str(table) if table else None)


_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def parse_class_spec(spec: str | int | Iterable[int | str] | None, classes: ClassList) -> list[int]:
    """Class indices from a spec, in the order given, without duplicates.

    Accepts ``None``/``"all"`` (every class), an int, a list of ints/names, or a string
    such as ``"0-9,207"``, ``"goldfish,n01440764"`` (names and WordNet ids resolve too).

    Raises:
        ClassSpecError: unknown names, indices out of range, or an empty selection.
    """
    n = len(classes)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("all", "*", "")):
        return list(range(n))
    if isinstance(spec, int):
        items: list[int | str] = [spec]
    elif isinstance(spec, str):
        items = [p.strip() for p in spec.split(",") if p.strip()]
    else:
        items = list(spec)
    by_name = {c.name.lower(): c.index for c in classes}
    by_wnid = {c.wnid: c.index for c in classes if c.wnid}
    out: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise ClassSpecError(f"class {item!r} is not a class index or name")
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            idx = [int(item)]
        elif isinstance(item, str) and _RANGE.match(item):
            lo, hi = map(int, _RANGE.match(item).groups())
            if lo > hi:
                raise ClassSpecError(f"class range {item!r} is empty; write it low-high, e.g. '0-9'")
            idx = list(range(lo, hi + 1))
        elif isinstance(item, str) and item.lower() in by_name:
            idx = [by_name[item.lower()]]
        elif isinstance(item, str) and item in by_wnid:
            idx = [by_wnid[item]]
        else:
            hint = close_matches(str(item).lower(), by_name)
            raise ClassSpecError(
                f"unknown class {item!r} in {classes.name}.{hint} Use indices 0-{n - 1}, ranges like '0-9', "
                "or class names"
            )
        for i in idx:
            if not 0 <= i < n:
                raise ClassSpecError(
                    f"class index {i} is out of range for {classes.name} ({n} classes); use 0-{n - 1}"
                )
            if i not in out:
                out.append(i)
    if not out:
        raise ClassSpecError(f"class selection {spec!r} is empty; e.g. '0-9,207' or 'all'")
    return out
