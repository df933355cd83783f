"""``dsi-bench build``, ``verify`` and ``convert``: WebDataset shard folders."""

from __future__ import annotations

from .common import (
    Command,
    add_pipeline,
    add_quiet,
    add_samples,
    add_shifts,
    class_list_from,
    deprecated_flag,
    finite_float,
    masks_value,
    pipeline_from,
    resolve_devices,
    shifts_from,
    tokens_value,
)


def check_out_folder(args) -> None:
    """Refuse an ``--out`` folder that cannot be written before any model loads."""
    from ..files import check_writable

    check_writable(args.out, "output folder", folder=True)


def print_manifest_table(summary) -> None:
    rows = summary.rows()
    w = max([5] + [len(r["shift"]) for r in rows])
    print(f"{'shift':{w}s} {'samples':>8s} {'shards':>7s} {'MB':>9s}")
    for r in rows:
        print(f"{r['shift']:{w}s} {r['samples']:8d} {r['shards']:7d} {r['bytes'] / 1e6:9.1f}")


def report_build(summary, verb: str) -> int:
    rate = summary.samples_built / summary.seconds if summary.seconds and summary.samples_built else 0.0
    print(f"{verb} {summary.shards_built} shards ({summary.samples_built} samples, {rate:.2f}/s), "
          f"{summary.shards_skipped} already done, in {summary.seconds:.1f} s")
    if summary.complete:
        print_manifest_table(summary)
        print(f"manifest: {summary.out}/manifest.json")
    elif summary.world > 1:
        print(f"rank {summary.rank} of {summary.world} finished its shards; "
              "the last rank to finish writes the manifest")
    else:
        print("the build is incomplete; rerun the same command to finish it")
    return 0


def add_shard_layout(p) -> None:
    p.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar (default: 1000)")
    p.add_argument("--overwrite", action="store_true", help="rebuild a folder that holds another plan")


class Build(Command):
    name = "build"
    help = "generate shifted test sets as WebDataset shards (resumable, distributed)"
    description = ("Writes OUT/{shift}/{shift}-{k:06d}.tar and OUT/manifest.json. Reruns skip finished shards and "
                   "rebuild damaged ones; the bytes are the same however the build was split or interrupted.")
    examples = """
        dsi-bench build --generator ./sd2 --tokens tokens.zip --shifts base,in_the_snow --classes 0-9 \\
            --per-class 4 --samples-per-shard 8 --image-format jpg --out shards/
        torchrun --nproc-per-node 8 -m dsi_bench.cli build --engine torchrun --device cuda ... --out shards/
        dsi-bench build --engine ray --address auto --device cuda ... --out /shared/shards/
    """

    def add_arguments(self, p):
        from ..build import ENGINES
        from ..images import IMAGE_FORMATS

        add_samples(p)
        p.add_argument("--out", required=True, help="output shard folder")
        add_shard_layout(p)
        p.add_argument("--image-format", choices=IMAGE_FORMATS, default="jpg",
                       help="jpg (quality recorded) or png (lossless) (default: jpg)")
        deprecated_flag(p, "--format", "--image-format", "image_format")
        p.add_argument("--quality", type=int, default=95, help="JPEG quality (default: 95)")
        p.add_argument("--engine", choices=ENGINES, default="local",
                       help="local (this process, or one per --devices entry), torchrun/SLURM ranks, or Ray tasks "
                            "(default: %(default)s)")
        p.add_argument("--devices", default=None, help="comma-separated devices: local = one worker each "
                       "(cuda:0,cuda:1); torchrun = indexed by LOCAL_RANK")
        p.add_argument("--address", default=None, help="Ray cluster address (default: a local cluster)")
        p.add_argument("--gpus-per-task", type=finite_float("--gpus-per-task", low=0, example=1), default=None,
                       help="Ray num_gpus per shard (default: 1 on cuda)")
        p.add_argument("--cpu-threads", type=int, default=None,
                       help="torch threads on CPU, part of the plan (default: as recorded, else this process's)")
        p.add_argument("--cache-dir", default=None,
                       help="serve samples already in this sample cache, e.g. from generate (default: off)")
        add_quiet(p)
        add_pipeline(p, cache=False)

    def check(self, args) -> None:
        # Ray tasks run on the cluster's machines: their devices are not this one's to check
        resolve_devices(args, check=args.engine != "ray")
        check_out_folder(args)

    def run(self, args) -> int:
        from ..build import build_shards

        summary = build_shards(
            args.out,
            shifts=shifts_from(args, default=["base"]),
            classes=args.classes,
            per_class=args.per_class,
            seed=args.seed,
            samples_per_shard=args.samples_per_shard,
            image_format=args.image_format,
            quality=args.quality,
            pipeline=pipeline_from(args),
            tokens=tokens_value(args.tokens),
            class_list=class_list_from(args),
            engine=args.engine,
            devices=[d.strip() for d in args.devices.split(",")] if args.devices else None,
            address=args.address,
            gpus_per_task=args.gpus_per_task,
            cpu_threads=args.cpu_threads,
            cache_dir=args.cache_dir,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
        return report_build(summary, "built")


class Verify(Command):
    name = "verify"
    help = "check shards against their manifest: sha256, sample names and labels, images (exit 1 if any is bad)"
    loads_models = False
    examples = "dsi-bench verify shards/"

    def add_arguments(self, p):
        p.add_argument("dir", help="shard folder (or fsspec URL) with manifest.json")
        add_shifts(p, "default: all")
        p.add_argument("--no-decode", action="store_true", help="skip decoding every image (hashes and counts only)")
        add_quiet(p)

    def run(self, args) -> int:
        from ..shards import verify_shards

        shifts = shifts_from(args)
        report = verify_shards(args.dir, decode=not args.no_decode, shifts=None if shifts in (None, "all") else shifts,
                               progress=not args.quiet)
        print(report)
        return 0 if report.ok else 1


class Convert(Command):
    name = "convert"
    help = "turn the ImageNet* release into dsi-bench shards"
    loads_models = False
    description = ("Reads RELEASE (a folder of {shift}.zip or shift folders, or one zip) and writes shards whose "
                   "samples keep the original JPEG bytes; with --masks, each sample's .json records keep: true/false.")
    examples = "dsi-bench convert imagenet-star/ --out star-shards/ --masks masks.npy"

    def add_arguments(self, p):
        p.add_argument("release", help="release folder or shift zip")
        p.add_argument("--out", required=True, help="output shard folder")
        add_shifts(p, "default: every shift found")
        p.add_argument("--classes", default=None, help="only these classes (default: all 1000)")
        p.add_argument("--masks", default=None,
                       help="masks.npy / .npz path, 'release' to fetch the code release's, or none (default)")
        p.add_argument("--missing", choices=("error", "skip"), default="error",
                       help="files missing from the release: stop (default) or convert the rest")
        add_shard_layout(p)
        add_quiet(p)

    def check(self, args) -> None:
        super().check(args)
        check_out_folder(args)

    def run(self, args) -> int:
        from ..convert import convert_release

        shifts = shifts_from(args)
        summary = convert_release(
            args.release,
            args.out,
            shifts=None if shifts in (None, "all") else shifts,
            masks=masks_value(args.masks) or None,
            classes=args.classes,
            missing=args.missing,
            samples_per_shard=args.samples_per_shard,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
        return report_build(summary, "converted")


COMMANDS = [Build(), Verify(), Convert()]
