"""Images/s of the reference's generation loop against ours, in one run, on the same pipeline.

Reference loop (the ImageNet* code release): one image per pipeline call, Euler, 50 steps,
guidance 7.5, a generator per prompt, then a resize. Ours: the same pipeline object and
sampler settings through :class:`dsi_bench.synthesis.Synthesizer` (fixed-size denoiser
batches, one generator per sample). Extra rows show our batch-size-1 path and a faster
sampler preset.

    python benchmarks/bench_generate.py                       # CPU, tiny pipeline
    python benchmarks/bench_generate.py --model sd2-random --device cuda --dtype float16

``sd2-random`` is SD2's full architecture with random weights (same FLOPs, nothing to
download). Results go to ``benchmarks/results/generate_<device>_<model>.json``; UNet
utilization is reported against ``--peak-tflops`` (default: H200 dense bf16/fp16, 989).
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


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def unet_flops_per_sample(pipe, size: int) -> int:
    """FLOPs of one UNet forward for one latent (no guidance doubling), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    latent = size // pipe.vae_scale_factor
    x = torch.randn(1, unet.config.in_channels, latent, latent, device=unet.device, dtype=unet.dtype)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, device=unet.device, dtype=unet.dtype)
    t = torch.tensor([500], device=unet.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=ctx)
    return int(counter.get_total_flops())


def reference_loop(loaded, requests, synth, spec) -> float:
    """The release's loop: one prompt per call, Euler, generator per prompt, resize after."""
    import torch
    from diffusers import EulerDiscreteScheduler

    pipe = loaded.pipe
    pipe.scheduler = EulerDiscreteScheduler.from_config(loaded.scheduler_config)
    size = spec.gen_size or loaded.native_size
    _sync(spec.device)
    start = time.perf_counter()
    for r in requests:
        generator = torch.Generator(spec.device).manual_seed(r.sample_seed)
        image = pipe(synth.prompt(r), num_inference_steps=spec.num_steps, guidance_scale=spec.guidance_scale,
                     height=size, width=size, generator=generator).images[0]
        if spec.out_size:
            image = image.resize((spec.out_size, spec.out_size))  # PIL default (bicubic), as the original
    _sync(spec.device)
    return time.perf_counter() - start


def ours(synth, requests, spec) -> float:
    _sync(spec.device)
    start = time.perf_counter()
    synth.generate(requests)
    _sync(spec.device)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="tiny", help="tiny, sd2-random, or a diffusers folder")
    parser.add_argument("--tokens", default=None, help="token bank (default: random tokens fitting the model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--images", type=int, default=32, help="images per row")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--gen-size", type=int, default=None, help="override the native size (CPU smoke runs)")
    parser.add_argument("--out-size", type=int, default=512)
    parser.add_argument("--batch-sizes", default="1,8", help="our denoiser batch sizes to time")
    parser.add_argument("--fast-sampler", default="dpm++2m", help="extra row: a faster preset at its default steps")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak for utilization")
    parser.add_argument("--work", default=None, help="folder for generated models (default: a temp dir)")
    parser.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/...)")
    args = parser.parse_args(argv)

    import diffusers
    import torch  # noqa: F401
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    from dsi_bench.classes import imagenet_classes
    from dsi_bench.pipeline import PipelineSpec, load_pipeline
    from dsi_bench.synthesis import Synthesizer, make_requests
    from dsi_bench.testing import save_tiny_pipeline, save_tiny_tokens
    from dsi_bench.tokens import load_tokens

    work = Path(args.work or tempfile.mkdtemp(prefix="dsi-bench-bench-"))
    if args.generator == "tiny":
        model = save_tiny_pipeline(work / "tiny-sd") if not (work / "tiny-sd").exists() else work / "tiny-sd"
        dim = 32
    elif args.generator == "sd2-random":
        from sd2_random import save_sd2_random

        model, dim = save_sd2_random(work / "sd2-random"), 1024
    else:
        model, dim = Path(args.generator), None
    tokens = args.tokens or save_tiny_tokens(work / f"tokens-{dim}.safetensors", dim=dim or 1024)
    bank = load_tokens(tokens)
    classes = imagenet_classes()
    base = PipelineSpec(model=str(model), device=args.device, dtype=args.dtype, steps=args.steps,
                        gen_size=args.gen_size, out_size=args.out_size or None)
    requests = make_requests("in the snow", list(range(args.images)), 1)
    warm = make_requests("base", [999], 1)

    loaded = load_pipeline(base, bank)
    size = base.gen_size or loaded.native_size
    flops = unet_flops_per_sample(loaded.pipe, size)
    guidance_factor = 2 if base.guidance_scale > 1 else 1
    rows = []

    def record(name, spec, seconds, n, batch_size=None):
        ips = n / seconds
        unet_tflops = ips * spec.num_steps * guidance_factor * flops / 1e12
        row = {"name": name, "sampler": spec.sampler, "steps": spec.num_steps,
               "batch_size": batch_size or spec.batch_size,
               "images": n, "seconds": round(seconds, 3), "images_per_s": round(ips, 3),
               "unet_tflops_per_s": round(unet_tflops, 3)}
        if args.device.startswith("cuda"):
            row["unet_utilization"] = round(unet_tflops / args.peak_tflops, 4)
        rows.append(row)
        print(json.dumps(row))

    synth1 = Synthesizer(base.replace(batch_size=1), bank, classes)
    synth1.generate(warm)  # warm-up: kernels, allocator
    record("reference loop (1 image per call)", base, reference_loop(loaded, requests, synth1, base), len(requests), 1)
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        spec = base.replace(batch_size=b)
        synth = Synthesizer(spec, bank, classes)
        synth.generate(warm)
        record(f"dsi-bench, batch {b}", spec, ours(synth, requests, spec), len(requests))
    if args.fast_sampler:
        b = max(int(x) for x in args.batch_sizes.split(","))
        spec = PipelineSpec(**{**base.__dict__, "sampler": args.fast_sampler, "steps": None, "batch_size": b})
        synth = Synthesizer(spec, bank, classes)
        synth.generate(warm)
        record(f"dsi-bench, batch {b}, {args.fast_sampler}", spec, ours(synth, requests, spec), len(requests))

    ref = rows[0]["images_per_s"]
    result = {
        "benchmark": "generate",
        "model": args.generator,
        "device": args.device,
        "dtype": str(base.torch_dtype).replace("torch.", ""),
        "gen_size": size,
        "out_size": base.out_size,
        "guidance_scale": base.guidance_scale,
        "unet_gflops_per_sample_forward": round(flops / 1e9, 2),
        "hardware": hardware(args.device),
        "rows": rows,
        "speedup_vs_reference": {r["name"]: round(r["images_per_s"] / ref, 2) for r in rows[1:]},
    }
    write_result(result, args.out, f"generate_{args.device.split(':')[0]}_{Path(args.generator).name}.json")
    return result


if __name__ == "__main__":
    main()
