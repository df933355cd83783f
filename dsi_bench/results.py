"""The results document: its schema as code, how it is built from predictions, read, and shown.

Schema ``dsi-bench/results`` version 2 (fractions in [0, 1]); the shape is :class:`ResultsDocument`:

* ``model`` (:class:`ModelInfo`): name, spec, weights, preprocessing, outputs, class map.
* ``data`` (:class:`DataInfo`): source, root, fingerprint (the manifest's, or a hash of the
  shifts' data), masks, classes, per-shift fingerprints.
* ``run`` (:class:`RunConfig`): every setting of the run that can move a number: batch size,
  workers, device, AMP and its dtype, ``channels_last``, JPEG decoding (draft or full, and the
  draft size), class restriction and map, world size, and the dataset arguments. ``None`` where
  not recorded (results written by ``score``, or files of schema version 1).
* ``shifts.<id>`` (:class:`ShiftResult`): every metric of :data:`~dsi_bench.metrics.METRICS`
  with its companion fields, per-class accuracy, the worst classes and the shift's fingerprint.
* ``summary`` (:class:`Summary`): base and mean top-1 and the worst shift, and per rankable
  metric its mean over the shifts other than base and its worst shift (``summary.metrics``).
* ``schema``, ``schema_version``, ``package_version``, ``date``, ``git_commit``, ``hardware``,
  ``label_space``.
* ``predictions`` (:class:`PredictionsInfo`, optional): the per-sample predictions file saved with
  the results (``eval`` keeps it beside them by default: ``NAME.predictions.csv.gz``), which the
  visual report (:mod:`dsi_bench.report`) and ``dsi-bench score`` read.

Files of schema version 1 load (they are upgraded in memory: ``run`` is ``None``, the summary
gains ``metrics``); other versions are refused with a message naming the version.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from .errors import SpecError
from .layout import twin_key
from .metrics import METRICS, ShiftContext, ShiftPredictions, per_class_accuracy
from .version import __version__

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "DataInfo",
    "ModelInfo",
    "Results",
    "ResultsDocument",
    "RunConfig",
    "ShiftPredictions",
    "ShiftResult",
    "Summary",
    "PREDICTIONS_SUFFIX",
    "PredictionsInfo",
    "build_results",
    "describe_data",
    "open_text",
    "predictions_path",
    "read_predictions_file",
    "summarize",
    "twin_key",
    "write_predictions",
]

SCHEMA = "dsi-bench/results"
SCHEMA_VERSION = 2
#: Versions this package reads (older ones are upgraded in memory).
READABLE_VERSIONS = (1, 2)


class ModelInfo(TypedDict, total=False):
    name: str
    spec: str
    weights: str | None
    preprocessing: str
    num_outputs: int | None
    class_map: str | None
    restricted_to_evaluated_classes: bool
    amp: bool


class DataInfo(TypedDict, total=False):
    source: str | None
    root: str | None
    fingerprint: str | None
    masks: str | None
    classes: str | None
    per_class: int | None  # scored without a source only
    shift_fingerprints: dict[str, str]
    predictions_file: str
    missing_predictions: dict[str, int] | None  # None: not checkable (no source, files per class unknown)
    ignored_masked_predictions: int


@dataclass(frozen=True)
class RunConfig:
    """The settings of an evaluation run that can move a number (recorded as ``results["run"]``)."""

    batch_size: int
    num_workers: int
    device: str
    amp: bool
    amp_dtype: str | None
    channels_last: bool
    decode: str  # "draft" (JPEGs decoded at reduced scale before the transform) or "full"
    draft_size: int | None  # the shortest edge draft decoding keeps (None: full decoding)
    restrict: bool
    class_map: str | None
    world_size: int
    dataset: dict  # the ShiftedImageNet arguments, JSON-ready

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ShiftResult(TypedDict, total=False):
    n: int
    correct: int
    top1: float | None
    top1_ci: list[float]
    top5: float | None
    drop_vs_base: float | None
    pairs: int | None
    flips: int | None
    reverse_flips: int | None
    flip_rate: float | None
    reverse_flip_rate: float | None
    paired_base_top1: float | None
    paired_top1: float | None
    mcnemar_p: float | None
    fingerprint: str | None
    shift_name: str  # what the shift was asked for as (eval, probe), and its prompt template
    template: str
    classes: list[int]
    per_class_n: list[int]
    per_class_top1: list[float | None]
    worst_classes: list[dict]


class MetricSummary(TypedDict):
    mean: float | None
    worst_shift: str | None
    worst: float | None


class Summary(TypedDict):
    base_top1: float | None
    mean_top1: float | None
    worst_shift: str | None
    worst_top1: float | None
    shifts: list[str]
    metrics: dict[str, MetricSummary]


class PredictionsInfo(TypedDict):
    path: str  # relative to the results file's folder when beside it, else absolute
    rows: int
    sha256: str
    confidence: bool  # whether the file has the top-1 probability of each sample


class ResultsDocument(TypedDict, total=False):
    schema: str
    schema_version: int
    package_version: str
    date: str
    git_commit: str | None
    model: ModelInfo
    data: DataInfo
    run: dict | None
    hardware: dict
    label_space: dict
    summary: Summary
    shifts: dict[str, ShiftResult]
    predictions: PredictionsInfo


def _worst_classes(ctx: ShiftContext, class_names: list[str], worst_k: int) -> list[dict]:
    if ctx.base is None:
        return []
    t, s, labels = ctx.pairs
    worst = []
    for c in sorted(set(labels.tolist())):
        sel = labels == c
        b_acc, s_acc = float(t[sel].mean()), float(s[sel].mean())
        worst.append({"class": c, "name": class_names[c], "pairs": int(sel.sum()),
                      "base_top1": b_acc, "top1": s_acc, "drop": b_acc - s_acc})
    worst.sort(key=lambda r: (-r["drop"], r["class"]))
    return worst[:worst_k]


def _shift_result(ctx: ShiftContext, class_names: list[str], worst_k: int) -> ShiftResult:
    out: dict = {}
    for metric in METRICS.values():
        out.update(metric.compute(ctx))
    p = ctx.p
    classes = sorted(set(p.labels.tolist()))
    per_n, per_acc = per_class_accuracy(p.labels, p.correct, len(class_names))
    out.update({"classes": classes, "per_class_n": [per_n[c] for c in classes],
                "per_class_top1": [per_acc[c] for c in classes],
                "worst_classes": _worst_classes(ctx, class_names, worst_k)})
    return out


def build_results(
    predictions: dict[str, ShiftPredictions],
    *,
    class_names: list[str],
    model: dict,
    data: dict,
    label_space: str = "imagenet",
    hardware: dict | None = None,
    run: RunConfig | None = None,
    worst_k: int = 10,
    extra: dict | None = None,
    shift_defs: dict | None = None,
) -> Results:
    """Compute every metric from per-sample predictions (the same code for ``eval``, ``score`` and ``probe``).

    ``shift_defs`` (shift id -> :class:`~dsi_bench.shifts.Shift`) adds what each shift was (``shift_name``,
    ``template``) to its entry, so a custom shift's samples can be found again from its id (the report
    regenerates them from the template)."""
    base = predictions.get("base")
    data = dict(data)
    data.setdefault("shift_fingerprints", {})
    shifts = {}
    for shift_id, p in predictions.items():
        shifts[shift_id] = _shift_result(ShiftContext(shift_id, p, base), class_names, worst_k)
        shifts[shift_id]["fingerprint"] = data["shift_fingerprints"].get(shift_id)
        if shift_defs and shift_id in shift_defs:
            shifts[shift_id].update(shift_name=shift_defs[shift_id].name, template=shift_defs[shift_id].template)
    document = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "model": model,
        "data": data,
        "run": None if run is None else run.to_dict(),
        "hardware": hardware or {},
        "label_space": {"name": label_space, "num_classes": len(class_names)},
        "summary": summarize(shifts),
        "shifts": shifts,
        **(extra or {}),
    }
    return Results(document)


def summarize(shifts: dict) -> Summary:
    """Base and mean top-1, the worst shift, and per rankable metric its mean and worst shift.

    Means are over the shifts other than ``base`` (over ``base`` alone when nothing else was
    evaluated); metrics a shift does not define (``None``) are left out of its mean.
    """
    metrics: dict[str, MetricSummary] = {}
    for metric in METRICS.values():
        if not metric.rankable:
            continue
        scored = {s: m[metric.name] for s, m in shifts.items() if m.get(metric.name) is not None}
        shifted = {s: v for s, v in scored.items() if s != "base"} or scored
        worst = metric.worst(shifted) if shifted else None
        metrics[metric.name] = {"mean": float(np.mean(list(shifted.values()))) if shifted else None,
                                "worst_shift": worst, "worst": shifted.get(worst) if worst else None}
    top1 = metrics["top1"]
    return {
        "base_top1": shifts.get("base", {}).get("top1"),
        "mean_top1": top1["mean"],
        "worst_shift": top1["worst_shift"],
        "worst_top1": top1["worst"],
        "shifts": list(shifts),
        "metrics": metrics,
    }


def describe_data(document: dict) -> dict[str, str]:
    """What a result was computed on, in words, for table headers and leaderboard groups.

    Returns ``{"data", "fingerprint", "masks", "decode"}``: the source and root (or the
    predictions file scored without a source), the data fingerprint in full, the masks applied
    (``none (every sample)`` when none), and the JPEG decoding (``full``, ``draft ...``, or
    ``not recorded`` for scored predictions and schema-1 files).
    """
    data, run = document.get("data") or {}, document.get("run")
    if data.get("source"):
        where = f"{data['source']} {data['root']}" if data.get("root") else str(data["source"])
    elif data.get("predictions_file"):
        where = f"predictions file {data['predictions_file']}, no source (labels from the file)"
    else:
        where = "not recorded"
    selection = [f"{k} {data[k]}" for k in ("classes", "per_class") if data.get(k) is not None]
    if selection:
        where += f" [{', '.join(selection)}]"
    if run and run.get("decode") == "draft":
        decode = f"draft (JPEGs decoded at reduced scale, shorter edge >= {run.get('draft_size')} px)"
    elif run and run.get("decode"):
        decode = str(run["decode"])
    else:
        decode = "not recorded (predictions scored from a file)" if data.get("predictions_file") else "not recorded"
    return {"data": where, "fingerprint": str(data.get("fingerprint")), "masks": data.get("masks") or
            "none (every sample)", "decode": decode}


def _git_commit() -> str | None:
    """The commit of the dsi-bench checkout in use, when it is one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _upgrade(data: dict, where: str) -> dict:
    """A document of an older readable schema version, in the current shape."""
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise SpecError(f"{where} has results schema version {version!r}; this dsi-bench reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))}"
                        + (": upgrade dsi-bench" if isinstance(version, int) and version > SCHEMA_VERSION else
                           ": re-run the evaluation with this dsi-bench"))
    if version == 1:  # v1 had no run section and only top-1 in the summary; the metrics are the same
        data = {**data, "schema_version": SCHEMA_VERSION, "run": None, "upgraded_from": 1}
        data["summary"] = summarize(data.get("shifts", {}))
    return data


class Results:
    """A results document (see the module docs); ``results["shifts"]["in_the_snow"]["top1"]``.

    ``predictions`` holds the per-sample predictions a run computed (``None`` for a loaded file) and
    ``predictions_file`` where they were written already, if anywhere; :meth:`save` keeps them.
    """

    def __init__(self, data: ResultsDocument | dict):
        self.data = data
        self.predictions: dict[str, ShiftPredictions] | None = None
        self.predictions_file: Path | None = None

    def __getitem__(self, key):
        return self.data[key]

    def __repr__(self) -> str:
        s = self.data["summary"]
        mean = f"{s['mean_top1']:.4f}" if s["mean_top1"] is not None else "-"
        return f"Results({self.data['model'].get('name')!r}, {len(self.data['shifts'])} shifts, mean top-1 {mean})"

    @property
    def shifts(self) -> dict[str, ShiftResult]:
        return self.data["shifts"]

    @property
    def run(self) -> dict | None:
        """The run's settings (:class:`RunConfig` as a dict), or ``None`` where not recorded."""
        return self.data.get("run")

    def save(self, path: str | os.PathLike, *, predictions: bool = True) -> Path:
        """Write the results atomically; a write that fails (disk full) keeps them elsewhere.

        With ``predictions`` (default) the run's per-sample predictions go beside them
        (:func:`predictions_path`) unless they were written already, and the results record the
        file (``results["predictions"]``: path, rows, sha256); without, they record none.

        Raises:
            CacheError: naming ``path`` and where the results were kept (see :func:`~dsi_bench.files.write_or_keep`).
        """
        from .files import atomic_write, write_or_keep

        path = Path(path).expanduser()
        if predictions and self.predictions is not None and self.predictions_file is None:
            target = predictions_path(path)
            self.predictions_file = write_or_keep(target, lambda p: write_predictions(self.predictions, p),
                                                  "the predictions")
        if predictions and self.predictions_file is not None:
            self.data["predictions"] = _predictions_info(self.predictions_file, path.parent)
        elif not predictions:
            self.data.pop("predictions", None)  # the file it names is not kept with these results
        return write_or_keep(path, lambda p: atomic_write(p, self.to_bytes()), "the results")

    def predictions_source(self, results_path: str | os.PathLike | None) -> Path | None:
        """The predictions file these results record (saved with them, or the file ``score`` read), or ``None``.

        Raises:
            SpecError: a relative path that leads outside the results file's folder.
        """
        info = self.data.get("predictions")
        name = info.get("path") if isinstance(info, dict) else (self.data.get("data") or {}).get("predictions_file")
        if not name:
            return None
        p = Path(name)
        if p.is_absolute():
            return p
        base = Path(results_path).expanduser().resolve().parent if results_path is not None else Path.cwd()
        if info is not None and ".." in p.parts:
            raise SpecError(f"the results at {str(results_path)!r} name predictions {name!r} outside their folder")
        return base / p

    def to_bytes(self) -> bytes:
        """The results file's bytes (indented JSON)."""
        return (json.dumps(self.data, indent=1) + "\n").encode()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Results:
        """Read a results file, checking its schema (version 1 files are upgraded in memory).

        Raises:
            SpecError: not JSON, not a dsi-bench results file, or a schema version this package
                does not read.
        """
        from .files import read_json

        path = Path(path)
        data = read_json(path, "results file", SpecError)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise SpecError(f"{str(path)!r} is not a dsi-bench results file (schema {SCHEMA!r})")
        results = cls(_upgrade(data, repr(str(path))))
        if isinstance(data.get("predictions"), dict):  # saved elsewhere, the results still find them
            try:
                found = results.predictions_source(path)
            except SpecError:
                found = None
            results.predictions_file = found if found is not None and found.is_file() else None
        return results

    def header(self) -> list[str]:
        """The lines above :meth:`table`: model, data, masks and JPEG decoding, missing predictions."""
        d = describe_data(self.data)
        lines = [f"model: {self.data['model'].get('name')}", f"data: {d['data']}", f"fingerprint: {d['fingerprint']}",
                 f"masks: {d['masks']}   decode: {d['decode']}"]
        data = self.data.get("data") or {}
        missing = data.get("missing_predictions")
        if missing:
            lines.append("missing predictions counted as wrong: " + ", ".join(f"{s} {n}" for s, n in missing.items()))
        elif "missing_predictions" in data and missing is None:
            lines.append("missing predictions: not checked (no source, and the files per class are unknown)")
        if data.get("ignored_masked_predictions"):
            lines.append(f"predictions for masked-out samples ignored: {data['ignored_masked_predictions']}")
        return lines

    def table(self, header: bool = True) -> str:
        """A per-shift text table of every metric in :data:`~dsi_bench.metrics.METRICS` (top-1 with its 95% CI),
        below :meth:`header` (``header=False``: the table alone). ``-`` marks a value that was not measured."""
        header_lines = self.header() if header else []
        header = ["shift"]
        for m in METRICS.values():
            header.append(m.label)
            if m.interval:
                header.append("95% CI")
        rows = [tuple(header)]
        for s, values in self.shifts.items():
            row = [s]
            for m in METRICS.values():
                row.append(m.format(values.get(m.name)))
                if m.interval:
                    lo, hi = values[m.interval]
                    row.append(f"{100 * lo:.1f}-{100 * hi:.1f}")
            rows.append(tuple(row))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        s = self.data["summary"]
        if s["mean_top1"] is not None:
            lines.append(f"mean top-1 over shifts: {100 * s['mean_top1']:.1f}%  worst: {s['worst_shift']} "
                         f"({100 * s['worst_top1']:.1f}%)   (all numbers in %)")
        return "\n".join(header_lines + lines)


# ---------------------------------------------------------------------------------------------- predictions files
#: What :meth:`Results.save` appends to the results file's stem for the predictions beside it.
PREDICTIONS_SUFFIX = ".predictions.csv.gz"


def predictions_path(results_path: str | os.PathLike) -> Path:
    """Where the predictions of ``results_path`` go: ``resnet50.json`` -> ``resnet50.predictions.csv.gz``."""
    p = Path(results_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(stem + PREDICTIONS_SUFFIX)


def _predictions_info(file: Path, results_dir: Path) -> PredictionsInfo:
    from .files import sha256_file

    file = Path(file).expanduser().resolve()
    try:
        name = file.relative_to(results_dir.expanduser().resolve()).as_posix()
    except ValueError:
        name = str(file)
    with open_text(file) as f:
        header = f.readline().strip().split(",")
        rows = sum(1 for _ in f)
    return {"path": name, "rows": rows, "sha256": sha256_file(file), "confidence": "confidence" in header}


def open_text(path: str | os.PathLike):
    """A predictions CSV opened for reading as text, gzip-compressed or not (told by its first bytes)."""
    import gzip

    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    return open(path, newline="", encoding="utf-8-sig")  # -sig: a byte-order mark is not part of the header


def write_predictions(preds: dict[str, ShiftPredictions], path: str | os.PathLike) -> None:
    """Per-sample predictions as CSV: ``key,label,prediction,top5[,confidence]`` (top5 space-separated;
    the confidence column where every shift has one). Gzip-compressed when ``path`` ends in ``.gz``
    (about 17 bytes a sample), written atomically."""
    import csv
    import gzip
    import io

    from .files import atomic_write

    confidence = all(p.confidence is not None for p in preds.values())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["key", "label", "prediction", "top5"] + (["confidence"] if confidence else []))
    for p in preds.values():
        conf = [f"{c:.4f}" for c in p.confidence.tolist()] if confidence else None
        for i, (key, label, top) in enumerate(zip(p.keys, p.labels.tolist(), p.topk.tolist())):
            row = [key, label, top[0], " ".join(str(t) for t in top)]
            w.writerow(row + [conf[i]] if confidence else row)
    data = buf.getvalue().encode()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write(path, data)


def read_predictions_file(path: str | os.PathLike) -> dict[str, ShiftPredictions]:
    """The predictions ``eval`` wrote (:func:`write_predictions`), per shift, sorted by key.

    Raises:
        SpecError: a missing file, or one that is not in the format ``eval`` writes.
    """
    import csv

    by_shift: dict[str, tuple[list, list, list, list]] = {}
    try:
        with open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, [])
            if header[:4] != ["key", "label", "prediction", "top5"]:
                raise SpecError(f"{str(path)!r} is not a predictions file written by eval (its header is "
                                f"{','.join(header)!r}); re-run eval with --results to keep one")
            has_conf = len(header) > 4 and header[4] == "confidence"
            for row in reader:
                keys, labels, tops, confs = by_shift.setdefault(row[0].split("/", 1)[0], ([], [], [], []))
                keys.append(row[0])
                labels.append(int(row[1]))
                top = [int(t) for t in row[3].split()][:5] or [int(row[2])]
                tops.append((top + [-1] * 5)[:5])
                if has_conf:
                    confs.append(float(row[4]))
    except FileNotFoundError as e:
        raise SpecError(f"predictions file {str(path)!r} does not exist") from e
    except (ValueError, IndexError, OSError, EOFError) as e:
        raise SpecError(f"{str(path)!r} is not a readable predictions file written by eval ({e})") from e
    return {s: ShiftPredictions(k, np.asarray(lb, np.int64), np.asarray(t, np.int64).reshape(-1, 5),
                                np.asarray(c, np.float32) if c else None).sorted()
            for s, (k, lb, t, c) in by_shift.items()}
