"""The visual report of an evaluation: which images broke, next to their unshifted twins.

``make_report("resnet50.json", "report/")`` (CLI: ``dsi-bench report RESULTS.json --out DIR``) writes
a static HTML page that works offline (no server, no network, nothing from a CDN: styles and
script inline, thumbnails beside it in ``img/``). It is built from the results and the per-sample
predictions ``eval`` keeps beside them (:attr:`~dsi_bench.results.Results.predictions_file`);
the images are found through the results' data section (shards, the release, a Hub dataset, a
folder, or the generation cache / regeneration for ``synth``), or ``root=`` where the data moved.

Per shift: top-1 with its 95 % interval as a bar chart, drop vs base, flip and reverse-flip rates
and McNemar's p; **twin galleries** of the flips (base twin right, shifted sample wrong) and the
reverse flips, most confident first, each pair with the true class, both predictions and their
confidence, and the sample's prompt and metadata on hover and click; the worst classes with
thumbnails of their failures. Given two or more results on the same data, ``index.html`` compares
them (which flips every model shares, which are one model's alone) and links each model's page.

Thumbnails are at most :data:`THUMB_SIZE` px (JPEG; images that small already are kept as PNG), so a
report's size is set by the gallery caps (``max_pairs``), not by the size of the evaluation.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DsiBenchError, SpecError
from .layout import twin_key
from .metrics import ShiftContext, ShiftPredictions
from .results import Results, describe_data, read_predictions_file

__all__ = ["MAX_PAIRS", "THUMB_SIZE", "Report", "make_report"]

logger = logging.getLogger(__name__)

#: Longest side of a thumbnail: SD2's 512 px images shrink 4x, where ImageNet objects stay recognisable
#: (a 128 px JPEG at quality 85 is about 5 KB).
THUMB_SIZE = 128
#: Pairs shown per gallery (flips, reverse flips, each comparison group), most confident first.
MAX_PAIRS = 24
#: Worst classes shown per shift, and failing images shown per class.
WORST_CLASSES = 5
PER_CLASS = 4


@dataclass
class Report:
    """What :func:`make_report` wrote."""

    index: Path  # the page to open
    pages: dict[str, Path] = field(default_factory=dict)  # results file (as given) -> its model's page
    thumbnails: int = 0
    bytes: int = 0  # the report's folder, thumbnails included
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why


# ---------------------------------------------------------------------------------------------- data
@dataclass
class _Model:
    path: Path
    results: Results
    preds: dict[str, ShiftPredictions]
    slug: str

    @property
    def name(self) -> str:
        return str(self.results["model"].get("name") or self.path.stem)

    @property
    def fingerprint(self) -> str:
        return describe_data(self.results.data)["fingerprint"]


def _load_model(path: Path, used: set[str]) -> _Model:
    from .files import sha256_file

    results = Results.load(path)
    pred_path = results.predictions_source(path)
    if pred_path is None:
        raise SpecError(f"{str(path)!r} records no per-sample predictions; re-run `dsi-bench eval ... --results "
                        f"{path.name}` (it keeps them beside the results) and report again")
    if not pred_path.is_file():
        raise SpecError(f"the predictions of {str(path)!r} are not at {str(pred_path)!r}; move them back beside the "
                        "results, or re-run eval")
    info = results.data.get("predictions") or {}
    if info.get("sha256") and sha256_file(pred_path) != info["sha256"]:
        raise SpecError(f"{str(pred_path)!r} changed since {str(path)!r} was written (sha256 differs); re-run eval")
    preds = read_predictions_file(pred_path)
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(results["model"].get("name") or path.stem)).strip("-.") or "model"
    slug, k = base, 2
    while slug in used:
        slug, k = f"{base}-{k}", k + 1
    used.add(slug)
    return _Model(path, results, preds, slug)


@dataclass
class _Pair:
    key: str  # the shifted sample
    label: int
    base_pred: int
    base_conf: float | None
    pred: int
    conf: float | None


def _flips(preds, shift: str) -> tuple[list[_Pair], list[_Pair]]:
    """(flips, reverse flips) of a shift, the most confident shifted prediction first."""
    p, b = preds[shift], preds.get("base")
    mine, theirs = ShiftContext(shift, p, b).pair_positions
    if b is None or not len(mine):
        return [], []
    s_ok, b_ok = p.correct[mine], b.correct[theirs]

    def make(sel) -> list[_Pair]:
        out = []
        for i, j in zip(mine[sel].tolist(), theirs[sel].tolist()):
            out.append(_Pair(p.keys[i], int(p.labels[i]), int(b.topk[j, 0]),
                             None if b.confidence is None else float(b.confidence[j]), int(p.topk[i, 0]),
                             None if p.confidence is None else float(p.confidence[i])))
        return _by_confidence(out)

    return make(b_ok & ~s_ok), make(~b_ok & s_ok)


class _Images:
    """Thumbnails and metadata of samples, found through a results file's data section."""

    def __init__(self, results: Results, folder: Path, root=None, size: int = THUMB_SIZE, progress: bool = False,
                 results_dir: Path | None = None):
        self.results, self.folder, self.root, self.size = results, folder, root, size
        self.results_dir = results_dir or Path.cwd()
        self.progress = progress
        self.thumbs: dict[str, str | None] = {}
        self.meta: dict[str, dict] = {}
        self.problem: str | None = None
        self._datasets: dict[str, object] = {}
        self.args = self._arguments()

    def _arguments(self) -> dict | None:
        run, data = self.results.run, self.results.data.get("data") or {}
        args = dict((run or {}).get("dataset") or {})
        if not args:
            if not data.get("source"):
                self.problem = "the results name no data source (predictions scored by their keys alone)"
                return None
            args = {"source": data["source"], "root": data.get("root"), "classes": data.get("classes")}
        if self.root is not None:
            args["root"] = os.fspath(self.root)
        elif isinstance(args.get("root"), str) and "://" not in args["root"] and not os.path.isabs(args["root"]):
            # recorded as typed: relative to where eval ran, which is often where the results are kept
            beside = self.results_dir / args["root"]
            if not os.path.exists(args["root"]) and beside.exists():
                args["root"] = str(beside)
        for k in ("transform", "target_transform"):  # the classifier's, not needed to show the images
            args.pop(k, None)
        if isinstance(args.get("pipeline"), dict):  # a PipelineSpec, recorded field by field
            from .pipeline import PipelineSpec

            try:
                args["pipeline"] = PipelineSpec(**args["pipeline"])
            except (TypeError, DsiBenchError):
                pass
        if isinstance(args.get("class_list"), dict) and args["class_list"].get("class_list") == "imagenet":
            args.pop("class_list")  # the default label space
        objects = [k for k, v in args.items() if isinstance(v, dict)]
        if objects:
            self.problem = (f"the run's {', '.join(objects)} were objects in memory, not files; pass root= "
                            "(--root) to a saved copy of the data")
            return None
        args["masks"] = False  # every sample findable; the predictions say which ones were evaluated
        args.pop("fast_decode", None)
        return args  # None values stay: tokens=None (class words) is not the default tokens

    def _dataset(self, shift: str):
        from .datasets import ShiftedDataset

        if shift not in self._datasets:
            try:
                ds = ShiftedDataset(_shift_of(self.results, shift), **self.args)
                self._datasets[shift] = (ds, {e.key: e for e in ds.entries})
            except (DsiBenchError, OSError, TypeError, ValueError) as e:
                self._datasets[shift] = None
                self.problem = f"the images of {shift!r} could not be opened ({e})"
        return self._datasets[shift]

    def fetch(self, keys: Sequence[str]) -> None:
        """Make the thumbnails of ``keys`` (grouped by shift, in storage order, one batched read each)."""
        if self.args is None:
            return
        todo: dict[str, list[str]] = {}
        for k in dict.fromkeys(keys):
            if k not in self.thumbs:
                todo.setdefault(k.split("/", 1)[0], []).append(k)
        from tqdm.auto import tqdm

        for shift, wanted in tqdm(todo.items(), desc="report images", unit="shift", disable=not self.progress):
            opened = self._dataset(shift)
            if opened is None:
                self.thumbs.update(dict.fromkeys(wanted))
                continue
            ds, by_key = opened
            entries = [by_key[k] for k in wanted if k in by_key]
            order = {id(e): i for i, e in enumerate(ds.entries)}
            entries.sort(key=lambda e: order.get(id(e), 0))
            self.thumbs.update({k: None for k in wanted if k not in by_key})
            try:
                images = ds.backend.load(entries, None)
            except (DsiBenchError, OSError) as e:
                self.problem = f"the images of {shift!r} could not be read ({e})"
                self.thumbs.update({e.key: None for e in entries})
                continue
            for e, image in zip(entries, images):
                self.thumbs[e.key] = self._save(e.key, image)
                try:
                    self.meta[e.key] = ds.backend.metadata(e)
                except (DsiBenchError, OSError, KeyError):
                    self.meta[e.key] = {}

    def _save(self, key: str, image) -> str:
        from PIL import Image

        from .files import atomic_write
        from .images import to_rgb

        image = to_rgb(image)
        digest = hashlib.sha256(f"{self.results.data.get('data', {}).get('fingerprint')}/{key}".encode()).hexdigest()
        small = max(image.size) <= 64
        if not small and max(image.size) > self.size:
            image = image.copy()
            image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if small:
            image.save(buf, format="PNG", optimize=True)
            name = f"{digest[:20]}.png"
        else:
            image.save(buf, format="JPEG", quality=85, optimize=True)
            name = f"{digest[:20]}.jpg"
        atomic_write(self.folder / name, buf.getvalue())
        return name


# ---------------------------------------------------------------------------------------------- html
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}h1{margin-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4;cursor:pointer}td:first-child,th:first-child{text-align:left}
.about{color:#555;font-size:.9em;overflow-wrap:anywhere}.gallery{display:flex;flex-wrap:wrap;gap:10px;margin:.5em 0 1em}
.twin,.thumb{border:1px solid #ddd;border-radius:4px;padding:4px;margin:0;background:#fafafa;cursor:pointer}
.twin img,.thumb img{width:96px;height:96px;object-fit:contain;background:#eee}
.twin .pair{display:flex;gap:3px}.px{image-rendering:pixelated}
figcaption{font-size:11px;line-height:1.3;max-width:200px}.ok{color:#1a7f37}.bad{color:#c62828}
.missing{display:inline-flex;width:96px;height:96px;align-items:center;justify-content:center;background:#eee;
color:#888;font-size:11px}nav a{margin-right:.8em}section{border-top:1px solid #ddd;margin-top:1.5em}
#meta{position:fixed;right:1em;bottom:1em;max-width:420px;max-height:50vh;overflow:auto;background:#fff;
border:1px solid #999;padding:.6em;font-size:12px;white-space:pre-wrap;display:none;box-shadow:0 2px 8px #0003}
.more{color:#666;font-size:.9em}svg text{font-size:11px}
"""

#: Click a column header to sort by it (numbers by ``data-v``); shared with the leaderboard's page.
SORT_SCRIPT = """
function sortTable(id, c) {
  const table = document.getElementById(id), body = table.tBodies[0];
  const rows = Array.from(body.rows), asc = table.dataset.col == c && table.dataset.dir != 'asc';
  rows.sort((a, b) => {
    const x = a.cells[c].dataset.v, y = b.cells[c].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
    const d = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
    return asc ? d : -d;
  });
  rows.forEach(r => body.appendChild(r));
  table.dataset.col = c; table.dataset.dir = asc ? 'asc' : 'desc';
}
"""

_SCRIPT = SORT_SCRIPT + """
document.addEventListener('click', e => {
  const box = document.getElementById('meta'), card = e.target.closest('[data-meta]');
  if (!box) return;
  if (!card) { box.style.display = 'none'; return; }
  box.textContent = JSON.stringify(JSON.parse(card.dataset.meta), null, 1);
  box.style.display = 'block';
});
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>{body}"
            "<div id=\"meta\"></div></body></html>\n")


class _Writer:
    """Builds the HTML of one model's page, or of the comparison, against the shared images."""

    def __init__(self, images: _Images, img_prefix: str, class_names: list[str]):
        self.images, self.prefix, self.names = images, img_prefix, class_names

    def name(self, c: int) -> str:
        return self.names[c] if 0 <= c < len(self.names) else str(c)

    def img(self, key: str, alt: str) -> str:
        thumb = self.images.thumbs.get(key)
        if thumb is None:
            return '<span class="missing">no image</span>'
        cls = ' class="px"' if thumb.endswith(".png") else ""
        return f'<img src="{_e(self.prefix + thumb)}" alt="{_e(alt)}" loading="lazy"{cls}>'

    def meta(self, key: str, extra: dict) -> tuple[str, str]:
        meta = {"key": key, **extra, **self.images.meta.get(key, {})}
        text = json.dumps(meta, default=str)
        hover = " | ".join(f"{k}: {meta[k]}" for k in ("prompt", "seed", "key") if k in meta)
        return _e(text), _e(hover)

    @staticmethod
    def _with_conf(c: int, conf: float | None, name: str) -> str:
        return f"{_e(name)}" + ("" if conf is None else f" ({100 * conf:.0f}%)")

    def twin(self, q: _Pair, model: str | None = None) -> str:
        data, hover = self.meta(q.key, {"twin": twin_key(q.key), "true": self.name(q.label),
                                        "base prediction": self.name(q.base_pred),
                                        "shifted prediction": self.name(q.pred),
                                        **({"model": model} if model else {})})
        b_cls = "ok" if q.base_pred == q.label else "bad"
        s_cls = "ok" if q.pred == q.label else "bad"
        return (f'<figure class="twin" data-key="{_e(q.key)}" data-meta="{data}" title="{hover}">'
                f'<div class="pair">{self.img(twin_key(q.key), "base twin")}{self.img(q.key, "shifted")}</div>'
                f"<figcaption><b>{_e(self.name(q.label))}</b><br>"
                f'base: <span class="{b_cls}">{self._with_conf(q.base_pred, q.base_conf, self.name(q.base_pred))}'
                f'</span><br>shifted: <span class="{s_cls}">{self._with_conf(q.pred, q.conf, self.name(q.pred))}'
                "</span></figcaption></figure>")

    def gallery(self, pairs: list[_Pair], what: str, cap: int, gid: str, model: str | None = None) -> str:
        shown = pairs[:cap]
        more = (f' <span class="more">(showing the {len(shown)} most confident of {len(pairs)})</span>'
                if len(pairs) > len(shown) else "")
        body = "".join(self.twin(q, model) for q in shown) or '<p class="more">none</p>'
        return (f'<h3>{_e(what)}: <span class="count" data-gallery="{_e(gid)}">{len(pairs)}</span>{more}</h3>'
                f'<div class="gallery" id="{_e(gid)}">{body}</div>')


def _flagged(m: dict, probe: dict | None) -> bool:
    """Whether a shift's drop is marked: McNemar p < 0.01, or for a probe's results significant after its correction
    (McNemar's test is not valid after the probe's adaptive stopping; it records none)."""
    if (m.get("drop_vs_base") or 0) <= 0:
        return False
    if probe is not None:
        return m.get("probe_p_adjusted") is not None and m["probe_p_adjusted"] <= probe.get("alpha", 0.05)
    return (m.get("mcnemar_p") or 1) < 0.01


_CORRECTION_NAMES = {"holm": "Holm's correction", "bh": "the Benjamini-Hochberg correction", "none": "no correction"}


def _legend(probe: dict | None) -> str:
    if probe is not None:
        return (f"Bars: top-1; black lines: anytime-valid {100 * (1 - probe.get('alpha', 0.05)):.0f}% intervals (the "
                f"probe chose each phrase's n from the data); dashed: base; red: a drop significant with "
                f"{_e(_CORRECTION_NAMES.get(probe.get('correction'), str(probe.get('correction'))))} "
                f"(p &le; {probe.get('alpha', 0.05)}).")
    return "Bars: top-1; black lines: 95% Wilson intervals; dashed: base; red: a drop with McNemar p &lt; 0.01."


def _p_text(m: dict) -> str:
    if "probe_p_adjusted" in m:
        return f"probe p {m['probe_p']:.2g}, adjusted {m['probe_p_adjusted']:.2g}"
    return f"McNemar p {'-' if m.get('mcnemar_p') is None else format(m['mcnemar_p'], '.2g')}"


def _chart(shifts: dict, order: list[str], probe: dict | None = None) -> str:
    """Top-1 per shift with its 95 % interval, as an inline SVG bar chart (base as a dashed line)."""
    row, left, width = 18, 170, 360
    height = row * len(order) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 70}" height="{height}" '
             'role="img" aria-label="top-1 per shift with 95% intervals">']
    for tick in range(0, 101, 25):
        x = left + width * tick / 100
        parts.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 20}" stroke="#e4e4e4"/>'
                     f'<text x="{x}" y="{height - 6}" text-anchor="middle">{tick}%</text>')
    base = shifts.get("base", {}).get("top1")
    for i, s in enumerate(order):
        m, y = shifts[s], i * row + 4
        top1 = m.get("top1")
        parts.append(f'<text x="{left - 6}" y="{y + 11}" text-anchor="end">{_e(s)}</text>')
        if top1 is None:
            continue
        colour = "#888" if s == "base" else ("#c62828" if _flagged(m, probe) else "#4a78c2")
        parts.append(f'<rect x="{left}" y="{y}" width="{width * top1:.1f}" height="{row - 5}" fill="{colour}">'
                     f"<title>{_e(s)}: {_pct(top1)}%</title></rect>")
        lo, hi = (m.get("top1_ci") or [None, None])[:2]
        if lo is not None:
            mid = y + (row - 5) / 2
            parts.append(f'<line x1="{left + width * lo:.1f}" y1="{mid}" x2="{left + width * hi:.1f}" y2="{mid}" '
                         'stroke="#111" stroke-width="1.5"/>')
        parts.append(f'<text x="{left + width + 4}" y="{y + 11}">{_pct(top1)}</text>')
    if base is not None:
        x = left + width * base
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 20}" stroke="#333" '
                     'stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return "".join(parts)


def _metrics_table(model: _Model, order: list[str], tid: str) -> str:
    cols = [("shift", None), ("n", "n"), ("top-1 %", "top1"), ("95% CI", "top1_ci"), ("drop (pts)", "drop_vs_base"),
            ("flips %", "flip_rate"), ("reverse flips %", "reverse_flip_rate"), ("McNemar p", "mcnemar_p")]
    if model.results.data.get("probe") is not None:  # McNemar's test is not valid after adaptive stopping
        cols[-1] = ("adjusted p", "probe_p_adjusted")
    head = "".join(f'<th onclick="sortTable(\'{tid}\',{i})">{_e(c)}</th>' for i, (c, _) in enumerate(cols))
    rows = []
    for s in order:
        m = model.results.shifts[s]
        cells = [f'<td data-v="{_e(s)}"><a href="#shift-{_e(s)}">{_e(s)}</a></td>']
        for _, key in cols[1:]:
            v = m.get(key)
            if key == "top1_ci":
                text = "-" if not v else f"{_pct(v[0])}&ndash;{_pct(v[1])}"
                cells.append(f'<td data-v="{v[0] if v else -1}">{text}</td>')
            elif key == "n":
                cells.append(f'<td data-v="{v}">{v}</td>')
            elif key in ("mcnemar_p", "probe_p_adjusted"):
                cells.append(f'<td data-v="{-1 if v is None else v}">{"-" if v is None else f"{v:.2g}"}</td>')
            else:
                cells.append(f'<td data-v="{-1 if v is None else v}">{_pct(v)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="{tid}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _about(model: _Model, extra: str = "", data_only: bool = False) -> str:
    d = describe_data(model.results.data)
    r = model.results.data
    items = [("data", d["data"]), ("fingerprint", d["fingerprint"]), ("masks", d["masks"]), ("decode", d["decode"])]
    if not data_only:
        items = [("model", model.name), ("spec", r["model"].get("spec")), *items, ("evaluated", r.get("date")),
                 ("dsi-bench", r.get("package_version"))]
    return ('<ul class="about">' + "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in items if v is not None)
            + extra + "</ul>")


def _shift_of(results: Results, shift: str):
    """The shift a results entry was computed on: the catalog's, or a custom one rebuilt from the name and
    template the results record (a custom id alone does not say its prompt)."""
    from .shifts import Shift, get_shift

    info = results.shifts.get(shift) or {}
    try:
        found = get_shift(info.get("shift_name") or shift)
    except DsiBenchError:
        found = None
    if found is not None and found.id == shift:
        return found
    if info.get("template"):
        try:
            return Shift(id=shift, name=info.get("shift_name") or shift, template=info["template"], group="custom",
                         version="custom", source="custom")
        except DsiBenchError:
            pass
    return shift


def _prompt(shift) -> str:
    """The prompt of a shift :func:`_shift_of` resolved (its id where it could not)."""
    from .shifts import get_shift

    try:
        return get_shift(shift).prompt("<class>")
    except DsiBenchError:
        return shift


def _model_page(model: _Model, writer: _Writer, plan: dict, max_pairs: int, results_href: str,
                notes: list[str]) -> str:
    shifts = model.results.shifts
    probe = model.results.data.get("probe")
    order = [s for s in shifts if s in model.preds]
    nav = "".join(f'<a href="#shift-{_e(s)}">{_e(s)}</a>' for s in order)
    note = "".join(f'<p class="more">{_e(n)}</p>' for n in notes)
    parts = [f"<h1>{_e(model.name)}</h1>",
             _about(model, f'<li>results: <a href="{_e(results_href)}">{_e(model.path.name)}</a></li>'),
             note, f"<nav>{nav}</nav>", "<h2>Top-1 per shift</h2>",
             f'<p class="more">{_legend(probe)}</p>', _chart(shifts, order, probe),
             _metrics_table(model, order, "metrics")]
    for s in order:
        m = shifts[s]
        flips, reverse = plan[s]
        shift = _shift_of(model.results, s)
        custom = getattr(shift, "is_custom", False)
        title = f'{_e(shift.name)} <small class="more">{_e(s)}</small>' if custom else _e(s)
        parts.append(f'<section id="shift-{_e(s)}" data-shift="{_e(s)}"><h2>{title}</h2>'
                     f'<p class="more">prompt: {_e(_prompt(shift))}</p>'
                     f"<p>top-1 {_pct(m.get('top1'))}% (n {m.get('n')}), drop vs base {_pct(m.get('drop_vs_base'))} "
                     f"pts, flips {_pct(m.get('flip_rate'))}%, reverse flips {_pct(m.get('reverse_flip_rate'))}%, "
                     f"{_p_text(m)}</p>")
        if s == "base":
            parts.append("<p class=\"more\">The unshifted set: every other shift's twins come from here.</p>")
        else:
            parts.append(writer.gallery(flips, "Flips: base twin right, shifted wrong", max_pairs, f"flips-{s}"))
            parts.append(writer.gallery(reverse, "Reverse flips: base twin wrong, shifted right", max_pairs,
                                        f"reverse-{s}"))
            parts.append(_worst_classes(m, flips, writer, s))
        parts.append("</section>")
    return _page(f"dsi-bench report: {model.name}", "".join(parts))


def _worst_classes(m: dict, flips: list[_Pair], writer: _Writer, shift: str) -> str:
    worst = [w for w in (m.get("worst_classes") or []) if w.get("drop", 0) > 0][:WORST_CLASSES]
    if not worst:
        return ""
    rows = []
    for w in worst:
        mine = [q for q in flips if q.label == w["class"]][:PER_CLASS]
        thumbs = "".join(
            f'<figure class="thumb" data-meta="{writer.meta(q.key, {"true": writer.name(q.label)})[0]}" '
            f'title="{_e(writer.name(q.pred))}">{writer.img(q.key, "failure")}'
            f"<figcaption>as {_e(writer.name(q.pred))}</figcaption></figure>" for q in mine)
        rows.append(f"<tr><td>{_e(w['name'])}</td><td>{w['pairs']}</td><td>{_pct(w['base_top1'])}</td>"
                    f"<td>{_pct(w['top1'])}</td><td>{_pct(w['drop'])}</td>"
                    f'<td><div class="gallery">{thumbs}</div></td></tr>')
    return ("<h3>Worst classes</h3><table class=\"worst\"><thead><tr><th>class</th><th>pairs</th><th>base %</th>"
            f"<th>shifted %</th><th>drop</th><th>flips</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f'<span hidden data-shift-worst="{_e(shift)}"></span>')


def _by_confidence(pairs) -> list[_Pair]:
    return sorted(pairs, key=lambda q: (-(q.conf if q.conf is not None else 0.0), q.key))


def _comparison(models: list[_Model], plans: dict) -> dict[str, tuple[list[int], list[_Pair], list[list[_Pair]]]]:
    """Per shift every model evaluated: (each model's flip count, the flips all share, each model's own)."""
    out = {}
    for s in models[0].results.shifts:
        if s == "base" or not all(s in plans[m.slug] for m in models):
            continue
        sets = [{q.key: q for q in plans[m.slug][s][0]} for m in models]
        shared = set.intersection(*(set(x) for x in sets))
        only = [set(x) - set().union(*(set(y) for j, y in enumerate(sets) if j != i)) for i, x in enumerate(sets)]
        out[s] = ([len(x) for x in sets], _by_confidence(sets[0][k] for k in shared),
                  [_by_confidence(x[k] for k in o) for x, o in zip(sets, only)])
    return out


def _compare_page(models: list[_Model], writer: _Writer, groups: dict, max_pairs: int, links: dict[str, str]) -> str:
    names = [m.name for m in models]
    head = ("<tr><th>shift</th>" + "".join(f"<th>flips {_e(n)}</th>" for n in names) + "<th>shared by all</th>"
            + "".join(f"<th>only {_e(n)}</th>" for n in names) + "</tr>")
    rows, sections = [], []
    for s, (counts, shared, only) in groups.items():
        rows.append(f'<tr><td><a href="#cmp-{_e(s)}">{_e(s)}</a></td>'
                    + "".join(f"<td>{n}</td>" for n in counts) + f"<td>{len(shared)}</td>"
                    + "".join(f"<td>{len(o)}</td>" for o in only) + "</tr>")
        part = [f'<section id="cmp-{_e(s)}" data-shift="{_e(s)}"><h2>{_e(s)}</h2>',
                writer.gallery(shared, f"Flips every model shares (captions: {names[0]}'s predictions)", max_pairs,
                               f"shared-{s}", model=names[0])]
        for name, pairs in zip(names, only):
            part.append(writer.gallery(pairs, f"Flips only {name} makes", max_pairs, f"only-{_slug_id(name)}-{s}",
                                       model=name))
        part.append("</section>")
        sections.append("".join(part))
    model_links = "".join(f'<li><a href="{_e(links[m.slug])}">{_e(m.name)}</a>: mean top-1 '
                          f"{_pct(m.results['summary'].get('mean_top1'))}%, base "
                          f"{_pct(m.results['summary'].get('base_top1'))}%</li>" for m in models)
    top_head = "<tr><th>shift</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    top_rows = []
    for s in models[0].results.shifts:
        cells = []
        for m in models:
            v = m.results.shifts.get(s, {})
            ci = v.get("top1_ci")
            cells.append(f'<td data-v="{-1 if v.get("top1") is None else v["top1"]}">{_pct(v.get("top1"))}'
                         + (f' <small class="more">[{_pct(ci[0])}&ndash;{_pct(ci[1])}]</small>' if ci else "")
                         + "</td>")
        top_rows.append(f'<tr><td data-v="{_e(s)}">{_e(s)}</td>{"".join(cells)}</tr>')
    body = (f"<h1>dsi-bench comparison: {len(models)} models</h1>{_about(models[0], data_only=True)}"
            f"<h2>Models</h2><ul>{model_links}</ul><h2>Top-1 per shift (%, 95% interval)</h2>"
            f'<table id="top1"><thead>{top_head}</thead><tbody>{"".join(top_rows)}</tbody></table>'
            "<h2>Flips per shift</h2>"
            "<p class=\"more\">A flip: the base twin is classified right, the shifted sample wrong.</p>"
            f'<table id="compare"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>{"".join(sections)}')
    return _page("dsi-bench comparison", body)


def _slug_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------- entry point
def make_report(results, out: str | os.PathLike, *, root=None, max_pairs: int = MAX_PAIRS,
                thumb_size: int = THUMB_SIZE, progress: bool = True) -> Report:
    """Write the visual report of one or more results files into ``out`` (see the module docs).

    Args:
        results: a results JSON path, or several (a comparison when they share a data fingerprint).
        out: the report's folder: ``index.html``, ``img/``, and with several results one folder per model.
        root: where the data is now, when it moved since the evaluation (replaces the recorded root).
        max_pairs: pairs shown per gallery (the counts always cover every pair).
        thumb_size: longest side of a thumbnail in pixels.

    Returns:
        :class:`Report`: the page to open, each model's page, thumbnail count, size and build time.

    Raises:
        SpecError: a file that is not a results file, results without their predictions, predictions
            changed since, or several results on different data.
    """
    from .files import atomic_write, ensure_writable_dir
    from .validate import check_positive_int

    t0 = time.time()
    check_positive_int(max_pairs, "max_pairs", example=MAX_PAIRS)
    check_positive_int(thumb_size, "thumb_size", example=THUMB_SIZE)
    paths = [Path(results)] if isinstance(results, (str, os.PathLike)) else [Path(p) for p in results]
    if not paths:
        raise SpecError("make_report needs at least one results file")
    used: set[str] = set()
    models = [_load_model(p.expanduser(), used) for p in paths]
    given = {id(m): str(p) for m, p in zip(models, paths)}
    prints = {m.fingerprint for m in models}
    if len(prints) > 1:
        listed = "; ".join(f"{m.path.name}: {m.fingerprint}" for m in models)
        raise SpecError(f"a comparison needs results on the same data, but these differ ({listed}); report them "
                        "one at a time")
    out = ensure_writable_dir(out, "report folder")
    img = out / "img"
    images = _Images(models[0].results, img, root=root, size=thumb_size, progress=progress,
                     results_dir=models[0].path.resolve().parent)
    plans = {m.slug: {s: _flips(m.preds, s) for s in m.preds} for m in models}
    notes: list[str] = []
    for m in models:
        for s, (flips, _) in plans[m.slug].items():
            recorded = m.results.shifts.get(s, {}).get("flips")
            if recorded is not None and recorded != len(flips):
                notes.append(f"{m.name}: {s} has {len(flips)} flips in its predictions but {recorded} in its results")
    groups = _comparison(models, plans) if len(models) > 1 else None
    wanted = _wanted_keys(models, plans, max_pairs, groups)
    images.fetch(wanted)
    if images.problem:
        if root is not None:  # asked for: refused, not ignored
            raise SpecError(f"root={os.fspath(root)!r}: {images.problem}; pass the folder that holds the data")
        notes.append(f"images not shown: {images.problem}")
    class_names = _class_names(models[0].results)
    report = Report(index=out / "index.html", notes=notes)
    if len(models) == 1:
        m = models[0]
        writer = _Writer(images, "img/", class_names)
        page = _model_page(m, writer, plans[m.slug], max_pairs, _href(m.path, out), notes)
        atomic_write(out / "index.html", page.encode())
        report.pages[given[id(m)]] = out / "index.html"
    else:
        links = {}
        for m in models:
            writer = _Writer(images, "../img/", class_names)
            page = _model_page(m, writer, plans[m.slug], max_pairs, _href(m.path, out / m.slug), notes)
            target = out / m.slug / "index.html"
            atomic_write(target, page.encode())
            report.pages[given[id(m)]] = target
            links[m.slug] = f"{m.slug}/index.html"
        atomic_write(out / "index.html", _compare_page(models, _Writer(images, "img/", class_names), groups,
                                                       max_pairs, links).encode())
    report.thumbnails = sum(1 for v in images.thumbs.values() if v)
    report.bytes = _folder_bytes(out)
    report.seconds = round(time.time() - t0, 2)
    return report


def _href(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target.expanduser().resolve(), page_dir.resolve())).as_posix()


def _class_names(results: Results) -> list[str]:
    from .classes import imagenet_classes

    n = (results.data.get("label_space") or {}).get("num_classes")
    names: list[str] = []
    for s in results.shifts.values():
        for w in s.get("worst_classes") or []:
            names.extend([""] * (w["class"] + 1 - len(names)))
            names[w["class"]] = w["name"]
    if (results.data.get("label_space") or {}).get("name") == "imagenet" or n == 1000:
        return imagenet_classes().names
    return names


def _wanted_keys(models: list[_Model], plans: dict, max_pairs: int, groups: dict | None) -> list[str]:
    """Every sample a page shows (shifted and base twin), so the images are read once each."""
    keys: list[str] = []
    for m in models:
        for s, (flips, reverse) in plans[m.slug].items():
            for q in flips[:max_pairs] + reverse[:max_pairs]:
                keys += [q.key, twin_key(q.key)]
            for w in (m.results.shifts.get(s, {}).get("worst_classes") or [])[:WORST_CLASSES]:
                keys += [q.key for q in flips if q.label == w["class"]][:PER_CLASS]
    for _, shared, only in (groups or {}).values():
        for q in shared[:max_pairs] + [q for o in only for q in o[:max_pairs]]:
            keys += [q.key, twin_key(q.key)]
    return keys


