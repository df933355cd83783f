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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--num-workers", default="0,2", help="DataLoader worker counts to time")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many passes per row")
    parser.add_argument("--work", default=None, help="folder for the data (default: a temp dir)")
    parser.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/loader_cpu.json)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from dsi_bench.datasets import ShiftedImageNet

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
    for w in [int(x) for x in args.num_workers.split(",")]:
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
    for w in [int(x) for x in args.num_workers.split(",")]:
        for name in ("shards, random access", "shards, stream", "shards, random access, fast_decode",
                     "shards, stream, fast_decode"):
            ratios[f"{name}, workers {w}"] = {
                "vs_imagefolder": round(rate(name, w) / rate("ImageFolder + mask (reference)", w), 2),
                "vs_bare_loop": round(rate(name, w) / bare, 2),
            }
    result = {
        "benchmark": "loader",
        "images": len(chosen),
        "image_size": 512,
        "transform": "Resize(256), CenterCrop(224), ToTensor, Normalize",
        "batch_size": args.batch_size,
        "hardware": hardware("cpu"),
        "torch_threads": torch.get_num_threads(),
        "decode_default": "full",
        "rows": rows,
        "ratios": ratios,
        "fast_decode_pixel_diff_0_255": pixel_diff,
        "targets": {"vs_imagefolder": 1.5, "vs_bare_loop": 0.8},
    }
    write_result(result, args.out, "loader_cpu.json")
    return result


if __name__ == "__main__":
    main()
