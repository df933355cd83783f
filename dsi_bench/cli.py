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
    """argparse with one-line errors (the usage is one ``--help`` away)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _example(text: str) -> str:
    return "example:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


# ---------------------------------------------------------------------- shared options
def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
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
        shifts=args.shift or ["base"],
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


def _cmd_demo(args) -> int:
    from .folders import run_demo

    _print_table(run_demo(args.out, progress=not args.quiet))
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
    p.add_argument("--shift", action="append",
                   help="shift name, template or phrase; repeat for several (default: base)")
    p.add_argument("--classes", default="all", help="e.g. 0-9,207 or goldfish (default: all)")
    p.add_argument("--per-class", type=int, default=50, help="images per class (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="image format (default: png)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default: 95)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_pipeline_options(p)
    p.set_defaults(func=_cmd_generate)

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
