"""``dsi-bench clip-filter`` and ``publish``: the CLIP metric's masks, and Hugging Face datasets."""

from __future__ import annotations

from .common import Command, add_device, add_quiet, deprecated_flag


class ClipFilter(Command):
    name = "clip-filter"
    help = "score shards with CLIP (object present? shift present?) and write keep/drop masks"
    examples = """
        dsi-bench clip-filter shards/ --tokens tokens.zip
        dsi-bench eval --classifier torchvision:resnet50 --root shards/ --masks shards/clip_masks.npz
    """

    def add_arguments(self, p):
        from ..clip_metric import DEFAULT_CLIP, OBJECT_THRESHOLD, SHIFT_MARGIN

        p.add_argument("dir", help="shard folder")
        p.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model folder or Hub id (default: %(default)s)")
        p.add_argument("--tokens", default=None, help="the bank the shards were generated with (default: class names)")
        p.add_argument("--class-names", action="store_true", help="score with class names even if tokens fit")
        p.add_argument("--object-threshold", type=float, default=OBJECT_THRESHOLD, help="default: %(default)s")
        p.add_argument("--shift-margin", type=float, default=SHIFT_MARGIN, help="default: %(default)s")
        add_device(p, "CLIP")
        p.add_argument("--batch-size", type=int, default=32, help="images per CLIP call (default: %(default)s)")
        p.add_argument("--scores-out", default=None, help="scores sidecar to write (default: DIR/clip_scores.npz)")
        deprecated_flag(p, "--scores", "--scores-out", "scores_out")
        p.add_argument("--masks-out", default=None, help="masks file to write (default: DIR/clip_masks.npz)")
        deprecated_flag(p, "--masks", "--masks-out", "masks_out")
        add_quiet(p)

    def run(self, args) -> int:
        from ..clip_metric import clip_filter_shards

        out = clip_filter_shards(
            args.dir,
            clip=args.clip,
            tokens=None if args.tokens in (None, "none") else args.tokens,
            use_tokens=False if args.class_names else None,
            object_threshold=args.object_threshold,
            shift_margin=args.shift_margin,
            device=args.device,
            batch_size=args.batch_size,
            scores_out=args.scores_out,
            masks_out=args.masks_out,
            progress=not args.quiet,
        )
        print(f"scored with {out['text']}; kept per shift:")
        for shift, (kept, n) in out["kept"].items():
            print(f"  {shift:24s} {kept:7d} of {n:7d}")
        print(f"scores: {out['scores']}\nmasks:  {out['masks']} (use with --masks / masks=)")
        return 0


class Publish(Command):
    name = "publish"
    loads_models = False
    help = "publish a shard folder as a Hugging Face dataset (one config per shift)"
    description = ("Writes data/{shift}/..., README.md (dataset card with configs, features and the generation "
                   "settings) and manifest.json, then uploads them. The token comes from HF_TOKEN or `hf auth login`.")
    examples = """
        dsi-bench publish shards/ --repo my-lab/imagenet-star-snow --dry-run staged/
        dsi-bench publish shards/ --repo my-lab/imagenet-star-snow --dataset-format parquet --private
    """

    def add_arguments(self, p):
        from ..layout import DATASET_FORMATS

        p.add_argument("dir", help="shard folder with manifest.json")
        p.add_argument("--repo", required=True, help="USER/NAME of the dataset repository")
        p.add_argument("--dataset-format", choices=DATASET_FORMATS, default="webdataset",
                       help="the repository's layout: the tars as built, or Parquet (default: %(default)s)")
        deprecated_flag(p, "--format", "--dataset-format", "dataset_format")
        p.add_argument("--private", action="store_true")
        p.add_argument("--dry-run", metavar="OUT_DIR", default=None,
                       help="write what would be uploaded; upload nothing")
        p.add_argument("--force", action="store_true", help="replace a repository that holds another plan")
        p.add_argument("--license", default=None, help="card license (default: mit for ImageNet*, openrail++ for SD2)")
        p.add_argument("--endpoint", default=None, help="another Hub endpoint (default: huggingface.co)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    def run(self, args) -> int:
        from ..hub import publish

        result = publish(args.dir, args.repo, dataset_format=args.dataset_format, private=args.private,
                         dry_run=args.dry_run, force=args.force, endpoint=args.endpoint, license_id=args.license,
                         progress=not args.quiet)
        counts = ", ".join(f"{s} {n}" for s, n in result["shifts"].items())
        if result["uploaded"]:
            print(f"published {result['url']} ({result['format']}; {counts})")
        else:
            print(f"dry run: wrote what would be uploaded to {result['out']} ({result['format']}; {counts}); "
                  "nothing was uploaded")
        return 0


COMMANDS = [ClipFilter(), Publish()]
