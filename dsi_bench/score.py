"""Score a predictions file against a source: how a leaderboard takes a submission without running code.

The CSV has columns ``key`` and ``prediction`` (a label index or WordNet id), optionally ``label``
and ``top5`` (space-separated). Keys are the sources' keys: ``{shift}/{class:04d}/{index:02d}``,
or for the release ``{shift}/{wordnet_id}/{file}`` (``in_the_snow/n01440764/07.jpg``); both
name the same sample. Against a source (``source=``, ``root=``), labels come from the source,
and keys that are unknown, duplicated, or missing are reported by name; predictions for samples
the masks remove are ignored (and counted). The metrics are computed by the same code as
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
    path = Path(path).expanduser()
    by_wnid = {c.wnid: c.index for c in class_list if c.wnid}
    try:
        handle = open(path, newline="", encoding="utf-8")
    except FileNotFoundError as cause:
        raise PredictionsError(f"predictions file {str(path)!r} does not exist") from cause
    rows: dict[str, tuple[list[int], int | None]] = {}
    duplicates, bad_keys = [], []
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
            elif _OUR_KEY.fullmatch(raw):
                key = raw
            else:
                bad_keys.append(raw)
                continue
            if key in rows:
                duplicates.append(raw)
                continue
            top = [label_of(t, line) for t in (row.get("top5") or "").split()] if row.get("top5") else []
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
    return rows


def _topk_array(tops: list[list[int]], k: int = 5) -> np.ndarray:
    out = np.full((len(tops), k), -1, dtype=np.int64)
    for i, t in enumerate(tops):
        out[i, : len(t)] = t[:k]
    return out


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
            from the ``label`` column or the keys, and nothing can be checked for missing samples.
        shifts: which shifts to score (default: every shift in the file).
        allow_missing: count samples without a prediction as wrong (and list them in
            ``data.missing_predictions``) instead of refusing.

    Deprecated (0.2): ``source=``, ``root=``, ``masks=``, ``classes=``, ``per_class=``,
    ``class_list=`` as keywords of ``score_predictions`` itself.

    Raises:
        PredictionsError: unknown, duplicate or (without ``allow_missing``) missing keys.
    """
    from .compat import reject_unknown
    from .datasets import ShiftedImageNet, label_space
    from .evaluate import data_arguments, data_info, resolve_shifts

    args = data_arguments(data, (), legacy, "score_predictions")
    reject_unknown(legacy, "score_predictions")
    source, root = args.get("source"), args.get("root")
    masks, classes = args.get("masks", False), args.get("classes")
    class_list = label_space(args)  # class_list=, else what the data records (a custom bank's), else ImageNet-1k
    rows = read_predictions(path, class_list)
    if not rows:
        raise PredictionsError(f"{str(path)!r} holds no predictions")
    in_file = list(dict.fromkeys(k.split("/", 1)[0] for k in rows))
    shift_ids = resolve_shifts(shifts if shifts is not None else in_file, source, root)
    preds: dict[str, ShiftPredictions] = {}
    fingerprints: dict[str, str] = {}
    manifest = None
    missing_total: dict[str, list[str]] = {}
    ignored = 0
    backend_masks = None
    if source is None:
        for s in shift_ids:
            keys = sorted(k for k in rows if k.startswith(s + "/"))
            labels = [rows[k][1] if rows[k][1] is not None else int(k.split("/")[1]) for k in keys]
            preds[s] = ShiftPredictions(keys, np.array(labels, np.int64), _topk_array([rows[k][0] for k in keys]))
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
            tops = [rows[k][0] if k in rows else [-1] for k in keys]
            preds[s] = ShiftPredictions(keys, np.array([expected[k] for k in keys], np.int64), _topk_array(tops))
        others = [k for k in rows if k.split("/", 1)[0] not in shift_ids]
        if unknown or (shifts is None and others):
            bad = unknown + (others if shifts is None else [])
            raise PredictionsError(f"{str(path)!r}: {len(bad)} keys are not samples of {source} {str(root)!r}: "
                                   f"{_examples(bad)}")
        if missing_total and not allow_missing:
            n = sum(len(v) for v in missing_total.values())
            first = [k for v in missing_total.values() for k in v]
            raise PredictionsError(f"{str(path)!r}: {n} samples have no prediction: {_examples(first)}; predict every "
                                   "sample, or pass allow_missing (--allow-missing) to count them as wrong")
    data = data_info(source, root, masks, classes, fingerprints, manifest, backend_masks=backend_masks) if source else {
        "source": None, "root": None, "fingerprint": None, "masks": None, "classes": None}
    data["predictions_file"] = str(path)
    data["missing_predictions"] = {s: len(v) for s, v in missing_total.items()}
    data["ignored_masked_predictions"] = ignored
    model = {"name": name or Path(path).stem, "spec": f"predictions:{Path(path).name}", "weights": None,
             "preprocessing": "by the submitter", "num_outputs": None, "class_map": None}
    return build_results(preds, class_names=class_list.names, model=model, data=data, label_space=class_list.name,
                         worst_k=worst_k)
