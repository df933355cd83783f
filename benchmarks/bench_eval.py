"""Harness overhead: ``dsi_bench.evaluate`` against a bare ``for x, y in loader: model(x)`` loop, in one run.

Both read the same shards through the same ``DataLoader`` settings (stream, workers, batch size)
and run the same model; the harness adds what it is for (top-5, keys, exactly-once checks, the
metrics, the results document). Data: photo-like 512x512 JPEGs in the release layout (as in
``bench_loader.py``) converted to shards. Model: torchvision ResNet-18 with random weights
(same FLOPs as the trained one) and its weights' preprocessing.

    python benchmarks/bench_eval.py                         # CPU, 512 images
    python benchmarks/bench_eval.py --device cuda --images 10000 --model resnet50 --amp

Results go to ``benchmarks/results/eval_<device>.json``.
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--classifier", default="resnet18", help="torchvision model name (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many passes per row, interleaved")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch
    from bench_loader import prepare_shards
    from torch.utils.data import DataLoader

    from dsi_bench.datasets import ShiftedImageNet
    from dsi_bench.evaluate import evaluate
    from dsi_bench.models import load_model

    work = Path(args.work or tempfile.mkdtemp(prefix="dsi-bench-eval-"))
    _, _, _, classes, shards = prepare_shards(work, args.images, 128)
    loaded = load_model(f"torchvision:{args.classifier}", weights="none")
    device = args.device
    model = loaded.module.to(device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def bare() -> tuple[float, int]:
        ds = ShiftedImageNet("base", source="shards", root=shards, transform=loaded.transform, class_list=classes)
        loader = DataLoader(ds.stream(), batch_size=args.batch_size, num_workers=args.num_workers,
                            pin_memory=device.startswith("cuda"))
        n = 0
        start = time.perf_counter()
        with torch.inference_mode():
            for x, _ in loader:
                x = x.to(device, non_blocking=True)
                if device.startswith("cuda"):
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.split(":")[0], dtype=amp_dtype, enabled=args.amp):
                    model(x)
                n += x.shape[0]
        sync()
        return time.perf_counter() - start, n

    def harness() -> tuple[float, int]:
        start = time.perf_counter()
        r = evaluate(loaded, {"source": "shards", "root": shards, "class_list": classes}, shifts="base",
                     batch_size=args.batch_size, num_workers=args.num_workers, device=device, amp=args.amp,
                     progress=False)
        sync()
        return time.perf_counter() - start, r.shifts["base"]["n"]

    bare()  # warm-up: page cache, allocator, shard index
    times = {"bare loop": [], "dsi_bench.evaluate": []}
    n = 0
    for _ in range(args.repeats):
        for name, fn in (("bare loop", bare), ("dsi_bench.evaluate", harness)):
            seconds, n = fn()
            times[name].append(seconds)
    rows = []
    for name, ts in times.items():
        rows.append({"name": name, "images": n, "seconds_best": round(min(ts), 3),
                     "seconds_all": [round(t, 3) for t in ts], "images_per_s": round(n / min(ts), 1)})
        print(json.dumps(rows[-1]))
    overhead = min(times["dsi_bench.evaluate"]) / min(times["bare loop"]) - 1
    result = {
        "benchmark": "eval",
        "model": f"torchvision:{args.classifier} (random weights)",
        "device": device,
        "amp": args.amp,
        "batch_size": args.batch_size,
        "workers": args.num_workers,
        "hardware": hardware(device),
        "rows": rows,
        "harness_overhead": round(overhead, 4),
        "target_overhead": 0.05,
    }
    print(f"harness overhead: {100 * overhead:+.1f}%")
    write_result(result, args.out, f"eval_{device.split(':')[0]}.json")
    return result


if __name__ == "__main__":
    main()
