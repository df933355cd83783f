"""Token learning speed: the reference's textual-inversion loop against ``learn_tokens``, in one run.

Reference loop (diffusers' ``textual_inversion.py``, as used for ImageNet*): one class, batch 1;
every step re-encodes the image through the VAE, runs the text encoder and the UNet, and steps
AdamW over the *whole* embedding table (then restores the old rows). Ours: cached VAE latents
and ``--classes`` classes per batch (one sample each), AdamW on the new rows only.

Reported: class-steps per second (one class advanced by one step) and the implied seconds per
class for a full run of ``--full-steps`` steps.

    python benchmarks/bench_tokens.py                                   # CPU, tiny pipeline
    python benchmarks/bench_tokens.py --model sd2-random --device cuda --dtype float16 --resolution 768

Results go to ``benchmarks/results/tokens_<device>_<model>.json``.
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


def make_images(root: Path, classes: int, per_class: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class {c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def reference_loop(spec, folder: Path, steps: int, resolution: int) -> float:
    """The reference's loop for one class; returns seconds for ``steps`` steps (after one warm-up step)."""
    import torch
    from diffusers import DDPMScheduler

    from dsi_bench.learn import IMAGENET_TEMPLATES, _prepare_images
    from dsi_bench.pipeline import load_components

    parts = load_components(spec)
    unet, vae = parts.unet, parts.vae
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    scheduler = DDPMScheduler.from_config(parts.scheduler.config)
    text_encoder, tokenizer = parts.text_encoder, parts.tokenizer
    tokenizer.add_tokens(["<ref-token>"])
    text_encoder.resize_token_embeddings(len(tokenizer))
    table = text_encoder.get_input_embeddings()
    new_id = len(tokenizer) - 1
    original = table.weight.data.clone()
    text_encoder.requires_grad_(False)
    table.weight.requires_grad_(True)
    opt = torch.optim.AdamW([table.weight], lr=5e-4, weight_decay=1e-2)
    pixels, _ = _prepare_images(sorted((folder / sorted(p.name for p in folder.iterdir())[0]).iterdir()), resolution)
    g = torch.Generator("cpu").manual_seed(0)
    keep = torch.ones(len(tokenizer), dtype=torch.bool)
    keep[new_id] = False
    norm = original[new_id].norm()

    def step():
        j = int(torch.randint(len(pixels), (1,), generator=g))
        latents = vae.encode(pixels[j : j + 1].to(spec.device, spec.torch_dtype)).latent_dist.sample()
        latents = latents * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g).to(latents)
        t = torch.randint(scheduler.config.num_train_timesteps, (1,), generator=g).to(spec.device)
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        prompt = IMAGENET_TEMPLATES[int(torch.randint(27, (1,), generator=g))].format("<ref-token>")
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(spec.device)
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, hidden.to(spec.torch_dtype)).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            table.weight[keep] = original[keep]
            table.weight[new_id] *= norm / table.weight[new_id].norm()

    step()  # warm-up
    sync(spec.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(spec.device)
    return time.perf_counter() - start


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="tiny", help="tiny, sd2-random, or a diffusers folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--classes", type=int, default=8, help="classes per batch for ours")
    parser.add_argument("--images", type=int, default=5, help="training images per class")
    parser.add_argument("--full-steps", type=int, default=3000, help="steps of a full run (for seconds/class)")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    from dsi_bench.learn import learn_tokens
    from dsi_bench.pipeline import PipelineSpec
    from dsi_bench.testing import save_tiny_pipeline

    work = Path(args.work or tempfile.mkdtemp(prefix="dsi-bench-tokens-"))
    if args.generator == "tiny":
        model = work / "tiny-sd"
        if not model.exists():
            save_tiny_pipeline(model)
    elif args.generator == "sd2-random":
        from sd2_random import save_sd2_random

        model = save_sd2_random(work / "sd2-random")
    else:
        model = Path(args.generator)
    folder = make_images(work / "data", args.classes, args.images, max(args.resolution, 32))
    spec = PipelineSpec(model=str(model), device=args.device, dtype=args.dtype)
    rows = []

    ref = reference_loop(spec, folder, args.steps, args.resolution)
    rows.append({"name": "reference loop (1 class, batch 1, re-encoding, AdamW on the table)", "classes": 1,
                 "steps": args.steps, "seconds": round(ref, 3), "class_steps_per_s": round(args.steps / ref, 3)})
    for b in sorted({1, args.classes}):
        learn_tokens(folder, pipeline=spec, max_steps=1, resolution=args.resolution, classes_per_batch=b,
                     classes=list(range(b)), progress=False)  # warm-up
        sync(args.device)
        start = time.perf_counter()
        learn_tokens(folder, pipeline=spec, max_steps=args.steps, resolution=args.resolution, classes_per_batch=b,
                     classes=list(range(b)), progress=False)
        sync(args.device)
        seconds = time.perf_counter() - start  # includes the one-off latent encoding
        rows.append({"name": f"dsi-bench learn_tokens, {b} class{'es' if b > 1 else ''} per batch", "classes": b,
                     "steps": args.steps, "seconds": round(seconds, 3),
                     "class_steps_per_s": round(b * args.steps / seconds, 3)})
    for r in rows:
        r["seconds_per_class_full_run"] = round(args.full_steps / r["class_steps_per_s"], 1)
        print(json.dumps(r))
    base = rows[0]["class_steps_per_s"]
    result = {
        "benchmark": "tokens",
        "model": args.generator,
        "device": args.device,
        "resolution": args.resolution,
        "hardware": hardware(args.device),
        "rows": rows,
        "speedup_vs_reference": {r["name"]: round(r["class_steps_per_s"] / base, 2) for r in rows[1:]},
    }
    write_result(result, args.out, f"tokens_{args.device.split(':')[0]}_{Path(str(args.generator)).name}.json")
    return result


if __name__ == "__main__":
    main()
