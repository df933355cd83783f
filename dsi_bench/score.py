"""Score a predictions file against a source: how a leaderboard takes a submission without running code.

The CSV has columns ``key`` and ``prediction`` (a label index or WordNet id), optionally ``label``
and ``top5`` (space-separated). Keys are the sources' keys: ``{shift}/{class:04d}/{index:02d}``,
or for the release ``{shift}/{wordnet_id}/{file}`` (``in_the_snow/n01440764/07.jpg``); both
name the same sample. Against a source (``source=``, ``root=``), labels come from the source,
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

import csv
import os
import re
from pathlib import Path

import numpy as np

from .classes import ClassList
from .errors import PredictionsError
from .results import Results, ShiftPredictions, build_results

__all__ = ["read_predictions", "score_predictions"]

_RELEASE_KEY = re.compile(r"([^/]+)/(n\d{8})/(\d{2})\.jpe?g", re.IGNORECASE)
_OUR_KEY = re.compile(r"([^/]+)/(\d{4})/(\d{2})")


def _examples(items, n: int = 3) -> str:
    items = list(items)
    return ", ".join(repr(i) for i in items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def read_predictions(path: str | os.PathLike, class_list: ClassList) -> dict[str, tuple[list[int], int | None]]:
    """``{key: (top-k labels, label or None)}`` from a CSV, keys normalised to ``{shift}/{class:04d}/{index:02d}``.

    Raises:
        PredictionsError: missing columns, unreadable values, unknown key format, duplicate keys.
    """
    return _read(path, class_list).rows


class _File:
    """A predictions file as read: rows, whether any key used the release's form, the keys with a top5 cell."""

    def __init__(self, rows: dict, release_keys: bool, with_top5: set[str]):
        self.rows, self.release_keys, self.with_top5 = rows, release_keys, with_top5


def _read(path: str | os.PathLike, class_list: ClassList) -> _File:
    path = Path(path).expanduser()
    by_wnid = {c.wnid: c.index for c in class_list if c.wnid}
    try:
        handle = open(path, newline="", encoding="utf-8")
    except FileNotFoundError as cause:
        raise PredictionsError(f"predictions file {str(path)!r} does not exist") from cause
    rows: dict[str, tuple[list[int], int | None]] = {}
    duplicates, bad_keys, with_top5, release_keys = [], [], set(), False
    with handle as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        if "key" not in fields or not ({"prediction", "top5"} & fields):
            raise PredictionsError(f"{str(path)!r} needs a header with columns key and prediction (optionally label, "
                                   f"top5); it has: {', '.join(reader.fieldnames or []) or 'no header'}")

        def label_of(text: str, line: int) -> int:
            text = text.strip()
            if text.lstrip("-").isdigit():
                return int(text)
            if text in by_wnid:
                return by_wnid[text]
            raise PredictionsError(f"{str(path)!r} line {line}: {text!r} is not a class index or WordNet id")

        for line, row in enumerate(reader, start=2):
            raw = (row.get("key") or "").strip()
            m = _RELEASE_KEY.fullmatch(raw)
            if m and m.group(2) in by_wnid:
                key = f"{m.group(1)}/{by_wnid[m.group(2)]:04d}/{m.group(3)}"
                release_keys = True
            elif _OUR_KEY.fullmatch(raw):
                key = raw
            else:
                bad_keys.append(raw)
                continue
            if key in rows:
                duplicates.append(raw)
                continue
            top = [label_of(t, line) for t in (row.get("top5") or "").split()] if row.get("top5") else []
            if top:
                with_top5.add(key)
            if row.get("prediction", "").strip():
                first = label_of(row["prediction"], line)
                top = [first] + [t for t in top if t != first] if top else [first]
            if not top:
                raise PredictionsError(f"{str(path)!r} line {line}: key {raw!r} has no prediction")
            label = label_of(row["label"], line) if (row.get("label") or "").strip() else None
            rows[key] = (top[:5], label)
    if bad_keys:
        raise PredictionsError(f"{str(path)!r}: {len(bad_keys)} keys are not sample keys ({{shift}}/{{class:04d}}/"
                               f"{{index:02d}} or {{shift}}/{{wnid}}/{{NN}}.jpg): {_examples(bad_keys)}")
    if duplicates:
        raise PredictionsError(f"{str(path)!r}: {len(duplicates)} keys appear more than once: {_examples(duplicates)}; "
                               "give one prediction per sample")
    return _File(rows, release_keys, with_top5)


def _topk_array(tops: list[list[int]], k: int = 5) -> np.ndarray:
    out = np.full((len(tops), k), -1, dtype=np.int64)
    for i, t in enumerate(tops):
        out[i, : len(t)] = t[:k]
    return out


def _top_width(path, f: _File, keys: list[str], shift_id: str) -> int:
    """5 when every predicted key of the shift has a ``top5`` cell, 1 when none has (top-5 then not measured).

    Raises:
        PredictionsError: some rows of the shift have a ``top5`` and others not.
    """
    predicted = [k for k in keys if k in f.rows]
    have = [k for k in predicted if k in f.with_top5]
    if have and len(have) != len(predicted):
        lacking = [k for k in predicted if k not in f.with_top5]
        raise PredictionsError(f"{str(path)!r}: {len(have)} rows of {shift_id} have a top5 and {len(lacking)} do not "
                               f"({_examples(lacking)}); give top5 for every row or for none (top-5 is then "
                               "reported as not available)")
    return 5 if have else 1


def _check_missing(path, missing: dict[str, list[str]], allow_missing: bool) -> None:
    """Refuse samples without a prediction (naming how many and which) unless ``allow_missing``."""
    if missing and not allow_missing:
        n = sum(len(v) for v in missing.values())
        first = [k for v in missing.values() for k in v]
        per_shift = ", ".join(f"{s}: {len(v)}" for s, v in missing.items())
        raise PredictionsError(f"{str(path)!r}: {n} samples have no prediction ({per_shift}): {_examples(first)}; "
                               "predict every sample, or pass allow_missing (--allow-missing) to count them as wrong")


def _keys_digest(keys) -> str:
    import hashlib

    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


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
    from .layout import key_class, key_index, sample_key
    from .masks import RELEASE_PER_CLASS, resolve_masks

    others = [k for k, v in args.items() if k not in ("masks", "classes", "per_class", "class_list", "source", "root")
              and not (v is defaults.get(k) or v == defaults.get(k))]
    if others:
        raise SpecError(f"{others[0]}= applies to a data source; score against one (source=, --source and --root) "
                        "or leave it out")
    masks = resolve_masks(args.get("masks", False))
    classes, per_class = args.get("classes"), args.get("per_class")
    requested = None if classes is None else class_list.resolve(classes)
    layout = per_class or (RELEASE_PER_CLASS if (f.release_keys or masks is not None) else None)
    rows = f.rows
    preds, missing, fingerprints, ignored = {}, {}, {}, 0
    outside, silent = [], []
    for s in shift_ids:
        if masks is not None:
            masks.check_shift(s)
        mine = sorted(k for k in rows if k.split("/", 1)[0] == s)
        wanted = set(requested) if requested is not None else {key_class(k) for k in mine}
        outside += [k for k in mine if key_class(k) not in wanted or (layout and key_index(k) >= layout)]
        if layout:
            expected = [sample_key(s, c, i) for c in sorted(wanted) for i in range(layout)]
        else:  # the files per class are unknown: the file's own keys are the samples
            expected = [k for k in mine if key_class(k) in wanted]
            absent = sorted(wanted - {key_class(k) for k in expected})
            if absent:
                raise PredictionsError(f"{str(path)!r} has no predictions for {len(absent)} requested classes of "
                                       f"{s}: {_examples(absent)}")
        keep = []
        for k in expected:
            flag = True if masks is None else masks.get(k)
            if flag is None:
                silent.append(k)
            elif flag:
                keep.append(k)
            elif k in rows:
                ignored += 1
        absent = [k for k in keep if k not in rows]
        if absent:
            missing[s] = absent
        width = _top_width(path, f, keep, s)
        labels = [rows[k][1] if k in rows and rows[k][1] is not None else key_class(k) for k in keep]
        tops = [rows[k][0] if k in rows else [-1] for k in keep]
        preds[s] = ShiftPredictions(keep, np.array(labels, np.int64), _topk_array(tops, width))
        fingerprints[s] = _keys_digest(keep)
    if outside:
        what = ", ".join(x for x in (classes is not None and f"classes={classes!r}",
                                     layout and f"{layout} files per class") if x)
        raise PredictionsError(f"{str(path)!r}: {len(outside)} keys are outside the selection ({what}): "
                               f"{_examples(outside)}")
    if silent:
        raise MaskError(f"the masks {masks.source!r} say nothing about {len(silent)} scored keys: {_examples(silent)}; "
                        "they cannot be applied to this file")
    return preds, (missing if layout else None), ignored, fingerprints


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
    rows = f.rows
    if not rows:
        raise PredictionsError(f"{str(path)!r} holds no predictions")
    in_file = list(dict.fromkeys(k.split("/", 1)[0] for k in rows))
    if source is None and root is not None:
        from .errors import SpecError

        raise SpecError(f"root={str(root)!r} without a source: say which source it is (source=, --source)")
    shift_ids = resolve_shifts(shifts if shifts is not None else in_file, source, root)
    preds: dict[str, ShiftPredictions] = {}
    fingerprints: dict[str, str] = {}
    manifest = None
    missing_total: dict[str, list[str]] | None = {}
    ignored = 0
    backend_masks = None
    if source is None:
        preds, missing_total, ignored, fingerprints = _score_by_keys(path, f, shift_ids, args, class_list,
                                                                     argument_defaults())
        _check_missing(path, missing_total or {}, allow_missing)
    else:
        unknown: list[str] = []
        for s in shift_ids:
            ds = ShiftedImageNet(s, **{**args, "class_list": class_list})
            expected = dict(zip(ds.keys, ds.targets))
            known = expected if masks in (False, None) else set(
                ShiftedImageNet(s, **{**args, "class_list": class_list, "masks": False}).keys)
            fingerprints[s] = ds.fingerprint()
            manifest, backend_masks = ds.backend.data_fingerprint, ds.backend.masks
            mine = [k for k in rows if k.startswith(s + "/")]
            unknown += [k for k in mine if k not in known]
            ignored += sum(1 for k in mine if k in known and k not in expected)
            keys = sorted(expected)
            missing = [k for k in keys if k not in rows]
            if missing:
                missing_total[s] = missing
            wrong_labels = [k for k in keys if k in rows and rows[k][1] is not None and rows[k][1] != expected[k]]
            if wrong_labels:
                raise PredictionsError(f"{str(path)!r}: the label column disagrees with the source for "
                                       f"{len(wrong_labels)} keys: {_examples(wrong_labels)}")
            width = _top_width(path, f, keys, s)
            tops = [rows[k][0] if k in rows else [-1] for k in keys]
            preds[s] = ShiftPredictions(keys, np.array([expected[k] for k in keys], np.int64),
                                        _topk_array(tops, width))
        others = [k for k in rows if k.split("/", 1)[0] not in shift_ids]
        if unknown or (shifts is None and others):
            bad = unknown + (others if shifts is None else [])
            raise PredictionsError(f"{str(path)!r}: {len(bad)} keys are not samples of {source} {str(root)!r}: "
                                   f"{_examples(bad)}")
        _check_missing(path, missing_total, allow_missing)
    data = data_info(source, root, masks, classes, fingerprints, manifest, backend_masks=backend_masks)
    if source is None:  # the data is the set of scored keys; no copy of the images was checked
        data["fingerprint"] = "keys:" + data["fingerprint"]
        data["per_class"] = args.get("per_class")
    data["predictions_file"] = str(path)
    data["missing_predictions"] = None if missing_total is None else {s: len(v) for s, v in missing_total.items()}
    data["ignored_masked_predictions"] = ignored
    model = {"name": name or Path(path).stem, "spec": f"predictions:{Path(path).name}", "weights": None,
             "preprocessing": "by the submitter", "num_outputs": None, "class_map": None}
    return build_results(preds, class_names=class_list.names, model=model, data=data, label_space=class_list.name,
                         worst_k=worst_k)
