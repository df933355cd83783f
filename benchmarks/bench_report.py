"""How big and how fast is the visual report? Measured on the world study, extrapolated to ImageNet*.

1. The world study (``make demo``'s: 3 classifiers, base + 8 shifts, 900 samples): build the
   comparison report; its size, thumbnails and time. Against the reference approach in the same run:
   finding the same images by streaming every sample of every shift (what a DataLoader loop does),
   instead of the report's indexed reads of only the samples it shows.
2. ImageNet* at full size (1000 classes x 50 x 24 shifts = 1.2 M samples), one model: synthetic
   predictions (random, 80 % top-1 under base falling per shift) written as ``eval`` writes them; the
   report built without images measures everything that grows with the evaluation (reading and
   pairing the predictions, the pages); the thumbnail part is bounded by the gallery caps and timed
   on 512 px JPEGs (SD2's output size).

Writes ``benchmarks/results/report_cpu.json``.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware, write_result  # noqa: E402


def _world(study: Path | None, tmp: Path) -> dict:
    from dsi_bench.datasets import ShiftedDataset
    from dsi_bench.demo import WORLD_CLASSIFIERS, run_world_study
    from dsi_bench.report import make_report

    if study is None or not (study / "results").is_dir():
        study = study or tmp / "study"
        run_world_study(study, progress=False)
    paths = [study / "results" / f"{c.replace(':', '-')}.json" for c in WORLD_CLASSIFIERS]
    t = time.perf_counter()
    report = make_report(paths, tmp / "world-report", progress=False)
    built = time.perf_counter() - t
    # the reference approach: stream every sample of every shift to pick out the ones shown
    t = time.perf_counter()
    n = 0
    for shift in ShiftedDataset("base", source="shards", root=study / "shards").backend.available_shifts(
            study / "shards"):
        for _ in ShiftedDataset(shift, source="shards", root=study / "shards").stream():
            n += 1
    streamed = time.perf_counter() - t
    html = sum(p.stat().st_size for p in (tmp / "world-report").rglob("*.html"))
    return {"models": len(paths), "samples": n, "seconds": round(built, 2), "bytes": report.bytes,
            "html_bytes": html, "thumbnails": report.thumbnails,
            "reference_stream_all_seconds": round(streamed, 2), "notes": report.notes}


def _synthetic(tmp: Path, classes: int, per_class: int, shifts: int, seed: int = 0) -> tuple[Path, int]:
    from dsi_bench.classes import imagenet_classes
    from dsi_bench.layout import sample_key
    from dsi_bench.metrics import ShiftPredictions
    from dsi_bench.results import build_results
    from dsi_bench.shifts import list_shifts

    rng = np.random.default_rng(seed)
    ids = ["base"] + [s.id for s in list_shifts() if s.id != "base"][: shifts - 1]
    labels = np.repeat(np.arange(classes), per_class)
    keys_index = np.tile(np.arange(per_class), classes)
    preds = {}
    base_ok = rng.random(len(labels)) < 0.8
    for i, s in enumerate(ids):
        ok = base_ok if s == "base" else base_ok & (rng.random(len(labels)) < 1 - 0.02 * (i % 20))
        ok |= rng.random(len(labels)) < 0.02
        top = rng.integers(0, 1000, (len(labels), 5))
        top[ok, 0] = labels[ok]
        top[~ok, 0] = (labels[~ok] + 1 + rng.integers(0, 998, (~ok).sum())) % 1000
        keys = [sample_key(s, int(c), int(k)) for c, k in zip(labels, keys_index)]
        preds[s] = ShiftPredictions(keys, labels.copy(), top, rng.random(len(labels)).astype(np.float32))
    names = imagenet_classes().names
    results = build_results(preds, class_names=names, model={"name": "synthetic"},
                            data={"source": "shards", "root": str(tmp / "no-such-shards"), "fingerprint": "synthetic"})
    results.predictions = preds
    path = tmp / "synthetic.json"
    results.save(path)
    return path, len(labels) * len(ids)


def _thumbnail_cost(tmp: Path, n: int = 200) -> dict:
    """Seconds and bytes per thumbnail from 512 px JPEGs (world renders upscaled: smooth, like photos)."""
    from PIL import Image

    from dsi_bench.report import THUMB_SIZE
    from dsi_bench.world.scene import WORLD_CLASSES, render

    sources = []
    for i in range(n):
        im = render(WORLD_CLASSES[i % 10].index, "in_the_grass" if i % 2 else "base", i).resize((512, 512),
                                                                                                 Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        sources.append(buf.getvalue())
    t = time.perf_counter()
    sizes = []
    for data in sources:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        im.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=85, optimize=True)
        sizes.append(len(out.getvalue()))
    return {"seconds_each": (time.perf_counter() - t) / n, "bytes_each": float(np.mean(sizes)), "from": "512px JPEG"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default=None, help="a world study folder to reuse (default: run one, ~3 min)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--shifts", type=int, default=24, help="shifts including base (default: 24)")
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/report_cpu.json)")
    args = p.parse_args(argv)

    from dsi_bench.report import MAX_PAIRS, PER_CLASS, WORST_CLASSES, make_report

    result = {"hardware": hardware(), "max_pairs": MAX_PAIRS}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result["world"] = _world(Path(args.study) if args.study else None, tmp)
        print("world:", result["world"])
        t = time.perf_counter()
        path, n = _synthetic(tmp, args.classes, args.per_class, args.shifts)
        made = time.perf_counter() - t
        pred_bytes = (tmp / "synthetic.predictions.csv.gz").stat().st_size
        t = time.perf_counter()
        report = make_report(path, tmp / "full-report", progress=False)
        assert report.notes, "the synthetic results name no images"
        built = time.perf_counter() - t
        html = sum(p.stat().st_size for p in (tmp / "full-report").rglob("*.html"))
        thumbs = _thumbnail_cost(tmp)
        shown = (args.shifts - 1) * (2 * 2 * MAX_PAIRS + WORST_CLASSES * PER_CLASS)  # at most, base twins shared
        result["imagenet_star_scale"] = {
            "samples": n, "predictions_file_bytes": pred_bytes, "synthetic_results_seconds": round(made, 1),
            "report_without_images_seconds": round(built, 2), "html_bytes": html,
            "thumbnails_at_most": shown, "thumbnail": thumbs,
            "estimated_total_seconds": round(built + shown * thumbs["seconds_each"], 1),
            "estimated_total_bytes": int(html + shown * thumbs["bytes_each"]),
            "note": "thumbnail reads from shards add one indexed tar read per shown image",
        }
        print("ImageNet* scale:", result["imagenet_star_scale"])
    write_result(result, args.out, "report_cpu.json")
    return result


if __name__ == "__main__":
    main()
