"""Images/s to model-ready 224 px tensors: our shard source against the reference's loader, in one run.

Data: N synthetic 512x512 JPEGs (smooth photo-like content, quality 90) laid out like the
ImageNet* release (``base/{wnid}/{NN}.jpg``, 50 per class), a release-format mask keeping
about 85%, and the same data converted to our shards with ``dsi-bench convert``.

Rows (same transform everywhere: Resize(256), CenterCrop(224), ToTensor, Normalize):

* ``bare loop``: ``Image.open(path).convert("RGB")`` + transform over the kept files, one process.
* ``ImageFolder + mask`` (the reference release's loader): ``torchvision.datasets.ImageFolder``
  wrapped in ``Subset`` of the mask's kept positions, through a ``DataLoader``.
* ``shards, random access`` / ``shards, stream``: ``ShiftedImageNet(source="shards", masks=True)``
  and its ``.stream()``, through the same ``DataLoader`` settings, with the default full JPEG decoding
  (what the original and every published number use).
* ``..., fast_decode``: the same with the opt-in ``fast_decode=True`` (libjpeg draft mode), to show
  what it buys; its inputs differ from full decoding (``pixel_diff`` in the results says by how much).
* ``checked`` / ``unchecked``: the cost of checked reads. Each pass starts as a fresh process would
  (no shard verified or indexed in memory; the page cache warm) and times opening the dataset
  plus one pass: ``verify=True`` (the default: every shard read and its sha256 compared, index
  scanned in the same read) against ``verify=False`` (index from the disk cache, as before checked
  reads existed), alternated. ``verification_cost`` in the results: ``end_to_end`` (checked /
  unchecked - 1 per row), and, since on a shared machine the noise is larger than the cost, the
  cost measured directly: opening checked vs unchecked (best of many), the extra seconds per pass,
  and that over the fastest unchecked pass (target <= 0.10). Later reads in the process (and in
  forked DataLoader workers) hash nothing again.

    python benchmarks/bench_loader.py --only-verification    # only these rows -> loader_verification_cpu.json

    python benchmarks/bench_loader.py                    # 1000 images, workers 0 and 2
    python benchmarks/bench_loader.py --images 5000 --num-workers 0,2,4

Results go to ``benchmarks/results/loader_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import hardware, write_result  # noqa: E402


def make_release(root: Path, n_images: int, seed: int = 0) -> tuple[list[str], Path]:
    """A release-style folder of photo-like JPEGs and a release-format mask file (.npz)."""
    import numpy as np
    from PIL import Image

    per_class = 50
    n_classes = max(1, -(-n_images // per_class))
    wnids = [f"n0{i:07d}" for i in range(n_classes)]
    rng = np.random.default_rng(seed)
    for _c, wnid in enumerate(wnids):
        folder = root / "base" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((512, 512), Image.Resampling.BICUBIC)
            pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, (512, 512, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:02d}.jpg", quality=90)
    keep = np.ones(50_000, dtype=bool)
    keep[: n_classes * per_class] = rng.random(n_classes * per_class) < 0.85
    masks = root / "masks.npz"
    np.savez(masks, base=keep)
    return wnids, masks


def prepare_shards(work: Path, n_images: int, samples_per_shard: int):
    """The release-style folder (made once per ``work``), its class list, and the converted shards."""
    from dsi_bench.convert import convert_release
    from dsi_bench.testing import fake_imagenet_classes

    release = work / "release"
    if not (release / "masks.npz").is_file():
        wnids, masks = make_release(release, n_images)
    else:
        wnids, masks = sorted(p.name for p in (release / "base").iterdir()), release / "masks.npz"
    classes = fake_imagenet_classes(wnids)
    shards = work / "shards"
    convert_release(release, shards, masks=masks, class_list=classes, classes=list(range(len(wnids))),
                    samples_per_shard=samples_per_shard, progress=False)
    return release, wnids, masks, classes, shards


def transform():
    from torchvision import transforms as T

    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def time_loader(loader, repeats: int) -> tuple[float, int]:
    """Best-of-``repeats`` seconds to drain a loader, and the number of images."""
    best, n = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        n = 0
        for x, _ in loader:
            n += x.shape[0]
        best = min(best, time.perf_counter() - start)
    return best, n


def time_cold(shards, classes, tf, verify: bool, stream: bool, loader_kw: dict) -> tuple[float, int]:
    """Seconds to open the shard dataset and drain one pass with nothing of it in memory (as in a new
    process), and the number of images: ``verify`` hashes every shard on open, else the cached index is used."""
    from torch.utils.data import DataLoader

    from dsi_bench import shards as shards_mod
    from dsi_bench.datasets import ShiftedImageNet

    shards_mod._MEMO.clear()
    shards_mod._VERIFIED.clear()
    start = time.perf_counter()
    ds = ShiftedImageNet("base", source="shards", root=shards, masks=True, transform=tf, class_list=classes,
                         verify=verify)
    n = 0
    for x, _ in DataLoader(ds.stream() if stream else ds, persistent_workers=False, **loader_kw):
        n += x.shape[0]
    return time.perf_counter() - start, n


def open_seconds(shards, classes, verify: bool, repeats: int) -> float:
    """Best-of-``repeats`` seconds to open the shard dataset with nothing of it in memory: with
    ``verify``, every shard is read, hashed and scanned; without, the index comes from the disk cache.
    Their difference is all that checked reads add to a pass (the reads after it hash nothing again)."""
    from dsi_bench import shards as shards_mod
    from dsi_bench.datasets import ShiftedImageNet

    best = float("inf")
    for _ in range(repeats):
        shards_mod._MEMO.clear()
        shards_mod._VERIFIED.clear()
        start = time.perf_counter()
        len(ShiftedImageNet("base", source="shards", root=shards, masks=True, class_list=classes, verify=verify))
        best = min(best, time.perf_counter() - start)
    return best


def verification_rows(shards, classes, tf, workers: list[int], batch_size: int, repeats: int, record) -> dict:
    """Checked against unchecked reads, alternating so that load on the machine hits both alike:
    ``end_to_end`` is checked / unchecked - 1 per view and worker count (best of ``repeats`` each; on a
    loaded machine the noise is larger than the cost), and the open times give the cost directly."""
    cost, unchecked = {}, []
    for w in workers:
        for view in ("random access", "stream"):
            best, n = {True: float("inf"), False: float("inf")}, 0
            for _ in range(repeats):
                for verify in (True, False):
                    seconds, n = time_cold(shards, classes, tf, verify, view == "stream",
                                           dict(batch_size=batch_size, num_workers=w))
                    best[verify] = min(best[verify], seconds)
            for verify in (True, False):
                record(f"shards, {view}, {'checked' if verify else 'unchecked'} (open + one pass)", best[verify], n, w)
            cost[f"{view}, workers {w}"] = round(best[True] / best[False] - 1, 3)
            unchecked.append(best[False])
    opened = {verify: open_seconds(shards, classes, verify, 5 * repeats) for verify in (True, False)}
    extra = opened[True] - opened[False]
    return {"end_to_end": cost, "open_seconds_checked": round(opened[True], 4),
            "open_seconds_unchecked": round(opened[False], 4), "extra_seconds_per_pass": round(extra, 4),
            "hash_and_scan_mb_per_s": round(shard_bytes(shards) / opened[True] / 1e6, 1),
            "estimate_vs_fastest_unchecked_pass": round(extra / min(unchecked), 4)}


def shard_bytes(shards) -> int:
    return sum(p.stat().st_size for p in shards.rglob("*.tar"))


def compare_loaders(release, shards, classes, tf, kept, workers, args, record, rows) -> dict:
    """The bare loop, the reference loader and ours (random access, stream, fast_decode); ratios and pixel diff."""
    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from dsi_bench.datasets import ShiftedImageNet

    paths = sorted((release / "base").rglob("*.jpg"))
    chosen = [paths[i] for i in kept]
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        for p in chosen:
            tf(Image.open(p).convert("RGB"))
        best = min(best, time.perf_counter() - start)
    record("bare loop", best, len(chosen))

    folder = Subset(ImageFolder(str(release / "base"), transform=tf), kept)
    ours = ShiftedImageNet("base", source="shards", root=shards, masks=True, transform=tf, class_list=classes)
    fast = ShiftedImageNet("base", source="shards", root=shards, masks=True, transform=tf, class_list=classes,
                           fast_decode=True)
    assert len(ours) == len(folder) == len(chosen), (len(ours), len(folder), len(chosen))
    for w in workers:
        kw = dict(batch_size=args.batch_size, num_workers=w, persistent_workers=False)
        record("ImageFolder + mask (reference)", *time_loader(DataLoader(folder, **kw), args.repeats), w)
        record("shards, random access", *time_loader(DataLoader(ours, **kw), args.repeats), w)
        record("shards, stream", *time_loader(DataLoader(ours.stream(), **kw), args.repeats), w)
        record("shards, random access, fast_decode", *time_loader(DataLoader(fast, **kw), args.repeats), w)
        record("shards, stream, fast_decode", *time_loader(DataLoader(fast.stream(), **kw), args.repeats), w)
    # how far draft decoding moves the classifier's input (0-255 scale, before Normalize), on the first 64
    diffs = [(fast[i][0] - ours[i][0]).abs() * torch.tensor([0.229, 0.224, 0.225])[:, None, None] * 255
             for i in range(min(64, len(ours)))]
    diffs = torch.stack(diffs).numpy()
    pixel_diff = {"mean": round(float(diffs.mean()), 3), "p99": round(float(np.percentile(diffs, 99)), 3),
                  "images": len(diffs)}

    def rate(name, w):
        return next(r["images_per_s"] for r in rows if r["name"] == name and r["workers"] == w)

    bare = rows[0]["images_per_s"]
    ratios = {}
    for w in workers:
        for name in ("shards, random access", "shards, stream", "shards, random access, fast_decode",
                     "shards, stream, fast_decode"):
            ratios[f"{name}, workers {w}"] = {
                "vs_imagefolder": round(rate(name, w) / rate("ImageFolder + mask (reference)", w), 2),
                "vs_bare_loop": round(rate(name, w) / bare, 2),
            }
    return {"ratios": ratios, "fast_decode_pixel_diff_0_255": pixel_diff}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--num-workers", default="0,2", help="DataLoader worker counts to time")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many passes per row")
    parser.add_argument("--work", default=None, help="folder for the data (default: a temp dir)")
    parser.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/loader_cpu.json)")
    parser.add_argument("--only-verification", action="store_true",
                        help="time only the checked/unchecked rows (the verification cost)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    work = Path(args.work or tempfile.mkdtemp(prefix="dsi-bench-loader-"))
    release, wnids, masks, classes, shards = prepare_shards(work, args.images, 250)
    tf = transform()
    keep = np.load(masks)["base"][: len(wnids) * 50]
    kept = np.flatnonzero(keep).tolist()

    rows = []

    def record(name, seconds, n, workers=None):
        row = {"name": name, "workers": workers, "images": n, "seconds": round(seconds, 3),
               "images_per_s": round(n / seconds, 1)}
        rows.append(row)
        print(json.dumps(row))

    # warm the page cache for every reader
    for p in (release / "base").rglob("*.jpg"):
        p.read_bytes()
    for p in shards.rglob("*.tar"):
        p.read_bytes()

    workers = [int(x) for x in args.num_workers.split(",")]
    comparison = {} if args.only_verification else compare_loaders(release, shards, classes, tf, kept, workers, args,
                                                                     record, rows)
    cost = verification_rows(shards, classes, tf, workers, args.batch_size, args.repeats, record)
    result = {
        "benchmark": "loader",
        "images": len(kept),
        "image_size": 512,
        "transform": "Resize(256), CenterCrop(224), ToTensor, Normalize",
        "batch_size": args.batch_size,
        "hardware": hardware("cpu"),
        "torch_threads": torch.get_num_threads(),
        "decode_default": "full",
        "rows": rows,
        **comparison,
        "verification_cost": cost,
        "verification_machine": "2 shared CPU cores, under load from other jobs: ratios are of best-of-repeats, "
                                "checked and unchecked passes alternated",
        "shard_bytes": shard_bytes(shards),
        "targets": {"vs_imagefolder": 1.5, "vs_bare_loop": 0.8, "verification_cost": 0.10},
    }
    write_result(result, args.out, "loader_verification_cpu.json" if args.only_verification else "loader_cpu.json")
    return result


if __name__ == "__main__":
    main()
