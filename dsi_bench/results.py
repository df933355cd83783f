"""Per-sample predictions -> per-shift metrics -> a versioned results JSON.

Schema ``dsi-bench/results`` version 1 (fractions in [0, 1])::

    {"schema": "dsi-bench/results", "schema_version": 1, "package_version", "date", "git_commit",
     "model": {"name", "spec", "weights", "preprocessing", "num_outputs", "class_map"},
     "data": {"source", "root", "fingerprint", "masks", "classes"},
     "hardware": {...}, "label_space": {"name", "num_classes"},
     "summary": {"base_top1", "mean_top1", "worst_shift", "worst_top1", "shifts"},
     "shifts": {"<id>": {"n", "top1", "top1_ci", "top5", "drop_vs_base", "pairs", "flip_rate",
                         "reverse_flip_rate", "mcnemar_p", "fingerprint", "classes", "per_class_n",
                         "per_class_top1", "worst_classes": [...]}}}

``mean_top1`` averages top-1 over the evaluated shifts other than ``base`` (over ``base`` alone
when nothing else was evaluated); ``worst_*`` is the lowest of those.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SpecError
from .metrics import paired_flips, per_class_accuracy, wilson_interval
from .version import __version__

__all__ = ["SCHEMA", "SCHEMA_VERSION", "Results", "ShiftPredictions", "build_results", "twin_key"]

SCHEMA = "dsi-bench/results"
SCHEMA_VERSION = 1


def twin_key(key: str) -> str:
    """The unshifted twin of a sample: ``in_the_snow/0207/03`` -> ``base/0207/03``."""
    return "base/" + key.split("/", 1)[1]


@dataclass
class ShiftPredictions:
    """One shift's predictions: keys, true labels, top-k predicted labels (``-1`` = none)."""

    keys: list[str]
    labels: np.ndarray
    topk: np.ndarray  # (n, k) label-space indices, best first

    def sorted(self) -> ShiftPredictions:
        order = sorted(range(len(self.keys)), key=self.keys.__getitem__)
        return ShiftPredictions([self.keys[i] for i in order], self.labels[order], self.topk[order])

    @property
    def correct(self) -> np.ndarray:
        return self.topk[:, 0] == self.labels

    @property
    def correct5(self) -> np.ndarray | None:
        if self.topk.shape[1] < 5:
            return None
        return (self.topk[:, :5] == self.labels[:, None]).any(axis=1)


def _shift_metrics(p: ShiftPredictions, base: ShiftPredictions | None, class_names: list[str], worst_k: int) -> dict:
    n = len(p.keys)
    correct = p.correct
    right = int(correct.sum())
    c5 = p.correct5
    classes = sorted(set(p.labels.tolist()))
    per_n, per_acc = per_class_accuracy(p.labels, correct, len(class_names))
    out = {
        "n": n,
        "correct": right,
        "top1": right / n if n else None,
        "top1_ci": list(wilson_interval(right, n)),
        "top5": float(c5.mean()) if c5 is not None and n else None,
        "classes": classes,
        "per_class_n": [per_n[c] for c in classes],
        "per_class_top1": [per_acc[c] for c in classes],
    }
    if base is not None and base is not p:
        index = {k: i for i, k in enumerate(base.keys)}
        mine, theirs = [], []
        for i, k in enumerate(p.keys):
            j = index.get(twin_key(k))
            if j is not None:
                mine.append(i)
                theirs.append(j)
        t = base.correct[theirs] if theirs else np.zeros(0, bool)
        s = correct[mine] if mine else np.zeros(0, bool)
        out.update(paired_flips(t, s))
        labels = p.labels[mine] if mine else np.zeros(0, np.int64)
        worst = []
        for c in sorted(set(labels.tolist())):
            sel = labels == c
            b_acc, s_acc = float(t[sel].mean()), float(s[sel].mean())
            worst.append({"class": c, "name": class_names[c], "pairs": int(sel.sum()),
                          "base_top1": b_acc, "top1": s_acc, "drop": b_acc - s_acc})
        worst.sort(key=lambda r: (-r["drop"], r["class"]))
        out["worst_classes"] = worst[:worst_k]
    else:
        out.update({"pairs": None, "flips": None, "reverse_flips": None, "flip_rate": None,
                    "reverse_flip_rate": None, "mcnemar_p": None, "worst_classes": []})
    return out


def build_results(
    predictions: dict[str, ShiftPredictions],
    *,
    class_names: list[str],
    model: dict,
    data: dict,
    label_space: str = "imagenet",
    hardware: dict | None = None,
    worst_k: int = 10,
    extra: dict | None = None,
) -> Results:
    """Compute every metric from per-sample predictions (the same code for ``eval`` and ``score``)."""
    base = predictions.get("base")
    shifts = {}
    for shift_id, p in predictions.items():
        shifts[shift_id] = _shift_metrics(p, base, class_names, worst_k)
    base_top1 = shifts.get("base", {}).get("top1")
    for shift_id, m in shifts.items():
        ok = shift_id != "base" and base_top1 is not None and m["top1"] is not None
        m["drop_vs_base"] = base_top1 - m["top1"] if ok else None
    data = dict(data)
    data.setdefault("shift_fingerprints", {})
    for shift_id in shifts:
        shifts[shift_id]["fingerprint"] = data["shift_fingerprints"].get(shift_id)
    result = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "model": model,
        "data": data,
        "hardware": hardware or {},
        "label_space": {"name": label_space, "num_classes": len(class_names)},
        "summary": summarize(shifts),
        "shifts": shifts,
        **(extra or {}),
    }
    return Results(result)


def summarize(shifts: dict) -> dict:
    scored = {s: m["top1"] for s, m in shifts.items() if m.get("top1") is not None}
    shifted = {s: v for s, v in scored.items() if s != "base"} or scored
    worst = min(shifted, key=lambda s: (shifted[s], s)) if shifted else None
    return {
        "base_top1": scored.get("base"),
        "mean_top1": float(np.mean(list(shifted.values()))) if shifted else None,
        "worst_shift": worst,
        "worst_top1": shifted.get(worst) if worst else None,
        "shifts": list(shifts),
    }


def _git_commit() -> str | None:
    """The commit of the dsi-bench checkout in use, when it is one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


class Results:
    """A results document (see the module docs); ``results["shifts"]["in_the_snow"]["top1"]``."""

    def __init__(self, data: dict):
        self.data = data

    def __getitem__(self, key):
        return self.data[key]

    def __repr__(self) -> str:
        s = self.data["summary"]
        mean = f"{s['mean_top1']:.4f}" if s["mean_top1"] is not None else "-"
        return f"Results({self.data['model'].get('name')!r}, {len(self.data['shifts'])} shifts, mean top-1 {mean})"

    @property
    def shifts(self) -> dict:
        return self.data["shifts"]

    def save(self, path: str | os.PathLike) -> Path:
        from .files import atomic_write

        return atomic_write(path, (json.dumps(self.data, indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Results:
        """Read a results file, checking its schema.

        Raises:
            SpecError: not JSON, not a dsi-bench results file, or a newer schema version.
        """
        from .files import read_json

        path = Path(path)
        data = read_json(path, "results file", SpecError)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise SpecError(f"{str(path)!r} is not a dsi-bench results file (schema {SCHEMA!r})")
        if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
            raise SpecError(f"{str(path)!r} has results schema version {data['schema_version']}; this dsi-bench "
                            f"reads up to {SCHEMA_VERSION}: upgrade dsi-bench")
        return cls(data)

    def table(self) -> str:
        """A per-shift text table: n, top-1 with its interval, top-5, drop and flips vs base."""
        rows = [("shift", "n", "top-1", "95% CI", "top-5", "drop", "flip", "rev.flip", "McNemar p")]

        def pct(v):
            return "-" if v is None else f"{100 * v:.1f}"

        for s, m in self.shifts.items():
            lo, hi = m["top1_ci"]
            p = m.get("mcnemar_p")
            rows.append((s, str(m["n"]), pct(m["top1"]), f"{100 * lo:.1f}-{100 * hi:.1f}", pct(m["top5"]),
                         pct(m.get("drop_vs_base")), pct(m.get("flip_rate")), pct(m.get("reverse_flip_rate")),
                         "-" if p is None else f"{p:.2g}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        s = self.data["summary"]
        if s["mean_top1"] is not None:
            lines.append(f"mean top-1 over shifts: {100 * s['mean_top1']:.1f}%  worst: {s['worst_shift']} "
                         f"({100 * s['worst_top1']:.1f}%)   (all numbers in %)")
        return "\n".join(lines)
