"""Leaderboards from results files: Markdown, CSV, a static sortable HTML page, and plots.

Results are ranked by one metric of :data:`~dsi_bench.metrics.METRICS` (``sort``, default
``top1``): its mean over the shifts other than base (``summary.metrics[sort].mean``), in the
metric's direction, with its base value and worst shift beside it and its per-shift values.
Results computed on different data (``data.fingerprint``), with different masks or with different
JPEG decoding (``run.decode``; unknown for scored predictions) are never averaged or ranked
together: each group gets its own table, titled with its data, fingerprint, masks and decode mode
in full, and every group but the largest is flagged. Equal means share a rank.
Results files are read through :meth:`~dsi_bench.results.Results.load` (older schema versions
are upgraded; unreadable ones are refused by name).

Text cells of the CSV that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``
or ``@``: a model named ``=HYPERLINK(...)``) are written with a leading ``'``. Results files whose
fields the tables read are missing or of another type are refused by name.

Plots (PNG, matplotlib), per group: per result, the per-shift metric with 95% intervals (one file
per result, also when model names repeat); a models x shifts heatmap; and an effective-robustness
scatter (base vs mean shifted top-1 on logit axes, with a least-squares line across models, also in
logit space; 0% and 100% are drawn inside the axes, labels of nearby points are moved apart).
The HTML page shows the intervals beside each value and embeds the plots.
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

from .errors import DsiBenchError, OptionalDependencyError, SpecError
from .files import atomic_write, check_writable
from .metrics import METRICS, Metric, rankable_metrics
from .results import Results, describe_data

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


def _number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_fields(path: str, r: Results, metric: Metric) -> None:
    """Refuse a results file (hand-edited, truncated) whose fields the leaderboard reads have another shape.

    Raises:
        SpecError: naming the file and the first field that is missing or of the wrong type.
    """
    doc = r.data
    model, summary, shifts = doc.get("model"), doc.get("summary"), doc.get("shifts")
    metrics = summary.get("metrics") if isinstance(summary, dict) else None
    ranked = metrics.get(metric.name) if isinstance(metrics, dict) else None
    checks = [
        (isinstance(model, dict) and isinstance(model.get("name"), str), "model.name must be text"),
        (isinstance(doc.get("data"), dict), "data must be an object"),
        (doc.get("run") is None or isinstance(doc.get("run"), dict), "run must be an object or null"),
        (isinstance(shifts, dict) and all(isinstance(v, dict) for v in shifts.values()),
         "shifts must map shift ids to objects"),
        (isinstance(ranked, dict), f"summary.metrics.{metric.name} must be an object"),
        (isinstance(summary, dict) and _number(summary.get("base_top1")) and _number(summary.get("mean_top1")),
         "summary.base_top1 and summary.mean_top1 must be numbers or null"),
    ]
    if isinstance(ranked, dict):
        checks += [(_number(ranked.get("mean")) and _number(ranked.get("worst")), f"summary.metrics.{metric.name}: "
                    "mean and worst must be numbers or null"),
                   (ranked.get("worst_shift") is None or isinstance(ranked.get("worst_shift"), str),
                    f"summary.metrics.{metric.name}.worst_shift must be text or null")]
    for shift, values in (shifts.items() if isinstance(shifts, dict) else ()):
        ci = values.get(metric.interval) if metric.interval and isinstance(values, dict) else None
        checks += [(isinstance(values, dict) and _number(values.get(metric.name)),
                    f"shifts.{shift}.{metric.name} must be a number or null"),
                   (ci is None or (isinstance(ci, list) and len(ci) == 2 and all(_number(v) for v in ci)),
                    f"shifts.{shift}.{metric.interval} must be a [low, high] pair")]
    wrong = next((what for ok, what in checks if not ok), None)
    if wrong:
        raise SpecError(f"results file {path!r} cannot be ranked: {wrong}; write it again with dsi-bench eval or "
                        "score (--results), or remove it from the folder")


def _csv_cell(value):
    """A CSV cell a spreadsheet shows as text: text starting with ``=``, ``+``, ``-``, ``@``, a tab or a
    carriage return (a formula there) gets a leading ``'``; numbers are written as they are."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "model"


def _cell(metric: Metric, v) -> str:
    return metric.format(v)  # "-" when not measured


def _group_key(r: Results) -> tuple[str, str, str]:
    """What must be equal for results to be ranked together: data fingerprint, masks, decode mode."""
    d = describe_data(r.data)
    return d["fingerprint"], d["masks"], d["decode"]


def _groups(loaded: list[tuple[str, Results]], metric: Metric) -> list[list[tuple[str, Results]]]:
    groups: dict[tuple, list] = {}
    for p, r in loaded:
        groups.setdefault(_group_key(r), []).append((p, r))
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0][0]))
    sign = 1 if metric.higher_is_better else -1

    def key(pr):
        mean = pr[1]["summary"]["metrics"][metric.name]["mean"]
        return (mean is None, -sign * (mean or 0.0), pr[1]["model"]["name"])

    return [sorted(g, key=key) for g in ordered]


def _ranks(means: list[float | None], higher_is_better: bool) -> list[int | None]:
    """Competition ranks ("1, 1, 3"): equal means share a rank; no mean, no rank."""
    sign = 1 if higher_is_better else -1
    known = [sign * m for m in means if m is not None]
    return [None if m is None else 1 + sum(1 for k in known if k > sign * m and not math.isclose(k, sign * m,
                                                                                                rel_tol=1e-12))
            for m in means]


def _rows(group, shifts: list[str], metric: Metric) -> list[dict]:
    rows = []
    means = [r["summary"]["metrics"][metric.name]["mean"] for _, r in group]
    for rank, (path, r) in zip(_ranks(means, metric.higher_is_better), group):
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
            row[("ci", sh)] = r.shifts.get(sh, {}).get(metric.interval) if metric.interval else None
        rows.append(row)
    return rows


def make_leaderboard(results, out: str | os.PathLike, *, plots: bool = True, sort: str = "top1",
                     reports: bool = True) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``.csv``, ``.html`` and ``plots/*.png`` into ``out``, and with ``reports``
    each group's visual report (:func:`~dsi_bench.report.make_report`) into ``reports/``, linked from
    the HTML table's model names.

    Args:
        results: a folder of results files (searched recursively) or a list of paths.
        out: the output folder.
        plots: also draw the PNG plots (needs matplotlib).
        sort: the metric to rank by (any of :func:`~dsi_bench.metrics.rankable_metrics`): its mean
            over the shifts other than base, best first in the metric's own direction.

    Returns:
        ``{"md", "csv", "html", "plots": [...], "groups": n, "reports": {results file: page}}`` paths and
        counts (results without their per-sample predictions get no report).

    Raises:
        SpecError: an unknown or unrankable ``sort``; no or unreadable results.
    """
    from .files import ensure_writable_dir
    from .validate import check_choice

    metric = METRICS[check_choice(sort, "metric to sort by", rankable_metrics())]
    loaded = load_results(results)
    for path, r in loaded:
        _check_fields(path, r, metric)
    out = ensure_writable_dir(out, "leaderboard folder")
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", *(["plots"] if plots else [])):
        check_writable(out / name, "leaderboard output", folder=name == "plots")
    groups = _groups(loaded, metric)
    all_shifts = list(dict.fromkeys(s for _, r in loaded for s in r.shifts))
    shifts = (["base"] if "base" in all_shifts else []) + [s for s in all_shifts if s != "base"]
    what = f"{metric.description[0].upper()}{metric.description[1:]}" + (" (%)" if metric.fmt == "pct" else "")
    better = "higher" if metric.higher_is_better else "lower"

    md = ["# dsi-bench leaderboard", "",
          f"{what} per shift; ranked by the mean over the shifts other than base ({better} is better; equal means "
          "share a rank). Results on different data, masks or JPEG decoding are listed separately and not ranked "
          "together.", ""]
    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator="\n")
    name = metric.name
    header = ["group", "rank", "model", f"mean_{name}", f"base_{name}", "worst_shift", f"worst_{name}",
              "shifts_evaluated", *shifts, "data_fingerprint", "masks", "decode", "file"]
    writer.writerow(header)  # shift ids and metric names: our own identifiers
    html_tables = []
    pages: dict[str, Path] = {}
    plot_names = _plot_names(groups) if plots else {}
    group_plots: list[list[Path]] = []
    for gi, group in enumerate(groups):
        fingerprint = group[0][1]["data"].get("fingerprint")
        about = describe_data(group[0][1].data)
        rows = _rows(group, shifts, metric)
        title = ("Main comparison" if gi == 0 else
                 f"Group {gi + 1}: different data, masks or decoding (not comparable with the above)")
        md += [f"## {title}", "", f"- Data: {about['data']}", f"- Fingerprint: `{about['fingerprint']}`",
               f"- Masks: {about['masks']}", f"- JPEG decoding: {about['decode']}", ""]
        if len({r["shifts_evaluated"] for r in rows}) > 1:
            md += ["Note: these models were evaluated on different sets of shifts; their means cover different "
                   "shifts.", ""]
        shown = [s for s in shifts if s != "base"]  # base has its own column
        cols = ["#", "model", "mean", "base", "worst shift", *shown]
        md.append("| " + " | ".join(cols) + " |")
        md.append("|" + "|".join("---" for _ in cols) + "|")
        for r in rows:
            worst = f"{r['worst_shift']} ({_cell(metric, r['worst'])})" if r["worst_shift"] else "–"
            md.append("| " + " | ".join([_rank(r["rank"]), r["model"].replace("|", "\\|"), _cell(metric, r["mean"]),
                                         _cell(metric, r["base"]), worst, *[_cell(metric, r[s]) for s in shown]])
                      + " |")
            writer.writerow([_csv_cell(v) for v in (
                gi + 1, r["rank"], r["model"], r["mean"], r["base"], r["worst_shift"], r["worst"],
                r["shifts_evaluated"], *[r[s] for s in shifts], fingerprint, about["masks"], about["decode"],
                r["file"])])
        md.append("")
        written = _plots(group, shifts, out / "plots", metric, plot_names, gi) if plots else []
        group_plots.append(written)
        compare = None
        if reports:
            found = _group_report(group, out / "reports" / f"group{gi + 1}")
            pages.update(found)
            if len(found) > 1:
                compare = f"reports/group{gi + 1}/index.html"
            for r, (path, _) in zip(rows, group):
                if path in pages:
                    r["report"] = Path(os.path.relpath(pages[path], out)).as_posix()
        html_tables.append(_html_table(title, about, rows, shifts, gi, metric, written, compare))
    return {"md": atomic_write(out / "leaderboard.md", "\n".join(md).encode()),
            "csv": atomic_write(out / "leaderboard.csv", csv_buf.getvalue().encode()),
            "html": atomic_write(out / "leaderboard.html", _html_page(html_tables, what).encode()),
            "plots": [p for g in group_plots for p in g], "groups": len(groups), "reports": pages}


def _group_report(group, folder: Path) -> dict[str, Path]:
    """The visual report of a group's results that kept their predictions (a warning for the others)."""
    from .report import make_report

    with_predictions = []
    for path, r in group:
        found = r.predictions_source(path)
        if found is not None and found.is_file():
            with_predictions.append(path)
        else:
            logger.warning("no visual report for %s: its per-sample predictions are not beside it", path)
    if not with_predictions:
        return {}
    try:
        return make_report(with_predictions, folder, progress=False).pages
    except DsiBenchError as e:
        logger.warning("no visual report for %s: %s", ", ".join(with_predictions), e)
        return {}


def _rank(rank: int | None) -> str:
    return "-" if rank is None else str(rank)


def _plot_names(groups) -> dict[str, str]:
    """A distinct per-result plot file name for every results path (model names may repeat)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for group in groups:
        for path, r in group:
            stem = _slug(r["model"]["name"])
            name, n = stem, 1
            if name in taken:
                name = f"{stem}_{_slug(Path(path).stem)}"
            while name in taken:
                n += 1
                name = f"{stem}_{n}"
            taken.add(name)
            names[path] = f"{name}_shifts.png"
    return names


def _html_table(title, about: dict, rows, shifts, gi, metric: Metric, plots: list[Path],
                compare: str | None = None) -> str:
    cols = [("#", "rank"), ("model", "model"), ("mean", "mean"), ("base", "base"),
            ("worst shift", "worst_shift"), ("worst", "worst")] + [(s, s) for s in shifts if s != "base"]
    head = "".join(f'<th onclick="sortTable(\'t{gi}\',{i})">{html.escape(c)}</th>' for i, (c, _) in enumerate(cols))
    body = []
    for r in rows:
        cells = []
        for _, key in cols:
            v = r[key]
            ci = r.get(("ci", key))  # per-shift values (base included) carry their interval
            if isinstance(v, float):
                interval = ""
                if ci:
                    interval = f'<br><small class="ci">[{_cell(metric, ci[0])}, {_cell(metric, ci[1])}]</small>'
                cells.append(f'<td data-v="{v:.6f}">{_cell(metric, v)}{interval}</td>')
            elif v is None:
                cells.append('<td data-v="-1">-</td>')
            elif key == "model" and r.get("report"):
                cells.append(f'<td data-v="{html.escape(str(v))}"><a href="{html.escape(r["report"])}">'
                             f"{html.escape(str(v))}</a></td>")
            else:
                cells.append(f'<td data-v="{html.escape(str(v))}">{html.escape(str(v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    about_html = "".join(f"<li>{label}: {html.escape(about[key])}</li>" for label, key in
                         (("Data", "data"), ("Fingerprint", "fingerprint"), ("Masks", "masks"),
                          ("JPEG decoding", "decode")))
    note = ("<p>Each value with its 95% Wilson interval below it." if metric.interval else "<p>")
    if any(r.get("report") for r in rows):
        note += " A model's name opens its visual report (the images it got wrong, next to their twins)."
    if compare:
        note += (f' <a href="{html.escape(compare)}">Compare these models\' failures</a> (which flips they share, '
                 "which are one model's alone).")
    note += "</p>"
    figures = "".join(f'<figure><img src="plots/{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                      f"<figcaption>{html.escape(p.stem)}</figcaption></figure>" for p in plots)
    return (f"<h2>{html.escape(title)}</h2><ul>{about_html}</ul>{note}"
            f'<table id="t{gi}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            + (f'<div class="plots">{figures}</div>' if figures else ""))


def _html_page(tables: list[str], what: str) -> str:
    from .report import SORT_SCRIPT as script

    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
             "padding:4px 8px;text-align:right}th{cursor:pointer;background:#f4f4f4}td:nth-child(2){text-align:left}"
             ".ci{color:#666}.plots{display:flex;flex-wrap:wrap;gap:1em}figure{margin:1em 0}img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>dsi-bench leaderboard</title>"
            f"<style>{style}</style><script>{script}</script></head><body><h1>dsi-bench leaderboard</h1>"
            f"<p>{html.escape(what)} per shift. Click a column to sort.</p>" + "".join(tables) + "</body></html>\n")


def _plots(group, shifts: list[str], folder: Path, metric: Metric, names: dict[str, str], gi: int) -> list[Path]:
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
    suffix = "" if gi == 0 else f"_group{gi + 1}"

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(atomic_write(folder / name, buf.getvalue()))

    name, scale = metric.name, (100 if metric.fmt == "pct" else 1)
    unit = f"{metric.label} (%)" if metric.fmt == "pct" else metric.label
    for path, r in group:
        save(_shift_figure(r, shifts, metric), names[path].replace("_shifts.png", f"{suffix}_shifts.png"))

    models = [r["model"]["name"] for _, r in group]
    grid = np.array([[np.nan if r.shifts.get(s, {}).get(name) is None else scale * r.shifts[s][name]
                      for s in shifts] for _, r in group])
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(shifts) + 2), max(2, 0.4 * len(models) + 1.2)))
    limits = {"vmin": 0, "vmax": 100} if metric.fmt == "pct" and name != "drop_vs_base" else {}
    im = ax.imshow(grid, aspect="auto", cmap="viridis" if metric.higher_is_better else "viridis_r", **limits)
    ax.set_xticks(range(len(shifts)), shifts, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    fig.colorbar(im, ax=ax, label=unit)
    save(fig, f"heatmap{suffix}.png")

    pts = [(r["summary"]["base_top1"], r["summary"]["mean_top1"], r["model"]["name"]) for _, r in group
           if r["summary"]["base_top1"] is not None and r["summary"]["mean_top1"] is not None]
    fig = _robustness_figure(pts)
    save(fig, f"effective_robustness{suffix}.png")
    return written


def _shift_figure(r: Results, shifts: list[str], metric: Metric):
    """One result's per-shift values with their 95% intervals, as points (0% and 100% inside the frame)."""
    import matplotlib.pyplot as plt
    import numpy as np

    name, scale = metric.name, (100 if metric.fmt == "pct" else 1)
    unit = f"{metric.label} (%)" if metric.fmt == "pct" else metric.label
    shown = [s for s in shifts if s in r.shifts and r.shifts[s].get(name) is not None]
    vals = np.array([r.shifts[s][name] for s in shown], dtype=float)
    error = None
    if metric.interval:
        lo = np.clip(vals - np.array([r.shifts[s][metric.interval][0] for s in shown]), 0, None)
        hi = np.clip(np.array([r.shifts[s][metric.interval][1] for s in shown]) - vals, 0, None)
        error = scale * np.vstack([lo, hi])
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(shown) + 1.5), 3.5))
    # points with error bars, not bars: a 0% value is a visible point, and 0%/100% sit inside the frame
    ax.errorbar(range(len(shown)), scale * vals, yerr=error, fmt="o", capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(shown)), shown, rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(shown) - 0.4)
    ax.set_ylabel(unit + (", 95% CI" if metric.interval else ""))
    if metric.fmt == "pct" and name != "drop_vs_base":
        ax.set_ylim(-4, 104)
    else:
        ax.margins(y=0.08)
    ax.set_title(r["model"]["name"], fontsize=10)
    return fig


#: Accuracies are clipped to [_CLIP, 1 - _CLIP] on the logit axes (0% and 100% have no logit).
_CLIP = 0.005


def _logit(p: float) -> float:
    p = min(max(p, _CLIP), 1 - _CLIP)
    return math.log(p / (1 - p))


def _robustness_figure(points: list[tuple[float, float, str]]):
    """The effective-robustness scatter: ``(base top-1, mean shifted top-1, label)`` points on logit axes.

    0% and 100% are drawn at the clipped ends, inside the axes (and marked as clipped); labels of
    points close together are stacked so they do not overlap. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.set_xlabel("base top-1 (%, logit axis)")
    ax.set_ylabel("mean shifted top-1 (%, logit axis)")
    ax.set_title("effective robustness", fontsize=10)
    if not points:
        return fig
    xs, ys = [_logit(p[0]) for p in points], [_logit(p[1]) for p in points]
    clipped = [not (_CLIP < p[0] < 1 - _CLIP and _CLIP < p[1] < 1 - _CLIP) for p in points]
    ax.scatter([x for x, c in zip(xs, clipped) if not c], [y for y, c in zip(ys, clipped) if not c],
               color="#dd8452")
    if any(clipped):
        ax.scatter([x for x, c in zip(xs, clipped) if c], [y for y, c in zip(ys, clipped) if c], color="#dd8452",
                   marker="D", label=f"0% or 100% (drawn at {100 * _CLIP:g}% / {100 - 100 * _CLIP:g}%)")
    if len({round(x, 9) for x in xs}) >= 2:
        slope, icpt = np.polyfit(xs, ys, 1)
        line = np.linspace(min(xs), max(xs), 50)
        ax.plot(line, slope * line + icpt, "--", color="#555", label=f"fit: y = {slope:.2f}x + {icpt:.2f}")
    ticks = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
    lo = min([*xs, *ys, _logit(0.1)]) - 0.6
    hi = max([*xs, *ys, _logit(0.9)]) + 0.6
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    shown = [t for t in ticks if lo <= _logit(t) <= hi]
    ax.set_xticks([_logit(t) for t in shown], [f"{100 * t:g}" for t in shown])
    ax.set_yticks([_logit(t) for t in shown], [f"{100 * t:g}" for t in shown])
    # labels: stack the labels of points that are close (in axis fractions) instead of drawing them on top
    placed: list[tuple[float, float]] = []
    span = hi - lo
    for x, y, (_, _, label) in sorted(zip(xs, ys, points), key=lambda t: (t[1], t[0])):
        fx, fy = (x - lo) / span, (y - lo) / span
        near = sum(1 for px, py in placed if abs(px - fx) < 0.25 and abs(py - fy) < 0.06)
        placed.append((fx, fy))
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 3 + 10 * near), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.5} if near else None)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    return fig
