"""``dsi-bench publish``: Hugging Face datasets (the CLIP commands are in :mod:`.clip`)."""

from __future__ import annotations

from .common import Command, deprecated_flag


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
        p.add_argument("--private", action="store_true", help="create the repository as private (default: public)")
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


COMMANDS = [Publish()]
