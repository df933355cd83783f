"""``dsi-bench eval``, ``score`` and ``leaderboard``: the benchmark harness."""

from __future__ import annotations

from .common import (
    Command,
    add_device,
    add_quiet,
    add_shifts,
    deprecated_flag,
    masks_value,
    non_negative_int,
    shifts_from,
    tokens_value,
)


def add_data(p, *, sources=None, required_source: bool = True) -> None:
    """The data evaluated: a source and its root, the selection, masks, the label space."""
    from ..sources import list_sources

    g = p.add_argument_group("data")
    choices = sources or list_sources()
    g.add_argument("--source", choices=choices, default="shards" if required_source else None,
                   help="where the samples come from (default: " + ("%(default)s" if required_source else
                        "none: keys and labels from the predictions file") + ")")
    g.add_argument("--root", default=None, help="shard folder/URL, release folder or zip, or Hub dataset id")
    g.add_argument("--classes", default=None, help="only these classes (e.g. 0-99)")
    g.add_argument("--per-class", type=int, default=None, help="at most this many samples per class")
    g.add_argument("--masks", default=None,
                   help="masks.npy/.npz path, or 'release' (imagenet-star: fetch; shards/hub: recorded flags)")
    g.add_argument("--missing", choices=("error", "skip"), default=None,
                   help="imagenet-star: files missing from the release copy: stop (default: error) or evaluate the "
                        "rest (each shift's n and a warning say how many were skipped)")
    g.add_argument("--class-list", default=None,
                   help="label space other than ImageNet-1k: .txt (one name per line) or .json class list")


def data_from(args) -> dict:
    """``data=`` for ``evaluate``/``score_predictions`` from :func:`add_data`'s options."""
    data = {"source": args.source, "root": args.root, "classes": args.classes, "per_class": args.per_class,
            "masks": masks_value(args.masks), "missing": args.missing}
    if args.class_list:
        from ..classes import ClassList

        data["class_list"] = ClassList.from_file(args.class_list)
    return {k: v for k, v in data.items() if v is not None}


def check_outputs(args) -> None:
    """Refuse ``--results``/``--predictions`` paths that cannot be written, before any work."""
    from pathlib import Path

    from ..errors import SpecError
    from ..files import check_writable

    for flag in ("results", "predictions"):
        if getattr(args, flag, None):
            check_writable(getattr(args, flag), f"--{flag}")
    results, predictions = getattr(args, "results", None), getattr(args, "predictions", None)
    if results and predictions and Path(results).expanduser().resolve() == Path(predictions).expanduser().resolve():
        raise SpecError(f"--results and --predictions are the same file ({results!r}); one would overwrite the "
                        "other: give them different paths")


def report_results(results, path, predictions: bool = True) -> int:
    from ..dist import World

    if World.from_env().main:
        print(results.table())  # its header names the model, data, masks and decoding
        if path:
            saved = results.save(path, predictions=predictions)
            print(f"results: {saved}")
            if predictions and results.predictions_file is not None:
                print(f"predictions: {results.predictions_file}  (dsi-bench report {saved} --out DIR shows them)")
    return 0


class Eval(Command):
    name = "eval"
    help = "evaluate a classifier on every shift of a source"
    description = ("Per shift: n, top-1 with a 95% Wilson interval, top-5, drop vs base, paired flips vs base "
                   "and McNemar's test, per-class accuracy and the worst classes.")
    examples = """
        dsi-bench eval --classifier torchvision:resnet50 --weights IMAGENET1K_V1 --source shards --root shards/ \\
            --shifts all --results resnet50.json --amp
        dsi-bench eval --classifier timm:convnext_tiny --source imagenet-star --root star/ --masks masks.npy
        dsi-bench eval --classifier my_models.py:build --class-map outputs.json --source shards --root shards/
        torchrun --nproc-per-node 4 -m dsi_bench.cli eval --classifier torchvision:resnet50 --root shards/ ...
    """

    def add_arguments(self, p):
        from ..models import model_spec_help

        # not required=True in argparse: the deprecated --model may give it
        p.add_argument("--classifier", default=None, help=f"the model under test (required): {model_spec_help()}")
        deprecated_flag(p, "--model", "--classifier", "classifier")
        p.add_argument("--weights", default=None,
                       help="DEFAULT (the library's recommended pretrained weights, downloaded once), an enum/tag "
                       "name, none (random), or a checkpoint path (default: DEFAULT)")
        p.add_argument("--name", default=None, help="display name (default: spec and weights)")
        add_shifts(p, "default: all the source holds")
        add_data(p)
        p.add_argument("--class-map", default=None,
                       help="JSON list: the label index, WordNet id or name of each output")
        p.add_argument("--restrict", action="store_true", help="predict only among the evaluated classes")
        p.add_argument("--batch-size", type=int, default=64, help="classifier batch size (default: 64)")
        p.add_argument("--num-workers", type=non_negative_int, default=None,
                       help="DataLoader workers, 0 = read in the main process (default: up to 4)")
        deprecated_flag(p, "--workers", "--num-workers", "num_workers", type=non_negative_int)
        add_device(p, "the classifier")
        p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU)")
        p.add_argument("--fast-decode", action="store_true",
                       help="decode JPEGs in libjpeg's draft mode (reduced scale) when the classifier's preprocessing "
                            "starts by shrinking: faster, but the inputs and so the accuracy differ from full decoding "
                            "(the default, as published numbers); recorded in the results")
        p.add_argument("--no-verify", action="store_true",
                       help="shards: skip checking each shard's sha256 against the manifest (for data checked already "
                            "with `dsi-bench verify`); recorded in the results")
        p.add_argument("--results", default=None, help="write the results JSON here")
        p.add_argument("--predictions", default=None,
                       help="write the per-sample predictions (CSV, gzip for a .gz name) here (default: beside "
                            "--results, as NAME.predictions.csv.gz, for `report` and `score`)")
        p.add_argument("--no-predictions", action="store_true",
                       help="do not keep the per-sample predictions beside --results")
        add_quiet(p)
        from ..pipeline import DEFAULT_MODEL

        g = p.add_argument_group("generation (--source synth)")
        g.add_argument("--generator", default=DEFAULT_MODEL,
                       help="diffusers folder or Hub id, or 'world' (default: %(default)s)")
        g.add_argument("--tokens", default="imagenet-star", help="class tokens, or 'world' (default: %(default)s)")
        g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the sampler's)")
        g.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
        g.add_argument("--gen-device", default=None, help="device for generation (default: the --device)")
        self.generation_defaults = {"generator": DEFAULT_MODEL, "tokens": "imagenet-star", "steps": None, "seed": 0,
                                    "device": None}

    def check(self, args) -> None:
        super().check(args)
        if args.no_predictions and args.predictions:
            from ..errors import SpecError

            raise SpecError("--predictions and --no-predictions contradict each other: give one")
        check_outputs(args)
        if args.results and not args.predictions and not args.no_predictions:
            from ..files import check_writable
            from ..results import predictions_path

            check_writable(predictions_path(args.results), "the predictions beside --results")

    def run(self, args) -> int:
        from ..errors import SpecError
        from ..evaluate import evaluate
        from ..models import model_spec_help

        if args.classifier is None:
            raise SpecError(f"--classifier is required: the model under test, one of {model_spec_help()}")
        data = data_from(args)
        if args.fast_decode:
            data["fast_decode"] = True
        if args.no_verify:
            data["verify"] = False
        generation = {"generator": args.generator, "tokens": tokens_value(args.tokens), "steps": args.steps,
                      "seed": args.seed, "device": args.gen_device}
        if args.source == "synth":
            data.update({**generation, "device": args.gen_device or args.device})
        else:  # refused, not ignored
            given = [k for k, v in generation.items() if v != self.generation_defaults[k]]
            if given:
                flag = {"device": "gen-device"}.get(given[0], given[0])
                raise SpecError(f"--{flag} applies to --source synth only (this run reads {args.source!r})")
        results = evaluate(
            args.classifier,
            data,
            shifts=shifts_from(args, default="all"),
            weights=args.weights,
            name=args.name,
            class_map=args.class_map,
            restrict=args.restrict,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            amp=args.amp,
            predictions=args.predictions,
            progress=not args.quiet,
        )
        return report_results(results, args.results, predictions=not args.no_predictions)


class Score(Command):
    name = "score"
    help = "score a predictions CSV (key,prediction[,label][,top5]) against a source, or by its keys"
    loads_models = False
    examples = """
        dsi-bench score submission.csv --source imagenet-star --root star/ --masks masks.npy --results sub.json
        dsi-bench score submission.csv --masks masks.npy     # no source: masks and --classes applied by key
    """

    def add_arguments(self, p):
        p.add_argument("predictions", help="CSV with columns key,prediction (optionally label, top5)")
        add_shifts(p, "default: every shift in the file")
        add_data(p, required_source=False)
        p.add_argument("--allow-missing", action="store_true", help="count samples without a prediction as wrong")
        p.add_argument("--name", default=None, help="display name (default: the file name)")
        p.add_argument("--no-verify", action="store_true",
                       help="shards: skip checking each shard's sha256 against the manifest (for data checked already "
                            "with `dsi-bench verify`); recorded in the results")
        p.add_argument("--results", default=None, help="write the results JSON here")

    def check(self, args) -> None:
        super().check(args)
        check_outputs(args)

    def run(self, args) -> int:
        from ..errors import SpecError
        from ..score import score_predictions

        if args.missing and not args.source:  # refused, not ignored
            raise SpecError("--missing applies to the files of --source imagenet-star; pass --source and --root too")
        shifts = shifts_from(args)
        results = score_predictions(
            args.predictions,
            data_from(args),
            shifts=None if shifts == "all" else shifts,
            allow_missing=args.allow_missing,
            name=args.name,
        )
        return report_results(results, args.results)


class Leaderboard(Command):
    name = "leaderboard"
    help = "tables (md, csv, sortable html) and plots from a folder of results files"
    loads_models = False
    examples = """
        dsi-bench leaderboard results/ --out board/
        dsi-bench leaderboard results/ --out board-flips/ --sort flip_rate
    """

    def add_arguments(self, p):
        from ..metrics import rankable_metrics

        p.add_argument("results_dir", help="folder of results JSON files (searched recursively)")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--sort", default="top1", choices=rankable_metrics(),
                       help="rank by this metric's mean over the shifts other than base (default: top1)")
        p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
        p.add_argument("--no-reports", action="store_true",
                       help="skip the visual reports the HTML table links to (reports/)")

    def run(self, args) -> int:
        from ..leaderboard import make_leaderboard

        paths = make_leaderboard(args.results_dir, args.out, plots=not args.no_plots, sort=args.sort,
                                 reports=not args.no_reports)
        print(f"wrote {paths['md']}, {paths['csv']}, {paths['html']}" + (f" and {len(paths['plots'])} plots"
                                                                         if paths["plots"] else ""))
        if paths["reports"]:
            print(f"visual reports: {len(paths['reports'])} models, linked from {paths['html']}")
        if paths["groups"] > 1:
            print(f"warning: the results cover {paths['groups']} different data, masks or decode modes; they are "
                  "listed in separate tables and not ranked together")
        return 0


class ReportCommand(Command):
    name = "report"
    help = "a visual HTML report of results: twin galleries of the flips, intervals, worst classes"
    description = ("Static and offline (open index.html in any browser). Several results on the same data "
                   "also get a comparison: which flips every model shares and which are one model's alone.")
    examples = """
        dsi-bench report resnet50.json --out report/
        dsi-bench report results/*.json --out compare/
        dsi-bench report resnet50.json --out report/ --root /data/moved-shards
    """

    def add_arguments(self, p):
        from ..report import MAX_PAIRS, THUMB_SIZE

        p.add_argument("results", nargs="+", help="results JSON files written by eval (predictions beside them)")
        p.add_argument("--out", required=True, help="output folder (index.html, img/)")
        p.add_argument("--root", default=None, help="where the data is now, if it moved since the evaluation")
        p.add_argument("--max-pairs", type=int, default=MAX_PAIRS,
                       help="pairs shown per gallery, most confident first (default: %(default)s)")
        p.add_argument("--thumb-size", type=int, default=THUMB_SIZE,
                       help="longest side of a thumbnail in px (default: %(default)s)")
        add_quiet(p)

    def run(self, args) -> int:
        from ..report import make_report

        report = make_report(args.results, args.out, root=args.root, max_pairs=args.max_pairs,
                             thumb_size=args.thumb_size, progress=not args.quiet)
        for note in report.notes:
            print(f"note: {note}")
        print(f"report: {report.index}  ({report.thumbnails} thumbnails, {report.bytes / 1e6:.1f} MB, "
              f"{report.seconds:.1f} s)")
        return 0


COMMANDS = [Eval(), Score(), Leaderboard(), ReportCommand()]
