"""``dsi-bench``: a thin command-line layer over the library.

Each subcommand calls one public function with the same defaults. Bad input prints one
line (``dsi-bench <command>: error: ...``) and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

from . import __version__
from .errors import DsiBenchError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away) and no abbreviations."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _example(text: str) -> str:
    return "example:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


# ---------------------------------------------------------------------- shared options
def _add_sample_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shifts", action="append", help="shift ids or names, comma-separated (e.g. base,in_the_snow)")
    p.add_argument("--shift", action="append",
                   help="one shift name, template or phrase; repeat for several (default: base)")
    p.add_argument("--classes", default="all", help="e.g. 0-9,207 or goldfish (default: all)")
    p.add_argument("--per-class", type=int, default=50, help="images per class (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")



def _add_pipeline_options(p: argparse.ArgumentParser, cache: bool = True) -> None:
    from .pipeline import DEFAULT_MODEL, SAMPLERS

    g = p.add_argument_group("pipeline")
    g.add_argument("--model", default=DEFAULT_MODEL, help="diffusers folder or Hub id (default: %(default)s)")
    g.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    g.add_argument("--tokens", default="imagenet-star", help="token bank, tokens.zip, diffusers file/folder, "
                   "'imagenet-star' (Hub) or 'none' for class names (default: %(default)s)")
    g.add_argument("--sampler", default="euler", choices=list(SAMPLERS), help="sampler preset (default: euler)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the sampler's, 50 for euler)")
    g.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance (default: 7.5)")
    g.add_argument("--gen-size", type=int, default=None, help="generation size in px (default: model native)")
    g.add_argument("--out-size", type=int, default=512, help="output size in px, 0 = keep (default: 512)")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--batch-size", type=int, default=8,
                   help="samples per denoiser call; part of the sampler settings (default: 8)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto (default: cpu)")
    g.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16 (default: auto)")
    g.add_argument("--safety-checker", action="store_true",
                   help="run the model's safety checker (flagged images come out black)")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    if not cache:
        return
    g.add_argument("--cache-dir", default=None, help="sample cache (default: ~/.cache/dsi-bench/samples)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the sample cache")


def _spec_from_args(args):
    from .pipeline import PipelineSpec

    return PipelineSpec(
        model=args.model,
        revision=args.revision,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        gen_size=args.gen_size,
        out_size=args.out_size or None,
        negative_prompt=args.negative_prompt,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        safety_checker=args.safety_checker,
        channels_last=args.channels_last,
        compile=args.compile,
    )


# ---------------------------------------------------------------------- commands
def _cmd_shifts(args) -> int:
    from .shifts import list_shifts

    shifts = list_shifts(args.pattern, group=args.group)
    if args.json:
        print(json.dumps([s.__dict__ for s in shifts], indent=2))
        return 0
    print(f"{'id':20s} {'group':14s} {'source':10s} prompt")
    for s in shifts:
        print(f"{s.id:20s} {s.group:14s} {s.source:10s} {s.template}")
    print(f"\n{len(shifts)} shifts. 'published' prompts are the paper's; 'dsi-bench' ones are ours.")
    print("Any template with <TOKEN> or a new phrase ('under water') is a valid custom shift.")
    return 0


def _cmd_generate(args) -> int:
    from .folders import generate_folder

    summary = generate_folder(
        args.out,
        shifts=_split_shifts(args),
        classes=args.classes,
        per_class=args.per_class,
        seed=args.seed,
        spec=_spec_from_args(args),
        tokens=None if args.tokens.lower() == "none" else args.tokens,
        image_format=args.format,
        quality=args.quality,
        cache_dir=False if args.no_cache else args.cache_dir,
        progress=not args.quiet,
    )
    _print_table(summary)
    return 0


def _print_table(rows: list[dict]) -> None:
    w = max([5] + [len(r["shift"]) for r in rows])
    print(f"{'shift':{w}s} {'images':>7s} {'new':>6s} {'seconds':>8s} {'img/s':>7s}  folder")
    for r in rows:
        rate = f"{r['generated'] / r['seconds']:.2f}" if r["generated"] and r["seconds"] else "-"
        print(f"{r['shift']:{w}s} {r['images']:7d} {r['generated']:6d} {r['seconds']:8.1f} {rate:>7s}  {r['folder']}")


def _cmd_tokens(args) -> int:
    from .tokens import load_tokens

    bank = load_tokens(args.source)
    if args.base_model:
        bank.base_model = args.base_model
    print(bank)
    if args.out:
        print(f"wrote {bank.save(args.out)}")
    if args.diffusers:
        print(f"wrote {len(bank)} diffusers folders under {bank.to_diffusers(args.diffusers)}")
    return 0


def _split_shifts(args) -> list[str]:
    shifts = [s.strip() for text in (args.shifts or []) for s in text.split(",") if s.strip()]
    return shifts + list(args.shift or []) or ["base"]


def _print_manifest_table(summary) -> None:
    rows = summary.rows()
    w = max([5] + [len(r["shift"]) for r in rows])
    print(f"{'shift':{w}s} {'samples':>8s} {'shards':>7s} {'MB':>9s}")
    for r in rows:
        print(f"{r['shift']:{w}s} {r['samples']:8d} {r['shards']:7d} {r['bytes'] / 1e6:9.1f}")


def _report_build(summary, verb: str) -> int:
    rate = summary.samples_built / summary.seconds if summary.seconds and summary.samples_built else 0.0
    print(f"{verb} {summary.shards_built} shards ({summary.samples_built} samples, {rate:.2f}/s), "
          f"{summary.shards_skipped} already done, in {summary.seconds:.1f} s")
    if summary.complete:
        _print_manifest_table(summary)
        print(f"manifest: {summary.out}/manifest.json")
    elif summary.world > 1:
        print(f"rank {summary.rank} of {summary.world} finished its shards; "
              "the last rank to finish writes the manifest")
    else:
        print("the build is incomplete; rerun the same command to finish it")
    return 0


def _cmd_build(args) -> int:
    from .build import build_shards

    summary = build_shards(
        args.out,
        shifts=_split_shifts(args),
        classes=args.classes,
        per_class=args.per_class,
        seed=args.seed,
        samples_per_shard=args.samples_per_shard,
        image_format=args.image_format,
        quality=args.quality,
        spec=_spec_from_args(args),
        tokens=None if args.tokens.lower() == "none" else args.tokens,
        engine=args.engine,
        devices=[d.strip() for d in args.devices.split(",")] if args.devices else None,
        address=args.address,
        gpus_per_task=args.gpus_per_task,
        cpu_threads=args.cpu_threads,
        cache_dir=args.cache_dir,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    return _report_build(summary, "built")


def _cmd_verify(args) -> int:
    from .shards import verify_shards

    report = verify_shards(args.dir, decode=not args.no_decode, shifts=_split_shifts(args) if args.shifts else None,
                           progress=not args.quiet)
    print(report)
    return 0 if report.ok else 1


def _cmd_convert(args) -> int:
    from .release import convert_release

    masks = {"none": None, "release": True}.get((args.masks or "none").lower(), args.masks)
    summary = convert_release(
        args.release,
        args.out,
        shifts=_split_shifts(args) if (args.shifts or args.shift) else None,
        masks=masks,
        classes=args.classes,
        missing=args.missing,
        samples_per_shard=args.samples_per_shard,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    return _report_build(summary, "converted")


def _cmd_eval(args) -> int:
    from .evaluate import evaluate

    synth = {}
    if args.source == "synth":
        from .pipeline import PipelineSpec

        synth = {"pipeline": PipelineSpec(model=args.generator, steps=args.steps, device=args.gen_device or "cpu"),
                 "tokens": None if args.tokens.lower() == "none" else args.tokens, "seed": args.seed}
    results = evaluate(
        args.model,
        shifts=args.shifts,
        source=args.source,
        root=args.root,
        weights=args.weights,
        name=args.name,
        classes=args.classes,
        per_class=args.per_class,
        masks=_masks_arg(args.masks),
        class_map=args.class_map,
        restrict=args.restrict,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        amp=args.amp,
        predictions=args.predictions,
        progress=not args.quiet,
        class_list=_class_list(args.class_list),
        **synth,
    )
    return _report_results(results, args.results)


def _class_list(path):
    if not path:
        return None
    from .classes import ClassList

    return ClassList.from_file(path)


def _masks_arg(text):
    if text is None or text.lower() in ("none", "false", "no"):
        return False
    if text.lower() in ("true", "release", "flags", "yes"):
        return True
    return text


def _report_results(results, path) -> int:
    import os

    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(f"{results['model']['name']} on {results['data']['source']} {results['data']['root'] or ''}")
        print(results.table())
        if path:
            print(f"results: {results.save(path)}")
    return 0


def _cmd_score(args) -> int:
    from .score import score_predictions

    results = score_predictions(
        args.predictions,
        source=args.source,
        root=args.root,
        shifts=args.shifts,
        masks=_masks_arg(args.masks),
        classes=args.classes,
        allow_missing=args.allow_missing,
        name=args.name,
    )
    return _report_results(results, args.results)


def _cmd_leaderboard(args) -> int:
    from .leaderboard import make_leaderboard

    paths = make_leaderboard(args.results_dir, args.out, plots=not args.no_plots)
    print(f"wrote {paths['md']}, {paths['csv']}, {paths['html']}" + (f" and {len(paths['plots'])} plots"
                                                                     if paths["plots"] else ""))
    if paths["groups"] > 1:
        print(f"warning: the results cover {paths['groups']} different data fingerprints; they are listed in "
              "separate tables and not ranked together")
    return 0


def _cmd_learn_tokens(args) -> int:
    from .learn import learn_tokens
    from .pipeline import PipelineSpec

    bank = learn_tokens(
        args.data,
        classes=args.classes,
        spec=PipelineSpec(model=args.model, revision=args.revision, device=args.device, dtype=args.dtype),
        preset=args.preset,
        steps=args.steps,
        lr=args.lr,
        resolution=args.resolution,
        classes_per_batch=args.classes_per_batch,
        seed=args.seed,
        out=args.out,
        max_steps_this_run=args.max_steps,
        progress=not args.quiet,
    )
    done = bank.extra["training"]["steps_done"]
    total = bank.extra["training"]["steps"]
    finished = sum(1 for v in done.values() if v >= total)
    print(f"{bank}: {finished} of {len(done)} classes finished ({total} steps each); wrote {args.out}")
    if finished < len(done):
        print("rerun the same command to continue the unfinished classes")
    return 0


def _cmd_clip_filter(args) -> int:
    from .clip_metric import clip_filter_shards

    out = clip_filter_shards(
        args.dir,
        model=args.clip,
        tokens=None if args.tokens in (None, "none") else args.tokens,
        use_tokens=False if args.class_names else None,
        object_threshold=args.object_threshold,
        shift_margin=args.shift_margin,
        device=args.device,
        batch_size=args.batch_size,
        scores_path=args.scores,
        masks_path=args.masks,
        progress=not args.quiet,
    )
    print(f"scored with {out['text']}; kept per shift:")
    for shift, (kept, n) in out["kept"].items():
        print(f"  {shift:24s} {kept:7d} of {n:7d}")
    print(f"scores: {out['scores']}\nmasks:  {out['masks']} (use with --masks / masks=)")
    return 0


def _cmd_publish(args) -> int:
    from .hub import publish

    result = publish(args.dir, args.repo, fmt=args.format, private=args.private, dry_run=args.dry_run,
                     force=args.force, endpoint=args.endpoint, license_id=args.license, progress=not args.quiet)
    counts = ", ".join(f"{s} {n}" for s, n in result["shifts"].items())
    if result["uploaded"]:
        print(f"published {result['url']} ({result['format']}; {counts})")
    else:
        print(f"dry run: wrote what would be uploaded to {result['out']} ({result['format']}; {counts}); "
              "nothing was uploaded")
    return 0


def _cmd_demo(args) -> int:
    from .folders import run_demo, run_demo_eval, run_demo_shards

    _print_table(run_demo(args.out, progress=not args.quiet))
    summary, report = run_demo_shards(args.out, progress=not args.quiet)
    print(f"\nThe same samples as WebDataset shards ({summary.out}):")
    _print_manifest_table(summary)
    print(report)
    results, board = run_demo_eval(args.out, progress=not args.quiet)
    print(f"\nThe harness on those shards, {results['model']['name']} (a random 1000-way CNN, so about 0%):")
    print(results.table())
    print(f"leaderboard of 3 tiny models: {board['md']} (and .csv, .html, {len(board['plots'])} plots)")
    print("\nThese images come from a tiny pipeline with RANDOM weights (no model can be downloaded here):")
    print("they exercise every code path, not the method. Use --model/--tokens with real ones for real images.")
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dsi-bench",
        description="Dataset interfaces: labelled test sets under controlled distribution shifts.",
        formatter_class=_formatter,
        epilog=_example("""
            dsi-bench shifts
            dsi-bench generate --model ./sd2 --tokens tokens.zip --shift "in the rain" --classes 0-9 --out out/
        """),
    )
    parser.add_argument("--version", action="version", version=f"dsi-bench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("shifts", help="list the shift catalog", formatter_class=_formatter,
                       epilog=_example("dsi-bench shifts 'in_the_*'\ndsi-bench shifts --group style --json"))
    p.add_argument("pattern", nargs="?", default="*", help="glob on shift ids (default: all)")
    p.add_argument("--group", default=None, help="only this group (weather, style, ...)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_shifts)

    p = sub.add_parser(
        "generate",
        help="generate a shifted image folder",
        formatter_class=_formatter,
        description="Writes OUT/{shift_id}/{class:04d}/{index:02d}.{png|jpg} and OUT/{shift_id}/metadata.jsonl. "
        "Reruns skip images already written.",
        epilog=_example("""
            dsi-bench generate --model ./sd2 --tokens tokens.zip --shift "in the rain" \\
                --classes 0-9,207 --per-class 4 --seed 0 --batch-size 8 --steps 20 --format png \\
                --out shifted/ --device cuda
        """),
    )
    _add_sample_options(p)
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="image format (default: png)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default: 95)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_pipeline_options(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser(
        "build",
        help="generate shifted test sets as WebDataset shards (resumable, distributed)",
        formatter_class=_formatter,
        description="Writes OUT/{shift}/{shift}-{k:06d}.tar and OUT/manifest.json. Reruns skip finished shards and "
        "rebuild damaged ones; the bytes are the same however the build was split or interrupted.",
        epilog=_example("""
            dsi-bench build --model ./sd2 --tokens tokens.zip --shifts base,in_the_snow --classes 0-9 \\
                --per-class 4 --samples-per-shard 8 --format jpg --out shards/ --device cuda
            torchrun --nproc-per-node 8 -m dsi_bench.cli build --engine torchrun --device cuda ... --out shards/
            dsi-bench build --engine ray --address auto --device cuda ... --out /shared/shards/
        """),
    )
    _add_sample_options(p)
    p.add_argument("--out", required=True, help="output shard folder")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar (default: 1000)")
    p.add_argument("--image-format", "--format", dest="image_format", choices=("jpg", "png"), default="jpg",
                   help="jpg (quality recorded) or png (lossless) (default: jpg)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default: 95)")
    p.add_argument("--engine", choices=("local", "torchrun", "ray"), default="local",
                   help="local (this process, or one per --devices entry), torchrun/SLURM ranks, or Ray tasks")
    p.add_argument("--devices", default=None, help="comma-separated devices: local = one worker each "
                   "(cuda:0,cuda:1); torchrun = indexed by LOCAL_RANK")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local cluster)")
    p.add_argument("--gpus-per-task", type=float, default=None, help="Ray num_gpus per shard (default: 1 on cuda)")
    p.add_argument("--cpu-threads", type=int, default=None,
                   help="torch threads on CPU, part of the plan (default: as recorded, else this process's)")
    p.add_argument("--overwrite", action="store_true", help="rebuild a folder that holds another plan")
    p.add_argument("--cache-dir", default=None,
                   help="serve samples already in this sample cache, e.g. from generate (default: off)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_pipeline_options(p, cache=False)
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser(
        "verify",
        help="check shards against their manifest (exit 1 if anything is wrong)",
        formatter_class=_formatter,
        epilog=_example("dsi-bench verify shards/"),
    )
    p.add_argument("dir", help="shard folder (or fsspec URL) with manifest.json")
    p.add_argument("--shifts", action="append", help="only these shifts (comma-separated)")
    p.add_argument("--no-decode", action="store_true", help="skip decoding every image (hashes and counts only)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify, shift=None)

    p = sub.add_parser(
        "convert",
        help="turn the ImageNet* release into dsi-bench shards",
        formatter_class=_formatter,
        description="Reads RELEASE (a folder of {shift}.zip or shift folders, or one zip) and writes shards whose "
        "samples keep the original JPEG bytes; with --masks, each sample's .json records keep: true/false.",
        epilog=_example("dsi-bench convert imagenet-star/ --out star-shards/ --masks masks.npy"),
    )
    p.add_argument("release", help="release folder or shift zip")
    p.add_argument("--out", required=True, help="output shard folder")
    p.add_argument("--shifts", action="append", help="shift ids, comma-separated (default: every shift found)")
    p.add_argument("--classes", default=None, help="only these classes (default: all 1000)")
    p.add_argument("--masks", default=None,
                   help="masks.npy / .npz path, 'release' to fetch the code release's, or none (default)")
    p.add_argument("--missing", choices=("error", "skip"), default="error",
                   help="files missing from the release: stop (default) or convert the rest")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar (default: 1000)")
    p.add_argument("--overwrite", action="store_true", help="rebuild a folder that holds another conversion")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_convert, shift=None)

    p = sub.add_parser(
        "eval",
        help="evaluate a classifier on every shift of a source",
        formatter_class=_formatter,
        description="Per shift: n, top-1 with a 95%% Wilson interval, top-5, drop vs base, paired flips vs base "
        "and McNemar's test, per-class accuracy and the worst classes.",
        epilog=_example("""
            dsi-bench eval --model torchvision:resnet50 --weights IMAGENET1K_V1 --source shards --root shards/ \\
                --shifts all --results resnet50.json --device cuda --amp
            dsi-bench eval --model timm:convnext_tiny --source imagenet-star --root star/ --masks masks.npy
            dsi-bench eval --model my_models.py:build --class-map outputs.json --source shards --root shards/
            torchrun --nproc-per-node 4 -m dsi_bench.cli eval --model torchvision:resnet50 --root shards/ ...
        """),
    )
    p.add_argument("--model", required=True,
                   help="torchvision:NAME, timm:NAME, hf:ORG/NAME, file.py:function, package.module:function, "
                        "or a TorchScript .pt")
    p.add_argument("--weights", default=None, help="DEFAULT, an enum/tag name, none, or a checkpoint path")
    p.add_argument("--name", default=None, help="display name (default: spec and weights)")
    p.add_argument("--source", choices=("shards", "imagenet-star", "hub", "synth"), default="shards")
    p.add_argument("--root", default=None, help="shard folder/URL or release folder")
    p.add_argument("--shifts", default="all", help="all (default) or a comma list, e.g. base,in_the_snow")
    p.add_argument("--classes", default=None, help="evaluate only these classes (e.g. 0-99)")
    p.add_argument("--per-class", type=int, default=None, help="at most this many samples per class")
    p.add_argument("--masks", default=None, help="masks.npy/.npz path, or 'release' (fetch; shards: recorded flags)")
    p.add_argument("--class-map", default=None, help="JSON list: the label index, WordNet id or name of each output")
    p.add_argument("--restrict", action="store_true", help="predict only among the evaluated classes")
    p.add_argument("--class-list", default=None,
                   help="label space other than ImageNet-1k: .txt (one name per line) or .json class list")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: up to 4)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto (default: cpu)")
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--results", default=None, help="write the results JSON here")
    p.add_argument("--predictions", default=None, help="also write per-sample predictions (CSV) for `score`")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("generation (--source synth)")
    from .pipeline import DEFAULT_MODEL

    g.add_argument("--generator", default=DEFAULT_MODEL, help="diffusers folder or Hub id (default: %(default)s)")
    g.add_argument("--tokens", default="imagenet-star", help="class tokens (default: %(default)s)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the sampler's)")
    g.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    g.add_argument("--gen-device", default=None, help="device for generation (default: cpu)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "score",
        help="score a predictions CSV (key,prediction[,label][,top5]) against a source",
        formatter_class=_formatter,
        epilog=_example("""
            dsi-bench score submission.csv --source imagenet-star --root star/ --masks masks.npy --results sub.json
        """),
    )
    p.add_argument("predictions", help="CSV with columns key,prediction (optionally label, top5)")
    p.add_argument("--source", choices=("shards", "imagenet-star"), default=None,
                   help="the data the predictions are for (checks unknown/missing keys; labels from the source)")
    p.add_argument("--root", default=None)
    p.add_argument("--shifts", default=None, help="only these shifts (default: every shift in the file)")
    p.add_argument("--classes", default=None)
    p.add_argument("--masks", default=None, help="masks.npy/.npz path, or 'release'")
    p.add_argument("--allow-missing", action="store_true", help="count samples without a prediction as wrong")
    p.add_argument("--name", default=None, help="display name (default: the file name)")
    p.add_argument("--results", default=None, help="write the results JSON here")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "leaderboard",
        help="tables (md, csv, sortable html) and plots from a folder of results files",
        formatter_class=_formatter,
        epilog=_example("dsi-bench leaderboard results/ --out board/"),
    )
    p.add_argument("results_dir", help="folder of results JSON files (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=_cmd_leaderboard)

    p = sub.add_parser(
        "learn-tokens",
        help="learn one token per class of an image dataset (textual inversion)",
        formatter_class=_formatter,
        description="DATA is an ImageFolder-style folder (one folder per class) or a dataset saved with "
        "datasets.save_to_disk (image and label columns). Reruns continue unfinished classes.",
        epilog=_example("""
            dsi-bench learn-tokens --data my_dataset/ --model ./sd2 --out my_tokens.safetensors --device cuda
            dsi-bench learn-tokens --data my_dataset/ --model ./sd2 --out t.safetensors --preset reference
        """),
    )
    from .pipeline import DEFAULT_MODEL

    p.add_argument("--data", required=True, help="ImageFolder-style folder or a saved Hugging Face dataset")
    p.add_argument("--model", default=DEFAULT_MODEL, help="diffusers folder or Hub id (default: %(default)s)")
    p.add_argument("--revision", default=None)
    p.add_argument("--out", required=True, help="token bank to write (.safetensors); resumes if it exists")
    p.add_argument("--classes", default=None, help="only these classes (default: all)")
    p.add_argument("--preset", choices=("fast", "reference"), default="fast",
                   help="fast: 1000 steps, lr 2e-3, 512 px (default); reference: 3000 steps, lr 5e-4, 768 px")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--classes-per-batch", type=int, default=8, help="classes trained together (default: 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (rerun to continue)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto (default: cpu)")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA), float32, float16, bfloat16")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_learn_tokens)

    p = sub.add_parser(
        "clip-filter",
        help="score shards with CLIP (object present? shift present?) and write keep/drop masks",
        formatter_class=_formatter,
        epilog=_example("""
            dsi-bench clip-filter shards/ --tokens tokens.zip --device cuda
            dsi-bench eval --model torchvision:resnet50 --root shards/ --masks shards/clip_masks.npz
        """),
    )
    from .clip_metric import DEFAULT_CLIP, OBJECT_THRESHOLD, SHIFT_MARGIN

    p.add_argument("dir", help="shard folder")
    p.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model folder or Hub id (default: %(default)s)")
    p.add_argument("--tokens", default=None, help="the bank the shards were generated with (default: class names)")
    p.add_argument("--class-names", action="store_true", help="score with class names even if tokens fit")
    p.add_argument("--object-threshold", type=float, default=OBJECT_THRESHOLD, help="default: %(default)s")
    p.add_argument("--shift-margin", type=float, default=SHIFT_MARGIN, help="default: %(default)s")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--scores", default=None, help="scores sidecar (default: DIR/clip_scores.npz)")
    p.add_argument("--masks", default=None, help="masks file (default: DIR/clip_masks.npz)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_clip_filter)

    p = sub.add_parser(
        "publish",
        help="publish a shard folder as a Hugging Face dataset (one config per shift)",
        formatter_class=_formatter,
        description="Writes data/{shift}/..., README.md (dataset card with configs, features and the generation "
        "settings) and manifest.json, then uploads them. The token comes from HF_TOKEN or `hf auth login`.",
        epilog=_example("""
            dsi-bench publish shards/ --repo my-lab/imagenet-star-snow --dry-run staged/
            dsi-bench publish shards/ --repo my-lab/imagenet-star-snow --format parquet --private
        """),
    )
    p.add_argument("dir", help="shard folder with manifest.json")
    p.add_argument("--repo", required=True, help="USER/NAME of the dataset repository")
    p.add_argument("--format", choices=("webdataset", "parquet"), default="webdataset")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", metavar="OUT_DIR", default=None, help="write what would be uploaded; upload nothing")
    p.add_argument("--force", action="store_true", help="replace a repository that holds another plan")
    p.add_argument("--license", default=None, help="card license (default: mit for ImageNet*, openrail++ for SD2)")
    p.add_argument("--endpoint", default=None, help="another Hub endpoint (default: huggingface.co)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser(
        "tokens",
        help="inspect or convert a class-token bank",
        formatter_class=_formatter,
        epilog=_example("""
            dsi-bench tokens tokens.zip --out imagenet_star.safetensors
            dsi-bench tokens imagenet_star.safetensors --diffusers ti_folders/
        """),
    )
    p.add_argument("source", help="bank .safetensors, tokens.zip/folder, diffusers file/folder, or 'imagenet-star'")
    p.add_argument("--out", help="write a dsi-bench bank (.safetensors)")
    p.add_argument("--diffusers", metavar="DIR", help="export one diffusers textual-inversion folder per class")
    p.add_argument("--base-model", help="record the base model id in the bank")
    p.set_defaults(func=_cmd_tokens)

    p = sub.add_parser(
        "demo",
        help="offline end-to-end run on a tiny random pipeline",
        formatter_class=_formatter,
        epilog=_example("dsi-bench demo --out demo_out/"),
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose and args.command != "shifts":
        _quiet_libraries()
    try:
        return args.func(args)
    except DsiBenchError as e:
        print(f"dsi-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dsi-bench {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, resize notices) out of the CLI's output."""
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
