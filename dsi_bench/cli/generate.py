"""``dsi-bench shifts`` and ``dsi-bench generate``: the shift catalog, and shifted image folders."""

from __future__ import annotations

import json

from .common import (
    Command,
    add_pipeline,
    add_quiet,
    add_samples,
    class_list_from,
    deprecated_flag,
    pipeline_from,
    shifts_from,
    tokens_value,
)
from .shards import check_out_folder


class Shifts(Command):
    name = "shifts"
    help = "list the shift catalog"
    loads_models = False
    examples = "dsi-bench shifts 'in_the_*'\ndsi-bench shifts --group style --json"

    def add_arguments(self, p):
        from ..shifts import SHIFT_GROUPS

        p.add_argument("pattern", nargs="?", default="*", help="glob on shift ids (default: all)")
        p.add_argument("--group", default=None, choices=SHIFT_GROUPS, help="only this group")
        p.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args) -> int:
        from ..shifts import list_shifts

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


def print_generation_table(rows: list[dict]) -> None:
    w = max([5] + [len(r["shift"]) for r in rows])
    print(f"{'shift':{w}s} {'images':>7s} {'new':>6s} {'seconds':>8s} {'img/s':>7s}  folder")
    for r in rows:
        rate = f"{r['generated'] / r['seconds']:.2f}" if r["generated"] and r["seconds"] else "-"
        print(f"{r['shift']:{w}s} {r['images']:7d} {r['generated']:6d} {r['seconds']:8.1f} {rate:>7s}  {r['folder']}")


class Generate(Command):
    name = "generate"
    help = "generate a shifted image folder"
    description = ("Writes OUT/{shift_id}/{class:04d}/{index:02d}.{png|jpg} and OUT/{shift_id}/metadata.jsonl. "
                   "Reruns skip images already written.")
    examples = """
        dsi-bench generate --generator ./sd2 --tokens tokens.zip --shift "in the rain" \\
            --classes 0-9,207 --per-class 4 --seed 0 --batch-size 8 --steps 20 --image-format png \\
            --out shifted/
    """

    def add_arguments(self, p):
        from ..images import IMAGE_FORMATS

        add_samples(p)
        p.add_argument("--image-format", choices=IMAGE_FORMATS, default="png", help="image format (default: png)")
        deprecated_flag(p, "--format", "--image-format", "image_format")
        p.add_argument("--quality", type=int, default=95, help="JPEG quality (default: 95)")
        p.add_argument("--out", required=True, help="output folder")
        add_quiet(p)
        add_pipeline(p)

    def check(self, args) -> None:
        super().check(args)
        check_out_folder(args)

    def run(self, args) -> int:
        from ..folders import generate_folder

        summary = generate_folder(
            args.out,
            shifts=shifts_from(args, default=["base"]),
            classes=args.classes,
            per_class=args.per_class,
            seed=args.seed,
            pipeline=pipeline_from(args),
            tokens=tokens_value(args.tokens),
            class_list=class_list_from(args),
            image_format=args.image_format,
            quality=args.quality,
            cache_dir=False if args.no_cache else args.cache_dir,
            progress=not args.quiet,
        )
        print_generation_table(summary)
        return 0


COMMANDS = [Shifts(), Generate()]
