"""Leaderboards from results files: Markdown, CSV, a static sortable HTML page, and plots.

Results are ranked by one metric of :data:`~dsi_bench.metrics.METRICS` (``sort``, default
``top1``): its mean over the shifts other than base (``summary.metrics[sort].mean``), in the
metric's direction, with its base value and worst shift beside it and its per-shift values.
Results computed on different data (different ``data.fingerprint``) are never averaged or
ranked together: each group gets its own table, and every group but the largest is flagged.
Results files are read through :meth:`~dsi_bench.results.Results.load` (older schema versions
are upgraded; unreadable ones are refused by name).

Plots (PNG, matplotlib): per model, per-shift top-1 with 95% intervals; a models x shifts
heatmap; and an effective-robustness scatter (base vs mean shifted top-1 on logit axes, with
a least-squares line across models, also in logit space).
"""

from __future__ import annotations

import csv
import html
import io
import logging
import math
import os
import re
from pathlib import Path

from .errors import OptionalDependencyError, SpecError
from .files import atomic_write
from .metrics import METRICS, Metric, rankable_metrics
from .results import Results

__all__ = ["load_results", "make_leaderboard"]

logger = logging.getLogger(__name__)


def load_results(source) -> list[tuple[str, Results]]:
    """``(path, Results)`` for a folder of ``*.json`` results (recursive) or a list of paths.

    Raises:
        SpecError: no results found, or unreadable files (a schema version this package does not read).
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise SpecError(f"results folder {str(folder)!r} does not exist")
        paths = sorted(p for p in folder.rglob("*.json"))
    else:
        paths = [Path(p) for p in source]
    loaded = []
    for p in paths:
        try:
            loaded.append((str(p), Results.load(p)))
        except SpecError as e:
            if "not a dsi-bench results file" in str(e) and isinstance(source, (str, os.PathLike)):
                logger.info("skipping %s: %s", p, e)
                continue
            raise
    if not loaded:
        raise SpecError(f"no dsi-bench results files in {source!r}; write them with `dsi-bench eval --results F.json`")
    return loaded


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "model"


def _cell(metric: Metric, v) -> str:
    return "–" if v is None else metric.format(v)


def _groups(loaded: list[tuple[str, Results]], metric: Metric) -> list[list[tuple[str, Results]]]:
    groups: dict[str, list] = {}
    for p, r in loaded:
        groups.setdefault(str(r["data"].get("fingerprint")), []).append((p, r))
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0][0]))
    sign = 1 if metric.higher_is_better else -1

    def key(pr):
        mean = pr[1]["summary"]["metrics"][metric.name]["mean"]
        return (mean is None, -sign * (mean or 0.0), pr[1]["model"]["name"])

    return [sorted(g, key=key) for g in ordered]


def _rows(group, shifts: list[str], metric: Metric) -> list[dict]:
    rows = []
    for rank, (path, r) in enumerate(group, start=1):
        m = r["summary"]["metrics"][metric.name]
        row = {
            "rank": rank,
            "model": r["model"]["name"],
            "mean": m["mean"],
            "base": r.shifts.get("base", {}).get(metric.name),
            "worst_shift": m["worst_shift"],
            "worst": m["worst"],
            "shifts_evaluated": len(r.shifts),
            "file": Path(path).name,
        }
        for sh in shifts:
            row[sh] = r.shifts.get(sh, {}).get(metric.name)
        rows.append(row)
    return rows


def make_leaderboard(results, out: str | os.PathLike, *, plots: bool = True, sort: str = "top1") -> dict[str, Path]:
    """Write ``leaderboard.md``, ``.csv``, ``.html`` and ``plots/*.png`` into ``out``.

    Args:
        results: a folder of results files (searched recursively) or a list of paths.
        out: the output folder.
        plots: also draw the PNG plots (needs matplotlib).
        sort: the metric to rank by (any of :func:`~dsi_bench.metrics.rankable_metrics`): its mean
            over the shifts other than base, best first in the metric's own direction.

    Returns:
        ``{"md", "csv", "html", "plots": [...], "groups": n}`` paths and counts.

    Raises:
        SpecError: an unknown or unrankable ``sort``; no or unreadable results.
    """
    from .files import ensure_writable_dir
    from .validate import check_choice

    metric = METRICS[check_choice(sort, "metric to sort by", rankable_metrics())]
    loaded = load_results(results)
    out = ensure_writable_dir(out, "leaderboard folder")
    groups = _groups(loaded, metric)
    all_shifts = list(dict.fromkeys(s for _, r in loaded for s in r.shifts))
    shifts = (["base"] if "base" in all_shifts else []) + [s for s in all_shifts if s != "base"]
    what = f"{metric.description[0].upper()}{metric.description[1:]}" + (" (%)" if metric.fmt == "pct" else "")
    better = "higher" if metric.higher_is_better else "lower"

    md = ["# dsi-bench leaderboard", "",
          f"{what} per shift; ranked by the mean over the shifts other than base ({better} is better). "
          "Results on different data are listed separately and not ranked together.", ""]
    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator="\n")
    name = metric.name
    header = ["group", "rank", "model", f"mean_{name}", f"base_{name}", "worst_shift", f"worst_{name}",
              "shifts_evaluated", *shifts, "data_fingerprint", "file"]
    writer.writerow(header)
    html_tables = []
    for gi, group in enumerate(groups):
        fingerprint = group[0][1]["data"].get("fingerprint")
        source = group[0][1]["data"].get("source")
        rows = _rows(group, shifts, metric)
        title = "Main comparison" if gi == 0 else f"Group {gi + 1}: different data (not comparable with the above)"
        md += [f"## {title}", "", f"Data: {source}, fingerprint `{str(fingerprint)[:24]}`", ""]
        if len({r["shifts_evaluated"] for r in rows}) > 1:
            md += ["Note: these models were evaluated on different sets of shifts; their means cover different "
                   "shifts.", ""]
        shown = [s for s in shifts if s != "base"]  # base has its own column
        cols = ["#", "model", "mean", "base", "worst shift", *shown]
        md.append("| " + " | ".join(cols) + " |")
        md.append("|" + "|".join("---" for _ in cols) + "|")
        for r in rows:
            worst = f"{r['worst_shift']} ({_cell(metric, r['worst'])})" if r["worst_shift"] else "–"
            md.append("| " + " | ".join([str(r["rank"]), r["model"].replace("|", "\\|"), _cell(metric, r["mean"]),
                                         _cell(metric, r["base"]), worst, *[_cell(metric, r[s]) for s in shown]])
                      + " |")
            writer.writerow([gi + 1, r["rank"], r["model"], r["mean"], r["base"], r["worst_shift"],
                             r["worst"], r["shifts_evaluated"], *[r[s] for s in shifts], fingerprint, r["file"]])
        md.append("")
        html_tables.append(_html_table(title, source, fingerprint, rows, shifts, gi, metric))
    paths = {"md": atomic_write(out / "leaderboard.md", "\n".join(md).encode()),
             "csv": atomic_write(out / "leaderboard.csv", csv_buf.getvalue().encode()),
             "html": atomic_write(out / "leaderboard.html", _html_page(html_tables, what).encode()),
             "plots": [], "groups": len(groups)}
    if plots:
        paths["plots"] = _plots(groups[0], shifts, out / "plots", metric)
    return paths


def _html_table(title, source, fingerprint, rows, shifts, gi, metric: Metric) -> str:
    cols = [("#", "rank"), ("model", "model"), ("mean", "mean"), ("base", "base"),
            ("worst shift", "worst_shift"), ("worst", "worst")] + [(s, s) for s in shifts if s != "base"]
    head = "".join(f'<th onclick="sortTable({gi},{i})">{html.escape(c)}</th>' for i, (c, _) in enumerate(cols))
    body = []
    for r in rows:
        cells = []
        for _, key in cols:
            v = r[key]
            if isinstance(v, float):
                cells.append(f'<td data-v="{v:.6f}">{_cell(metric, v)}</td>')
            elif v is None:
                cells.append('<td data-v="-1">–</td>')
            else:
                cells.append(f'<td data-v="{html.escape(str(v))}">{html.escape(str(v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h2>{html.escape(title)}</h2><p>Data: {html.escape(str(source))}, fingerprint "
            f"<code>{html.escape(str(fingerprint)[:24])}</code></p>"
            f'<table id="t{gi}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _html_page(tables: list[str], what: str) -> str:
    script = """
function sortTable(t, c) {
  const table = document.getElementById('t' + t), body = table.tBodies[0];
  const rows = Array.from(body.rows), asc = table.dataset.col == c && table.dataset.dir != 'asc';
  rows.sort((a, b) => {
    const x = a.cells[c].dataset.v, y = b.cells[c].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
    const d = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return asc ? d : -d;
  });
  rows.forEach(r => body.appendChild(r));
  table.dataset.col = c; table.dataset.dir = asc ? 'asc' : 'desc';
}"""
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
             "padding:4px 8px;text-align:right}th{cursor:pointer;background:#f4f4f4}td:nth-child(2){text-align:left}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>dsi-bench leaderboard</title>"
            f"<style>{style}</style><script>{script}</script></head><body><h1>dsi-bench leaderboard</h1>"
            f"<p>{html.escape(what)} per shift. Click a column to sort.</p>" + "".join(tables) + "</body></html>\n")


def _plots(group, shifts: list[str], folder: Path, metric: Metric) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError as cause:
        raise OptionalDependencyError("leaderboard plots need matplotlib: pip install 'dsi-bench[plots]' "
                                      "(or pass plots=False / --no-plots)") from cause
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(atomic_write(folder / name, buf.getvalue()))

    name, scale = metric.name, (100 if metric.fmt == "pct" else 1)
    unit = f"{metric.label} (%)" if metric.fmt == "pct" else metric.label
    for _, r in group:
        names = [s for s in shifts if s in r.shifts and r.shifts[s].get(name) is not None]
        vals = np.array([r.shifts[s][name] for s in names])
        error = None
        if metric.interval:
            lo = np.clip(vals - np.array([r.shifts[s][metric.interval][0] for s in names]), 0, None)
            hi = np.clip(np.array([r.shifts[s][metric.interval][1] for s in names]) - vals, 0, None)
            error = scale * np.vstack([lo, hi])
        fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(names) + 1.5), 3.5))
        ax.bar(range(len(names)), scale * vals, yerr=error, capsize=2, color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(unit + (", 95% CI" if metric.interval else ""))
        if metric.fmt == "pct":
            ax.set_ylim(min(0, scale * float(vals.min(initial=0))), 100)
        ax.set_title(r["model"]["name"], fontsize=10)
        save(fig, f"{_slug(r['model']['name'])}_shifts.png")

    models = [r["model"]["name"] for _, r in group]
    grid = np.array([[np.nan if r.shifts.get(s, {}).get(name) is None else scale * r.shifts[s][name]
                      for s in shifts] for _, r in group])
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(shifts) + 2), max(2, 0.4 * len(models) + 1.2)))
    limits = {"vmin": 0, "vmax": 100} if metric.fmt == "pct" and name != "drop_vs_base" else {}
    im = ax.imshow(grid, aspect="auto", cmap="viridis" if metric.higher_is_better else "viridis_r", **limits)
    ax.set_xticks(range(len(shifts)), shifts, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    fig.colorbar(im, ax=ax, label=unit)
    save(fig, "heatmap.png")

    def logit(p):
        p = min(max(p, 1e-4), 1 - 1e-4)
        return math.log(p / (1 - p))

    pts = [(r["summary"]["base_top1"], r["summary"]["mean_top1"], r["model"]["name"]) for _, r in group
           if r["summary"]["base_top1"] is not None and r["summary"]["mean_top1"] is not None]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    if pts:
        xs, ys = [logit(p[0]) for p in pts], [logit(p[1]) for p in pts]
        ax.scatter(xs, ys, color="#dd8452")
        for x, y, (_, _, label) in zip(xs, ys, pts):
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if len({round(x, 9) for x in xs}) >= 2:
            slope, icpt = np.polyfit(xs, ys, 1)
            line = np.linspace(min(xs), max(xs), 50)
            ax.plot(line, slope * line + icpt, "--", color="#555", label=f"fit: y = {slope:.2f}x + {icpt:.2f}")
            ax.legend(fontsize=7)
        ticks = [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99]
        ax.set_xticks([logit(t) for t in ticks], [f"{100 * t:g}" for t in ticks])
        ax.set_yticks([logit(t) for t in ticks], [f"{100 * t:g}" for t in ticks])
    ax.set_xlabel("base top-1 (%, logit axis)")
    ax.set_ylabel("mean shifted top-1 (%, logit axis)")
    ax.set_title("effective robustness", fontsize=10)
    save(fig, "effective_robustness.png")
    return written
