"""``dsi-bench demo``: the offline end-to-end run behind ``make demo``."""

from __future__ import annotations

from .common import Command, add_quiet


class Demo(Command):
    name = "demo"
    help = "offline end-to-end run on a tiny random pipeline"
    examples = "dsi-bench demo --out demo_out/"

    def add_arguments(self, p):
        p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
        add_quiet(p)

    def run(self, args) -> int:
        from ..demo import run_demo, run_demo_eval, run_demo_shards
        from .generate import print_generation_table
        from .shards import print_manifest_table

        print_generation_table(run_demo(args.out, progress=not args.quiet))
        summary, report = run_demo_shards(args.out, progress=not args.quiet)
        print(f"\nThe same samples as WebDataset shards ({summary.out}):")
        print_manifest_table(summary)
        print(report)
        results, board = run_demo_eval(args.out, progress=not args.quiet)
        print(f"\nThe harness on those shards, {results['model']['name']} (a random 1000-way CNN, so about 0%):")
        print(results.table())
        plots = f"{len(board['plots'])} plots" if board["plots"] else "no plots: pip install 'dsi-bench[plots]'"
        print(f"leaderboard of 3 tiny models: {board['md']} (and .csv, .html, {plots})")
        print("\nThese images come from a tiny pipeline with RANDOM weights (no model can be downloaded here):")
        print("they exercise every code path, not the method. Use --generator/--tokens with real ones for real "
              "images.")
        return 0


COMMANDS = [Demo()]
