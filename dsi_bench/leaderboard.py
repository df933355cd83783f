"""Leaderboards from results files: Markdown, CSV, a static sortable HTML page, and plots.

Results are ranked by mean top-1 over the shifts (``summary.mean_top1``), with base and
worst-shift accuracy beside it. Results computed on different data (different
``data.fingerprint``) are never averaged or ranked together: each group gets its own table,
and every group but the largest is flagged. Mixing results of different schema versions is
refused.

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
from .results import Results

__all__ = ["load_results", "make_leaderboard"]

logger = logging.getLogger(__name__)


def load_results(source) -> list[tuple[str, Results]]:
    """``(path, Results)`` for a folder of ``*.json`` results (recursive) or a list of paths.

    Raises:
        SpecError: no results found, unreadable files, or mixed schema versions.
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
    versions = {r["schema_version"] for _, r in loaded}
    if len(versions) > 1:
        by = {v: [p for p, r in loaded if r["schema_version"] == v] for v in sorted(versions)}
        raise SpecError("results of different schema versions cannot share a leaderboard: "
                        + "; ".join(f"v{v}: {', '.join(Path(p).name for p in ps[:3])}" for v, ps in by.items())
                        + ". Re-run the older evaluations with this dsi-bench")
    return loaded


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "model"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _groups(loaded: list[tuple[str, Results]]) -> list[list[tuple[str, Results]]]:
    groups: dict[str, list] = {}
    for p, r in loaded:
        groups.setdefault(str(r["data"].get("fingerprint")), []).append((p, r))
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0][0]))
    return [sorted(g, key=lambda pr: (-(pr[1]["summary"]["mean_top1"] or -1), pr[1]["model"]["name"]))
            for g in ordered]


def _rows(group, shifts: list[str]) -> list[dict]:
    rows = []
    for rank, (path, r) in enumerate(group, start=1):
        s = r["summary"]
        row = {
            "rank": rank,
            "model": r["model"]["name"],
            "mean_top1": s["mean_top1"],
            "base_top1": s["base_top1"],
            "worst_shift": s["worst_shift"],
            "worst_top1": s["worst_top1"],
            "shifts_evaluated": len(r.shifts),
            "file": Path(path).name,
        }
        for sh in shifts:
            row[sh] = r.shifts.get(sh, {}).get("top1")
        rows.append(row)
    return rows


def make_leaderboard(results, out: str | os.PathLike, *, plots: bool = True) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``.csv``, ``.html`` and ``plots/*.png`` into ``out``.

    Returns:
        ``{"md", "csv", "html", "plots": [...], "groups": n}`` paths and counts.
    """
    from .files import ensure_writable_dir

    loaded = load_results(results)
    out = ensure_writable_dir(out, "leaderboard folder")
    groups = _groups(loaded)
    all_shifts = list(dict.fromkeys(s for _, r in loaded for s in r.shifts))
    shifts = (["base"] if "base" in all_shifts else []) + [s for s in all_shifts if s != "base"]

    md = ["# dsi-bench leaderboard", "",
          "Top-1 accuracy (%) per shift; ranked by the mean over the shifts other than base. "
          "Results on different data are listed separately and not ranked together.", ""]
    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator="\n")
    header = ["group", "rank", "model", "mean_top1", "base_top1", "worst_shift", "worst_top1", "shifts_evaluated",
              *shifts, "data_fingerprint", "file"]
    writer.writerow(header)
    html_tables = []
    for gi, group in enumerate(groups):
        fingerprint = group[0][1]["data"].get("fingerprint")
        source = group[0][1]["data"].get("source")
        rows = _rows(group, shifts)
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
            worst = f"{r['worst_shift']} ({_pct(r['worst_top1'])})" if r["worst_shift"] else "–"
            md.append("| " + " | ".join([str(r["rank"]), r["model"].replace("|", "\\|"), _pct(r["mean_top1"]),
                                         _pct(r["base_top1"]), worst, *[_pct(r[s]) for s in shown]]) + " |")
            writer.writerow([gi + 1, r["rank"], r["model"], r["mean_top1"], r["base_top1"], r["worst_shift"],
                             r["worst_top1"], r["shifts_evaluated"], *[r[s] for s in shifts], fingerprint, r["file"]])
        md.append("")
        html_tables.append(_html_table(title, source, fingerprint, rows, shifts, gi))
    paths = {"md": atomic_write(out / "leaderboard.md", "\n".join(md).encode()),
             "csv": atomic_write(out / "leaderboard.csv", csv_buf.getvalue().encode()),
             "html": atomic_write(out / "leaderboard.html", _html_page(html_tables).encode()),
             "plots": [], "groups": len(groups)}
    if plots:
        paths["plots"] = _plots(groups[0], shifts, out / "plots")
    return paths


def _html_table(title, source, fingerprint, rows, shifts, gi) -> str:
    cols = [("#", "rank"), ("model", "model"), ("mean", "mean_top1"), ("base", "base_top1"),
            ("worst shift", "worst_shift"), ("worst", "worst_top1")] + [(s, s) for s in shifts if s != "base"]
    head = "".join(f'<th onclick="sortTable({gi},{i})">{html.escape(c)}</th>' for i, (c, _) in enumerate(cols))
    body = []
    for r in rows:
        cells = []
        for _, key in cols:
            v = r[key]
            if isinstance(v, float):
                cells.append(f'<td data-v="{v:.6f}">{_pct(v)}</td>')
            elif v is None:
                cells.append('<td data-v="-1">–</td>')
            else:
                cells.append(f'<td data-v="{html.escape(str(v))}">{html.escape(str(v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h2>{html.escape(title)}</h2><p>Data: {html.escape(str(source))}, fingerprint "
            f"<code>{html.escape(str(fingerprint)[:24])}</code></p>"
            f'<table id="t{gi}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _html_page(tables: list[str]) -> str:
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
            "<p>Top-1 accuracy (%) per shift. Click a column to sort.</p>" + "".join(tables) + "</body></html>\n")


def _plots(group, shifts: list[str], folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        raise OptionalDependencyError("leaderboard plots need matplotlib: pip install 'dsi-bench[plots]' "
                                      "(or pass plots=False / --no-plots)") from None
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(atomic_write(folder / name, buf.getvalue()))

    for _, r in group:
        names = [s for s in shifts if s in r.shifts and r.shifts[s]["top1"] is not None]
        vals = np.array([r.shifts[s]["top1"] for s in names])
        lo = np.clip(vals - np.array([r.shifts[s]["top1_ci"][0] for s in names]), 0, None)
        hi = np.clip(np.array([r.shifts[s]["top1_ci"][1] for s in names]) - vals, 0, None)
        fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(names) + 1.5), 3.5))
        ax.bar(range(len(names)), 100 * vals, yerr=100 * np.vstack([lo, hi]), capsize=2, color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("top-1 (%), 95% CI")
        ax.set_ylim(0, 100)
        ax.set_title(r["model"]["name"], fontsize=10)
        save(fig, f"{_slug(r['model']['name'])}_shifts.png")

    models = [r["model"]["name"] for _, r in group]
    grid = np.array([[np.nan if r.shifts.get(s, {}).get("top1") is None else 100 * r.shifts[s]["top1"]
                      for s in shifts] for _, r in group])
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(shifts) + 2), max(2, 0.4 * len(models) + 1.2)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(shifts)), shifts, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    fig.colorbar(im, ax=ax, label="top-1 (%)")
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
