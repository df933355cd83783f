"""Score a predictions file against a source: how a leaderboard takes a submission without running code.

The CSV has columns ``key`` and ``prediction`` (a label index or WordNet id), optionally ``label``
and ``top5`` (space-separated). Keys are the sources' keys: ``{shift}/{class:04d}/{index:02d}``
(minimum widths, as :func:`~dsi_bench.layout.sample_key` writes them: ``base/0000/100``),
or for the release ``{shift}/{wordnet_id}/{file}`` (``in_the_snow/n01440764/07.jpg``); both
name the same sample. Labels and predictions are class indices or WordNet ids of the label space;
a value outside it is refused by line (``-1`` only pads a ``top5``, as ``eval`` writes for a model
with fewer than 5 outputs). The file is UTF-8 (a byte-order mark is accepted); it is read as a
stream into compact arrays (about 35 bytes per row kept, about 105 at the peak of scoring without a
source: ``benchmarks/bench_score.py``), so millions of rows fit in little memory.
Against a source (``source=``, ``root=``), labels come from the source,
and keys that are unknown, duplicated, or missing are reported by name; predictions for samples
the masks remove are ignored (and counted). Without a source, labels come from the ``label`` column
or the keys, and the selection and masks are applied by key: the release's masks are
key-computable (entry ``j`` is class ``j // 50``, file ``j % 50``); a file in the release's layout
(release keys, or masks given: 50 files per class per shift) must predict every file of each class
it covers. Top-5 is reported only when every row has a ``top5``. The metrics are computed by the same code as
:func:`~dsi_bench.evaluate.evaluate`, so a file written by ``eval --predictions`` scores to the
same numbers.
"""

from __future__ import annotations

import array
import csv
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .classes import ClassList
from .errors import PredictionsError
from .layout import parse_key, sample_key
from .results import Results, ShiftPredictions, build_results, open_text

__all__ = ["read_predictions", "score_predictions"]

_RELEASE_KEY = re.compile(r"([^/]+)/(n\d{8})/(\d{2})\.jpe?g", re.IGNORECASE)
#: A ``top5`` cell of ASCII numbers (checked value by value only when it is not this, or out of range).
_NUMBERS = re.compile(r"[0-9\s-]*", re.ASCII)
#: The largest per-class index a key may have (the arrays hold 32-bit integers).
_MAX_INDEX = 2**31 - 1
#: ``class * _STRIDE + index`` orders the keys of a shift as (class, index).
_STRIDE = 2**31
#: Keys turned into text at a time when a shift's keys are walked.
_CHUNK = 65536


def _examples(items: Sequence, total: int | None = None, n: int = 3) -> str:
    """The first ``n`` of ``items`` by name, and how many more there are (of ``total``, default ``len(items)``)."""
    total = len(items) if total is None else total
    return ", ".join(repr(i) for i in items[:n]) + (f" (and {total - n} more)" if total > n else "")


class _Keys(Sequence[str]):
    """Sample keys of one shift held as two integer arrays (class, index); text only when read."""

    def __init__(self, shift: str, classes: np.ndarray, indices: np.ndarray):
        self.shift, self.classes, self.indices = shift, classes, indices

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return sample_key(self.shift, int(self.classes[i]), int(self.indices[i]))

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), _CHUNK):
            end = start + _CHUNK
            for c, i in zip(self.classes[start:end].tolist(), self.indices[start:end].tolist()):
                yield sample_key(self.shift, c, i)

    def subset(self, which: np.ndarray) -> _Keys:
        """The keys a boolean mask or index array selects."""
        return _Keys(self.shift, self.classes[which], self.indices[which])

    def codes(self) -> np.ndarray:
        return self.classes.astype(np.int64) * _STRIDE + self.indices


class _Rows:
    """One shift's rows of a predictions file, sorted by (class, index)."""

    def __init__(self, keys: _Keys, labels: np.ndarray, top: np.ndarray, has_top5: np.ndarray):
        self.keys, self.labels, self.top, self.has_top5 = keys, labels, top, has_top5
        self.codes = keys.codes()

    def find(self, keys: _Keys) -> tuple[np.ndarray, np.ndarray]:
        """``(row of each key, whether the file has it)``."""
        codes = keys.codes()
        if not len(self.codes):
            return np.zeros(len(codes), np.intp), np.zeros(len(codes), bool)
        pos = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        return pos, self.codes[pos] == codes

    def given_labels(self, pos: np.ndarray, present: np.ndarray) -> np.ndarray:
        """The ``label`` column at rows ``pos`` (``-1`` where absent or not given)."""
        out = np.full(len(pos), -1, np.int64)
        out[present] = self.labels[pos[present]]
        return out


class _File:
    """A predictions file as read: per row a shift, class, index, label (``-1``: none), five top labels
    (``-1``-padded) and whether it had a ``top5``, in arrays sorted by (shift, class, index)."""

    def __init__(self, shifts: list[str], bounds: np.ndarray, columns: tuple, release_keys: bool):
        self.shifts, self.bounds, self.release_keys = shifts, bounds, release_keys
        self.classes, self.indices, self.labels, self.top, self.has_top5 = columns

    def __len__(self) -> int:
        return len(self.classes)

    def rows(self, shift: str) -> _Rows:
        j = self.shifts.index(shift) if shift in self.shifts else None
        a, b = (0, 0) if j is None else (self.bounds[j], self.bounds[j + 1])
        return _Rows(_Keys(shift, self.classes[a:b], self.indices[a:b]), self.labels[a:b], self.top[a:b],
                     self.has_top5[a:b])


def read_predictions(path: str | os.PathLike, class_list: ClassList) -> dict[str, tuple[list[int], int | None]]:
    """``{key: (top-k labels, label or None)}`` from a CSV, keys normalised to ``{shift}/{class:04d}/{index:02d}``.

    A convenience for small files: :func:`score_predictions` keeps the rows in compact arrays instead.

    Raises:
        PredictionsError: missing columns, unreadable values, unknown key format, duplicate keys.
    """
    f = _read(path, class_list)
    out = {}
    for shift in f.shifts:
        r = f.rows(shift)
        for key, label, top in zip(r.keys, r.labels.tolist(), r.top.tolist()):
            out[key] = ([t for t in top if t != -1], None if label < 0 else label)
    return out


def _read(path: str | os.PathLike, class_list: ClassList) -> _File:
    """Stream the CSV into a :class:`_File`.

    Raises:
        PredictionsError: an unreadable file (missing, not UTF-8, not CSV), a bad header, bad keys
            or values (named by line), duplicate keys.
    """
    path = Path(path).expanduser()
    try:
        handle = open_text(path)  # plain or gzip-compressed
    except FileNotFoundError as cause:
        raise PredictionsError(f"predictions file {str(path)!r} does not exist") from cause
    except OSError as cause:
        raise PredictionsError(f"predictions file {str(path)!r} cannot be read: {cause.strerror}") from cause
    with handle as f:
        reader = csv.reader(f)
        try:
            return _Reader(path, class_list).read(reader)
        except UnicodeDecodeError as cause:  # the decoder reads ahead: find the line in the bytes
            raise PredictionsError(f"{str(path)!r} line {_first_non_utf8_line(path)}: not UTF-8 text (byte "
                                   f"{cause.object[cause.start]:#04x}); save it as UTF-8") from cause
        except csv.Error as cause:
            raise PredictionsError(f"{str(path)!r} line {reader.line_num}: not a CSV row ({cause})") from cause


def _first_non_utf8_line(path: Path) -> int | str:
    import gzip

    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    with (gzip.open if gz else open)(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return "?"


class _Reader:
    """Parses rows into growing typed arrays (a few bytes per value, no object per row)."""

    def __init__(self, path: Path, class_list: ClassList):
        self.where, self.class_list = repr(str(path)), class_list
        self.by_wnid = {c.wnid: c.index for c in class_list if c.wnid}
        self.n = len(class_list)
        self.release_keys = False

    def label(self, text: str, line: int, column: str, pad: bool = False) -> int:
        """A class index of the label space from a cell (an index or WordNet id); ``-1`` where ``pad``."""
        text = text.strip()
        if text.isascii() and text.isdigit():
            if len(text) < 10 and int(text) < self.n:
                return int(text)
            shown = text if len(text) <= 24 else text[:20] + "..."
            raise PredictionsError(f"{self.where} line {line}: {column} {shown} is outside the label space "
                                   f"({self.class_list.name}: 0-{self.n - 1}); give class indices or WordNet ids "
                                   "of the data's classes")
        if pad and text == "-1":
            return -1
        if text in self.by_wnid:
            return self.by_wnid[text]
        raise PredictionsError(f"{self.where} line {line}: {column} {text[:40]!r} is not a class index or WordNet "
                               f"id of {self.class_list.name}")

    def top5(self, cell: str, line: int) -> list[int]:
        """The labels of a ``top5`` cell (``-1`` pads); a fast path for the common all-numbers cell."""
        parts = cell.split()
        if _NUMBERS.fullmatch(cell):
            try:
                values = [int(t) for t in parts]
            except ValueError:  # "1-2": named below
                values = [self.n]
            if not values or (max(values) < self.n and min(values) >= -1):
                return values
        return [self.label(t, line, "top5", pad=True) for t in parts]

    def key(self, raw: str, line: int) -> tuple[str, int, int] | None:
        """``(shift, class, index)`` of a key (ours or the release's), ``None`` when it is not a sample key."""
        parsed = parse_key(raw)
        if parsed is None:
            m = _RELEASE_KEY.fullmatch(raw)
            if not (m and m.group(2) in self.by_wnid):
                return None
            parsed = (m.group(1), self.by_wnid[m.group(2)], int(m.group(3)))
            self.release_keys = True
        if parsed[1] >= self.n:
            raise PredictionsError(f"{self.where} line {line}: key {raw!r} names class {parsed[1]}, outside the "
                                   f"label space ({self.class_list.name}: 0-{self.n - 1})")
        return parsed if parsed[2] <= _MAX_INDEX else None

    def read(self, reader) -> _File:
        header = next(reader, None) or []
        columns: dict[str, int] = {}
        for i, name in enumerate(header):
            columns.setdefault(name, i)
        if "key" not in columns or not ({"prediction", "top5"} & columns.keys()):
            raise PredictionsError(f"{self.where} needs a header with columns key and prediction (optionally label, "
                                   f"top5); it has: {', '.join(header) or 'no header'}")
        at_key, at_pred, at_top, at_label = (columns.get(c, -1) for c in ("key", "prediction", "top5", "label"))
        codes: dict[str, int] = {}
        shift, classes, indices, labels, top = (array.array("i") for _ in range(5))
        has_top5 = array.array("b")
        bad: list[str] = []
        bad_count = 0
        for row in reader:
            if not row:
                continue
            line, width = reader.line_num, len(row)
            if width > len(header):  # fewer fields: the trailing cells are empty
                raise PredictionsError(f"{self.where} line {line}: {width} fields, but the header has {len(header)}; "
                                       "quote cells that hold commas")
            raw = row[at_key].strip() if at_key < width else ""
            parsed = self.key(raw, line)
            if parsed is None:
                bad_count += 1
                if len(bad) < 3:
                    bad.append(raw)
                continue
            cell = row[at_top] if 0 <= at_top < width else ""
            best = self.top5(cell, line)
            if len(best) > 5:
                raise PredictionsError(f"{self.where} line {line}: top5 holds {len(best)} labels; write at most 5")
            prediction = row[at_pred].strip() if 0 <= at_pred < width else ""
            ranked = best
            if prediction:
                first = self.label(prediction, line, "prediction")
                if best and first not in best:
                    raise PredictionsError(f"{self.where} line {line}: prediction {prediction} is not in its top5 "
                                           f"({cell.strip()}); a model's top-1 is its first top-5 label")
                ranked = [first] + [t for t in best if t != first]
            if not ranked:
                raise PredictionsError(f"{self.where} line {line}: key {raw!r} has no prediction")
            label = row[at_label].strip() if 0 <= at_label < width else ""
            shift.append(codes.setdefault(parsed[0], len(codes)))
            classes.append(parsed[1])
            indices.append(parsed[2])
            given = self.label(label, line, "label") if label else -1
            if given >= 0 and given != parsed[1]:
                raise PredictionsError(f"{self.where} line {line}: label {label} disagrees with key {raw!r} (class "
                                       f"{parsed[1]}); the key names the sample and its class")
            labels.append(given)
            top.extend((ranked + [-1] * 5)[:5])
            has_top5.append(bool(best))
        if bad_count:
            raise PredictionsError(f"{self.where}: {bad_count} keys are not sample keys ({{shift}}/{{class:04d}}/"
                                   f"{{index:02d}} or {{shift}}/{{wnid}}/{{NN}}.jpg): {_examples(bad, bad_count)}")
        return self._sorted(list(codes), shift, (classes, indices, labels, top, has_top5))

    def _sorted(self, names: list[str], shift: array.array, columns: tuple) -> _File:
        """The rows sorted by (shift, class, index); duplicate keys refused."""
        shift = np.frombuffer(shift, np.int32)
        classes, indices, labels, top, has_top5 = (np.frombuffer(c, np.int8 if c.typecode == "b" else np.int32)
                                                   for c in columns)
        order = np.lexsort((indices, classes, shift))
        shift, classes, indices, labels, has_top5 = (a[order] for a in (shift, classes, indices, labels, has_top5))
        top = top.reshape(-1, 5)[order]
        del order
        same = (shift[1:] == shift[:-1]) & (classes[1:] == classes[:-1]) & (indices[1:] == indices[:-1])
        if same.any():
            where = np.flatnonzero(same)
            shown = [sample_key(names[shift[j]], int(classes[j]), int(indices[j])) for j in where[:3]]
            raise PredictionsError(f"{self.where}: {len(where)} keys appear more than once: "
                                   f"{_examples(shown, len(where))}; give one prediction per sample")
        bounds = np.searchsorted(shift, np.arange(len(names) + 1))
        return _File(names, bounds, (classes, indices, labels, top, has_top5.astype(bool)), self.release_keys)


def _top_width(path, rows: _Rows, keys: _Keys, pos: np.ndarray, present: np.ndarray) -> int:
    """5 when every predicted key of the shift has a ``top5`` cell, 1 when none has (top-5 then not measured).

    Raises:
        PredictionsError: some rows of the shift have a ``top5`` and others not.
    """
    have = rows.has_top5[pos[present]]
    if have.any() and not have.all():
        lacking = keys.subset(present).subset(~have)
        raise PredictionsError(f"{str(path)!r}: {int(have.sum())} rows of {keys.shift} have a top5 and "
                               f"{len(lacking)} do not ({_examples(lacking)}); give top5 for every row or for none "
                               "(top-5 is then reported as not available)")
    return 5 if have.any() else 1


def _predictions(path, rows: _Rows, keys: _Keys, labels: np.ndarray) -> tuple[ShiftPredictions, _Keys]:
    """The shift's predictions for ``keys`` (true ``labels``), and the keys the file has no row for."""
    pos, present = rows.find(keys)
    width = _top_width(path, rows, keys, pos, present)
    topk = np.full((len(keys), width), -1, np.int64)
    topk[present] = rows.top[pos[present], :width]
    return ShiftPredictions(keys, np.asarray(labels, np.int64), topk), keys.subset(~present)


class _Tally:
    """Keys found wrong across shifts: how many, and the first few by name."""

    def __init__(self):
        self.count, self.first = 0, []

    def add(self, keys: Sequence[str]) -> None:
        self.count += len(keys)
        self.first += keys[: max(0, 3 - len(self.first))]

    def __bool__(self) -> bool:
        return self.count > 0

    def __str__(self) -> str:
        return _examples(self.first, self.count)


def _check_missing(path, missing: dict[str, _Keys], allow_missing: bool) -> None:
    """Refuse samples without a prediction (naming how many and which) unless ``allow_missing``."""
    missing = {s: v for s, v in missing.items() if len(v)}
    if missing and not allow_missing:
        found = _Tally()
        for v in missing.values():
            found.add(v)
        per_shift = ", ".join(f"{s}: {len(v)}" for s, v in missing.items())
        raise PredictionsError(f"{str(path)!r}: {found.count} samples have no prediction ({per_shift}): {found}; "
                               "predict every sample, or pass allow_missing (--allow-missing) to count them as wrong")


def _keys_digest(keys: Sequence[str]) -> str:
    """sha256 of the keys joined by newlines, computed as a stream."""
    h, sep = hashlib.sha256(), b""
    for k in keys:
        h.update(sep + k.encode())
        sep = b"\n"
    return h.hexdigest()


def _score_by_keys(path, f: _File, shift_ids: list[str], args: dict, class_list: ClassList, defaults: dict):
    """Predictions per shift without a source: the selection and masks applied by key.

    The expected files per class are known when the file is in the release's layout (release keys,
    or masks given: 50 per class) or ``per_class`` is given; then every class the file covers (or
    every requested class) must be predicted in full (masked-out files aside).

    Returns:
        ``(predictions, missing per shift or None when not checkable, ignored masked predictions, fingerprints)``.

    Raises:
        SpecError: an option that needs a source.
        PredictionsError: keys outside the selection; missing keys (without ``allow_missing``).
        MaskError: masks that say nothing about a scored key, or cannot be loaded.
    """
    from .errors import MaskError, SpecError
    from .masks import RELEASE_PER_CLASS, resolve_masks

    others = [k for k, v in args.items() if k not in ("masks", "classes", "per_class", "class_list", "source", "root")
              and not (v is defaults.get(k) or v == defaults.get(k))]
    if others:
        raise SpecError(f"{others[0]}= applies to a data source; score against one (source=, --source and --root) "
                        "or leave it out")
    masks = resolve_masks(args.get("masks", False))
    classes, per_class = args.get("classes"), args.get("per_class")
    requested = None if classes is None else np.array(sorted(set(class_list.resolve(classes))), np.int64)
    layout = per_class or (RELEASE_PER_CLASS if (f.release_keys or masks is not None) else None)
    preds, missing, fingerprints, ignored = {}, {}, {}, 0
    outside, silent = _Tally(), _Tally()
    for s in shift_ids:
        if masks is not None:
            masks.check_shift(s)
        rows = f.rows(s)
        mine = rows.keys
        wanted = requested if requested is not None else np.unique(mine.classes)
        off = ~np.isin(mine.classes, wanted) | ((mine.indices >= layout) if layout else False)
        outside.add(mine.subset(off))
        if layout:
            expected = _Keys(s, np.repeat(wanted, layout), np.tile(np.arange(layout), len(wanted)))
        else:  # the files per class are unknown: the file's own keys are the samples
            expected = mine.subset(~off)
            absent = np.setdiff1d(wanted, mine.classes)
            if len(absent):
                raise PredictionsError(f"{str(path)!r} has no predictions for {len(absent)} requested classes of "
                                       f"{s}: {_examples(absent.tolist())}")
        if masks is not None:
            flags = [masks.get(k) for k in expected]
            silent.add(expected.subset(np.array([x is None for x in flags], bool)))
            dropped = expected.subset(np.array([x is False for x in flags], bool))
            ignored += int(rows.find(dropped)[1].sum())
            expected = expected.subset(np.array([x is True for x in flags], bool))
        given = rows.given_labels(*rows.find(expected))
        labels = np.where(given >= 0, given, expected.classes)
        preds[s], missing[s] = _predictions(path, rows, expected, labels)
        fingerprints[s] = _keys_digest(expected)
    if outside:
        what = ", ".join(x for x in (classes is not None and f"classes={classes!r}",
                                     layout and f"{layout} files per class") if x)
        raise PredictionsError(f"{str(path)!r}: {outside.count} keys are outside the selection ({what}): {outside}")
    if silent:
        raise MaskError(f"the masks {masks.source!r} say nothing about {silent.count} scored keys: {silent}; "
                        "they cannot be applied to this file")
    return preds, (missing if layout else None), ignored, fingerprints


def _source_keys(shift_id: str, keys: Sequence[str]) -> tuple[_Keys, np.ndarray]:
    """A source's keys of one shift as :class:`_Keys` sorted by (class, index), and the order that sorts them."""
    parsed = [parse_key(k) for k in keys]
    classes = np.array([p[1] for p in parsed], np.int64)
    indices = np.array([p[2] for p in parsed], np.int64)
    order = np.lexsort((indices, classes))
    return _Keys(shift_id, classes[order], indices[order]), order


def score_predictions(
    path: str | os.PathLike,
    data=None,
    *,
    shifts=None,
    allow_missing: bool = False,
    name: str | None = None,
    worst_k: int = 10,
    **legacy,
) -> Results:
    """Results for a predictions CSV (see the module docs).

    Args:
        data: the data the predictions are for, as in :func:`~dsi_bench.evaluate.evaluate`: a
            :class:`~dsi_bench.ShiftedImageNet` or a dict of its arguments (``source``, ``root``,
            ``classes``, ``per_class``, ``masks``, ``class_list``). Without a source, labels come
            from the ``label`` column or the keys; ``classes``, ``per_class`` and ``masks`` (the
            release's, a ``masks.npy``/``.npz`` or a keyed mask file) are applied by key; for a file
            in the release's layout (release keys or masks: 50 files per class per shift), or with
            ``per_class``, missing files are reported as with a source.
        shifts: which shifts to score (default: every shift in the file).
        allow_missing: count samples without a prediction as wrong (and list them in
            ``data.missing_predictions``) instead of refusing.

    Top-5 is measured only where every row has a ``top5`` (otherwise it is ``None``: not available).

    Deprecated (0.2): ``source=``, ``root=``, ``masks=``, ``classes=``, ``per_class=``,
    ``class_list=`` as keywords of ``score_predictions`` itself.

    Raises:
        PredictionsError: unknown, duplicate or (without ``allow_missing``) missing keys; keys outside
            the selection; some rows with a top5 and others without.
        MaskError: masks that cannot be applied to the file's keys.
        SpecError: an option that needs a source, without one.
    """
    from .compat import reject_unknown
    from .datasets import ShiftedImageNet, argument_defaults, label_space
    from .evaluate import data_arguments, data_info, resolve_shifts

    args = data_arguments(data, (), legacy, "score_predictions")
    reject_unknown(legacy, "score_predictions")
    source, root = args.get("source"), args.get("root")
    masks, classes = args.get("masks", False), args.get("classes")
    class_list = label_space(args)  # class_list=, else what the data records (a custom bank's), else ImageNet-1k
    f = _read(path, class_list)
    if not len(f):
        raise PredictionsError(f"{str(path)!r} holds no predictions")
    if source is None and root is not None:
        from .errors import SpecError

        raise SpecError(f"root={str(root)!r} without a source: say which source it is (source=, --source)")
    shift_ids = resolve_shifts(shifts if shifts is not None else f.shifts, source, root)
    preds: dict[str, ShiftPredictions] = {}
    fingerprints: dict[str, str] = {}
    manifest = None
    missing_total: dict[str, _Keys] | None = {}
    ignored = 0
    backend_masks = None
    if source is None:
        preds, missing_total, ignored, fingerprints = _score_by_keys(path, f, shift_ids, args, class_list,
                                                                     argument_defaults())
        _check_missing(path, missing_total or {}, allow_missing)
    else:
        unknown = _Tally()
        shift_defs: dict = {}
        for s in shift_ids:
            ds = ShiftedImageNet(s, **{**args, "class_list": class_list})
            keys, order = _source_keys(s, ds.keys)
            targets = np.asarray(ds.targets, np.int64)[order]
            known = keys if masks in (False, None) else _source_keys(
                s, ShiftedImageNet(s, **{**args, "class_list": class_list, "masks": False}).keys)[0]
            fingerprints[s] = ds.fingerprint()
            shift_defs[s] = ds.shift
            manifest, backend_masks = ds.backend.data_fingerprint, ds.backend.masks
            rows = f.rows(s)
            is_known = np.isin(rows.codes, known.codes())
            unknown.add(rows.keys.subset(~is_known))
            ignored += int((is_known & ~np.isin(rows.codes, keys.codes())).sum())
            given = rows.given_labels(*rows.find(keys))
            wrong = (given >= 0) & (given != targets)
            if wrong.any():
                raise PredictionsError(f"{str(path)!r}: the label column disagrees with the source for "
                                       f"{int(wrong.sum())} keys: {_examples(keys.subset(wrong))}")
            preds[s], missing_total[s] = _predictions(path, rows, keys, targets)
        if shifts is None:
            for other in (s for s in f.shifts if s not in shift_ids):
                unknown.add(f.rows(other).keys)
        if unknown:
            raise PredictionsError(f"{str(path)!r}: {unknown.count} keys are not samples of {source} {str(root)!r}: "
                                   f"{unknown}")
        _check_missing(path, missing_total, allow_missing)
    data = data_info(source, root, masks, classes, fingerprints, manifest, backend_masks=backend_masks)
    if source is None:  # the data is the set of scored keys; no copy of the images was checked
        data["fingerprint"] = "keys:" + data["fingerprint"]
        data["per_class"] = args.get("per_class")
    data["predictions_file"] = str(path)
    data["missing_predictions"] = (None if missing_total is None else
                                  {s: len(v) for s, v in missing_total.items() if len(v)})
    data["ignored_masked_predictions"] = ignored
    model = {"name": name or Path(path).stem, "spec": f"predictions:{Path(path).name}", "weights": None,
             "preprocessing": "by the submitter", "num_outputs": None, "class_map": None}
    results = build_results(preds, class_names=class_list.names, model=model, data=data,
                            label_space=class_list.name, worst_k=worst_k,
                            shift_defs=None if source is None else shift_defs)
    results.predictions_file = Path(path).expanduser().resolve()  # saving the results records it
    return results
