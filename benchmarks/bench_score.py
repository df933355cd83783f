"""Scoring a predictions CSV: memory per row and seconds, streaming reader against the previous dict reader.

The file is what ``eval --predictions`` writes (``key,label,prediction,top5``) for ImageNet-1k:
``base`` and the catalog's shifts, 1000 classes each, as many samples per class as it takes to reach
``--rows`` (over 99 per class from 2.4 M rows on: keys such as ``base/0000/100``). Each row runs
in its own process and reports its peak resident memory above what the process held before the
work (imports and the class list loaded), per row of the file, and its wall time:

* ``score_predictions``: the whole ``dsi-bench score`` without a source (read, check, metrics);
* ``read (streaming arrays)``: reading alone, as ``score_predictions`` does it now;
* ``read (dict, before)``: the reader of dsi-bench <= 0.2 (a dict of per-key lists), on ``--old-rows``.

``retained_bytes_per_row`` (tracemalloc, on ``--trace-rows``) is what the read file keeps while it is scored.

    python benchmarks/bench_score.py                                  # 1 M rows, the old reader on 200 k
    python benchmarks/bench_score.py --rows 10000000 --kinds score --out benchmarks/results/score_cpu_10m.json

Results go to ``benchmarks/results/score_cpu.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import hardware, write_result  # noqa: E402


def write_csv(path: Path, rows: int) -> int:
    """An ``eval --predictions`` file of at least ``rows`` rows (every shift, 1000 classes); its row count."""
    from dsi_bench.layout import sample_key
    from dsi_bench.shifts import list_shifts

    shifts = ["base", *[s.id for s in list_shifts() if s.id != "base"]]
    per_class = math.ceil(rows / (len(shifts) * 1000))
    shifts = shifts[: math.ceil(rows / (per_class * 1000))]
    n = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["key", "label", "prediction", "top5"])
        for s in shifts:
            for c in range(1000):
                for i in range(per_class):
                    top = [(c + d * (i % 3)) % 1000 for d in range(5)]
                    w.writerow([sample_key(s, c, i), c, top[0], " ".join(map(str, top))])
                    n += 1
    return n


def old_read(path: Path) -> dict:
    """The previous reader's data structure: ``{key: ([top labels], label)}`` from ``csv.DictReader``."""
    rows = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            top = [int(t) for t in row["top5"].split()]
            first = int(row["prediction"])
            rows[row["key"].strip()] = ([first] + [t for t in top if t != first], int(row["label"]))
    return rows


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(kind: str, path: str, rows: int) -> dict:
    """Run one measurement in this process (started by :func:`measure`)."""
    import tracemalloc

    from dsi_bench.classes import imagenet_classes
    from dsi_bench.score import _read, score_predictions

    classes = imagenet_classes()
    warm = Path(path).with_suffix(".warm.csv")  # import what scoring imports before the baseline is taken
    warm.write_text("key,prediction\nbase/0000/00,0\n")
    score_predictions(warm)
    warm.unlink()
    work = {"score": lambda: score_predictions(path, worst_k=3),
            "read": lambda: _read(path, classes),
            "old": lambda: old_read(Path(path)),
            "trace": lambda: _read(path, classes)}[kind]
    if kind == "trace":
        tracemalloc.start()
        kept = work()
        retained = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return {"retained_bytes_per_row": round(retained / rows, 1), "rows": len(kept)}
    before = _rss_bytes()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": round(seconds, 2), "peak_bytes_per_row": round((peak - before) / rows, 1),
            "peak_mb_above_start": round((peak - before) / 2**20, 1), "rows_per_s": round(rows / seconds)}


def measure(kind: str, path: Path, rows: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(rows)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--old-rows", type=int, default=200_000, help="rows for the previous dict reader")
    parser.add_argument("--trace-rows", type=int, default=200_000, help="rows for the tracemalloc measurement")
    parser.add_argument("--kinds", default="score,read,old,trace",
                        help="which rows to measure (score, read, old, trace; default: all)")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return {}

    work = Path(args.work or tempfile.mkdtemp(prefix="dsi-bench-score-"))
    work.mkdir(parents=True, exist_ok=True)
    results, made, sizes = [], [], {}
    for name, kind, rows in (("score_predictions", "score", args.rows), ("read (streaming arrays)", "read", args.rows),
                             ("read (dict, before)", "old", args.old_rows),
                             ("read (streaming arrays)", "read", args.old_rows),
                             ("read, retained (tracemalloc)", "trace", args.trace_rows)):
        if kind not in args.kinds.split(","):
            continue
        path = work / f"p{rows}.csv"
        if path not in made:
            made.append(path)
            sizes[path] = write_csv(path, rows)
        n = sizes[path]
        row = {"name": name, "rows": n, "file_mb": round(path.stat().st_size / 2**20, 1), **measure(kind, path, n)}
        print(row)
        results.append(row)
    for p in made:  # only the files this run wrote
        p.unlink()
    return write_result({"benchmark": "score", "hardware": hardware(), "rows": results}, args.out, "score_cpu.json")


if __name__ == "__main__":
    main()
