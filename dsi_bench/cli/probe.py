"""``dsi-bench probe`` and ``phrases``: adaptive search for the shifts that break a classifier."""

from __future__ import annotations

import json

from .common import Command, add_device, add_quiet, finite_float, non_negative_int, tokens_value


class Phrases(Command):
    name = "phrases"
    help = "list the probe's built-in phrase vocabulary"
    loads_models = False
    examples = "dsi-bench phrases --group material\ndsi-bench phrases '*night*' --json"

    def add_arguments(self, p):
        from ..phrases import PHRASE_GROUPS

        p.add_argument("pattern", nargs="?", default="*", help="glob on the phrase text (default: all)")
        p.add_argument("--group", default=None, choices=PHRASE_GROUPS[:-1], help="only this group")
        p.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args) -> int:
        from ..phrases import list_phrases

        phrases = list_phrases(args.pattern, group=args.group)
        if args.json:
            print(json.dumps([{"text": p.text, "group": p.group, "shift": p.id, "template": p.shift.template}
                              for p in phrases], indent=2))
            return 0
        w = max([8] + [len(p.id) for p in phrases])
        print(f"{'group':14s} {'shift id':{w}s} prompt")
        for p in phrases:
            print(f"{p.group:14s} {p.id:{w}s} {p.shift.template}")
        only = f" --groups {args.group}" if args.group else ""
        print(f"\n{len(phrases)} phrases. Probe them: dsi-bench probe --classifier SPEC{only} --budget N --out DIR"
              + ("" if args.pattern == "*" else " (to probe only these, list them in a --phrases file)"))
        return 0


class Probe(Command):
    name = "probe"
    help = "find the shifts that break a classifier: adaptive, paired search with error control"
    description = ("Generates base/shifted twins for many phrases and spends the --budget of images where they "
                   "decide which phrases lower the classifier's accuracy most (racing with anytime-valid "
                   "confidence sequences). Prints the ranked table (paired drop with its interval, flip rate, "
                   "Holm-adjusted p) and writes OUT/probe.json (harness results schema), its predictions, the "
                   "resumable state and OUT/report/ (twin galleries of the worst phrases). Rerun the same "
                   "command to resume.")
    examples = """
        dsi-bench probe --classifier torchvision:resnet50 --generator ./sd2 --tokens tokens.zip --gen-device cuda \\
            --classes 0-99 --budget 20000 --out probe_resnet50/
        dsi-bench probe --classifier world:base --generator world --tokens world --sampler dpm++2m --steps 15 \\
            --guidance-scale 3 --gen-batch-size 25 --phrases builtin --groups weather,lighting --budget 3000 --out p/
        dsi-bench probe --classifier my_models.py:build --phrases my_phrases.txt --budget 5000 --out p/
    """

    def add_arguments(self, p):
        from ..models import model_spec_help
        from ..phrases import PHRASE_GROUPS
        from ..pipeline import DEFAULT_MODEL, SAMPLERS
        from ..probe import CORRECTIONS

        p.add_argument("--classifier", required=True, help=f"the model under test: {model_spec_help()}")
        p.add_argument("--weights", default=None, help="as in eval (default: the library's recommended weights)")
        p.add_argument("--name", default=None, help="display name (default: spec and weights)")
        p.add_argument("--phrases", default="builtin",
                       help="'builtin' (the vocabulary: `dsi-bench phrases`) or a text file, one phrase or template "
                            "with <TOKEN> per line (default: %(default)s)")
        p.add_argument("--groups", default=None,
                       help=f"with builtin: only these groups, comma-separated ({', '.join(PHRASE_GROUPS[:-1])})")
        p.add_argument("--budget", type=int, required=True,
                       help="the most images to use: shifted samples plus their distinct base twins")
        p.add_argument("--top-k", type=int, default=3, help="how many of the worst phrases to find (default: 3)")
        p.add_argument("--alpha", type=finite_float("--alpha", low=0, example=0.05), default=0.05,
                       help="error level of intervals, tests and separation (default: 0.05)")
        p.add_argument("--correction", choices=CORRECTIONS, default="holm",
                       help="multiple-testing correction over the phrases: holm (family-wise, any dependence; "
                            "default), bh (false discovery rate, needs positive dependence), none")
        p.add_argument("--initial", type=int, default=10, help="pairs every phrase starts with (default: 10)")
        p.add_argument("--step", type=int, default=10, help="pairs an undecided phrase gets per round (default: 10)")
        p.add_argument("--tolerance", type=finite_float("--tolerance", low=0, example=0.05), default=0.0,
                       help="drops closer than this count as tied when separating the top k (default: 0)")
        p.add_argument("--max-per-phrase", type=int, default=None,
                       help="the most pairs one phrase may take (default: no limit but the budget)")
        p.add_argument("--order-seed", type=non_negative_int, default=0,
                       help="seed of the order of classes the pairs are drawn from (default: 0)")
        p.add_argument("--batch-size", type=int, default=64, help="classifier batch size (default: 64)")
        add_device(p, "the classifier")
        p.add_argument("--out", required=True, help="output folder (results, predictions, state, report/)")
        p.add_argument("--no-resume", action="store_true", help="refuse an --out that holds an earlier probe")
        p.add_argument("--no-report", action="store_true", help="skip the visual report")
        p.add_argument("--report-top", type=int, default=10,
                       help="phrases in the visual report, worst first (default: 10)")
        add_quiet(p)
        g = p.add_argument_group("generation")
        g.add_argument("--generator", default=DEFAULT_MODEL,
                       help="diffusers folder or Hub id, or 'world' (default: %(default)s)")
        g.add_argument("--tokens", default="imagenet-star",
                       help="class tokens, 'world', or 'none' for class names (default: %(default)s)")
        g.add_argument("--classes", default=None, help="classes to draw pairs from, e.g. 0-99 (default: every class "
                       "the tokens cover)")
        g.add_argument("--sampler", default=None, choices=list(SAMPLERS), help="sampler preset (default: euler)")
        g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the sampler's)")
        g.add_argument("--guidance-scale", type=finite_float("--guidance-scale", low=0, example=7.5), default=None,
                       help="classifier-free guidance (default: 7.5)")
        g.add_argument("--gen-batch-size", type=int, default=None,
                       help="samples per denoiser call, mixing phrases (default: 8)")
        g.add_argument("--seed", type=non_negative_int, default=0, help="base seed of the samples (default: 0)")
        g.add_argument("--gen-device", default=None, help="device for generation (default: the --device)")
        g.add_argument("--cache-dir", default=None, help="sample cache (default: ~/.cache/dsi-bench/samples); "
                       "cached base twins and samples are reused")

    def check(self, args) -> None:
        super().check(args)
        from ..errors import SpecError
        from ..files import check_writable

        for flag in ("budget", "top_k", "initial", "step", "batch_size", "report_top"):
            if getattr(args, flag) < 1:
                raise SpecError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give a positive number")
        if args.alpha >= 1:
            raise SpecError(f"--alpha {args.alpha}: give a level between 0 and 1, e.g. 0.05")
        if args.groups and args.phrases != "builtin":
            raise SpecError("--groups filters the built-in vocabulary; a --phrases file is used as it is")
        check_writable(args.out, "--out", folder=True)

    def run(self, args) -> int:
        from ..probe import probe

        data = {"source": "synth", "generator": args.generator, "tokens": tokens_value(args.tokens),
                "classes": args.classes, "sampler": args.sampler, "steps": args.steps,
                "guidance_scale": args.guidance_scale, "batch_size": args.gen_batch_size, "seed": args.seed,
                "device": args.gen_device or args.device, "cache_dir": args.cache_dir}
        data = {k: v for k, v in data.items() if v is not None or k == "tokens"}
        groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
        result = probe(args.classifier, args.phrases, data, budget=args.budget, top_k=args.top_k, alpha=args.alpha,
                       correction=args.correction, initial=args.initial, step=args.step, tolerance=args.tolerance,
                       max_per_phrase=args.max_per_phrase, groups=groups, order_seed=args.order_seed,
                       weights=args.weights, name=args.name, batch_size=args.batch_size, device=args.device,
                       out=args.out, resume=not args.no_resume, report=not args.no_report,
                       report_top=args.report_top, progress=not args.quiet)
        print(summary_text(result))
        return 0


def summary_text(result, limit: int = 20) -> str:
    """The CLI's account of a probe: what it spent, why it stopped, the ranked table, where the files are."""
    why = {"separated": "the top failures are separated", "budget": "the budget is spent",
           "exhausted": "no undecided phrase can take more pairs"}[result.stopped]
    lines = [f"{len(result.table)} phrases, {result.images} images used ({result.generated} generated now; "
             f"evaluating every phrase on the {result.exhaustive // (len(result.table) + 1)} units reached would use "
             f"{result.exhaustive}), {result.rounds} rounds: stopped because {why}.",
             "Paired drop = top-1 of the base twins minus top-1 under the phrase, in points, with its anytime-valid "
             "95% interval; * = significant after the correction.", "",
             result.format_table(limit)]
    if len(result.table) > limit:
        lines.append(f"... {len(result.table) - limit} more in {result.files.get('results', 'the results')}")
    top = ", ".join(repr(r["phrase"]) for r in result.table[:len(result.top)])
    lines.append(f"\nworst {len(result.top)}: {top}" + ("" if result.separated else
                                                        " (not separated from the next at this budget)"))
    for what in ("results", "predictions", "report"):
        if result.files.get(what):
            lines.append(f"{what}: {result.files[what]}")
    return "\n".join(lines)


COMMANDS = [Probe(), Phrases()]
