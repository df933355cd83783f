"""``dsi-bench demo``: the offline end-to-end study on the embedded world, behind ``make demo``."""

from __future__ import annotations

from .common import Command, add_quiet, add_shifts, non_negative_int


class Demo(Command):
    name = "demo"
    help = "offline end-to-end study on the embedded trained world (a few minutes on 2 CPU cores)"
    description = ("Generates base and eight shifts of every world class with the world's generator and its "
                   "learned class tokens, writes them as verified shards, CLIP-filters them with the world's "
                   "CLIP, evaluates the world's three classifiers with paired statistics and writes a "
                   "leaderboard, a visual report and a picture of base/shift twins. --plumbing runs the old "
                   "check on a tiny RANDOM pipeline instead.")
    examples = """
        dsi-bench demo --out demo_out/
        dsi-bench demo --out small/ --per-class 4 --shifts base,in_the_snow,at_night
    """

    def add_arguments(self, p):
        p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
        p.add_argument("--per-class", type=non_negative_int, default=10,
                       help="samples per class and shift (default: 10, i.e. 100 base/shift pairs per shift)")
        add_shifts(p, "default: base and eight shifts of every drawable group")
        p.add_argument("--plumbing", action="store_true",
                       help="the tiny random pipeline instead of the world (code paths only, images are noise)")
        add_quiet(p)

    def check(self, args) -> None:
        super().check(args)
        from ..errors import SpecError

        if args.per_class < 1:
            raise SpecError("--per-class 0 makes an empty study; give 1 or more (10 is the default)")

    def run(self, args) -> int:
        if args.plumbing:
            return self.run_plumbing(args)
        from ..demo import WORLD_STUDY_SHIFTS, run_world_study
        from .common import shifts_from

        shifts = shifts_from(args, default=list(WORLD_STUDY_SHIFTS))
        if shifts == "all":
            from ..world import CONTEXTS

            shifts = list(CONTEXTS)
        if "base" not in shifts:
            shifts = ["base", *shifts]
        study = run_world_study(args.out, shifts=shifts, per_class=args.per_class, progress=not args.quiet)
        print(f"{len(shifts) * 10 * args.per_class} samples ({len(shifts)} shifts x 10 world classes x "
              f"{args.per_class}) from the embedded world's generator and its learned class tokens (DPM-Solver++ "
              f"15 steps, guidance 3; {study.build.samples_built} generated now) in {study.out / 'shards'}")
        print(study.verify)
        kept = study.clip["kept"]
        print("CLIP filter (the world's CLIP, calibrated thresholds): kept "
              + ", ".join(f"{s} {k}/{n}" for s, (k, n) in kept.items()))
        first = next(iter(study.results))
        print(f"\nThe harness, {first} (trained on base renders only), on the CLIP-filtered shards:")
        print(study.results[first].table())
        print("\nEvery world classifier: top-1 % (in brackets: the paired drop from base in points, + = worse; "
              "* McNemar p < 0.01)")
        print(comparison_table(study.results))
        board = study.leaderboard
        plots = f"{len(board['plots'])} plots" if board.get("plots") else "no plots: pip install 'dsi-bench[plots]'"
        print(f"leaderboard: {board['md']} (and .csv, .html, {plots})")
        if study.twins:
            print(f"base/shift twins (left: base, right: the same seed under the shift): {study.twins}")
        if study.report:
            print(f"visual report (open in a browser: every flip next to its twin, per model and compared): "
                  f"{study.report.index}")
        return 0

    def run_plumbing(self, args) -> int:
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
        print("\nThese images come from a tiny pipeline with RANDOM weights: they exercise every code path, not the "
              "method. Run `dsi-bench demo` without --plumbing for the study on the trained world.")
        return 0


def comparison_table(results: dict) -> str:
    """One row per shift, one column per classifier: top-1 and the paired drop (``*``: McNemar p < 0.01)."""
    names = list(results)
    shifts = list(next(iter(results.values())).shifts)
    width = max(16, *(len(n) + 2 for n in names))
    lines = ["shift".ljust(16) + "".join(n.rjust(width) for n in names)]
    for shift in shifts:
        cells = []
        for name in names:
            r = results[name].shifts.get(shift, {})
            top1, drop, p = r.get("top1"), r.get("drop_vs_base"), r.get("mcnemar_p")
            cell = "-" if top1 is None else f"{100 * top1:.1f}"
            if drop is not None and shift != "base":
                cell += f" ({100 * drop:+.1f}{'*' if p is not None and p < 0.01 else ' '})"
            elif shift != "base":
                cell += "         "
            cells.append(cell.rjust(width))
        lines.append(shift.ljust(16) + "".join(cells))
    means = [results[n]["summary"]["mean_top1"] for n in names]
    lines.append("mean".ljust(16) + "".join(("-" if m is None else f"{100 * m:.1f}").rjust(width) for m in means))
    return "\n".join(lines)


COMMANDS = [Demo()]
