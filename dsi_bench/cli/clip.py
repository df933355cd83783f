"""``dsi-bench clip-filter`` and ``clip-calibrate``: the CLIP metric's masks, and thresholds fitted to the release."""

from __future__ import annotations

from .common import Command, add_device, add_quiet, deprecated_flag, finite_float


def _add_clip(p, *, tokens_help: str) -> None:
    from ..clip_metric import CLIP_RULES, DEFAULT_CLIP, DEFAULT_RULE

    p.add_argument("--clip", default=DEFAULT_CLIP,
                   help="CLIP model folder or Hub id, or 'world' (the embedded world's) (default: %(default)s)")
    p.add_argument("--rule", choices=list(CLIP_RULES), default=DEFAULT_RULE,
                   help="reference: class-name caption + object-free shift caption (the original's); token-gain: "
                        "learned token + gain of the shifted prompt over the base prompt (default: %(default)s)")
    p.add_argument("--tokens", default=None, help=tokens_help)
    add_device(p, "CLIP")
    p.add_argument("--dtype", default="auto",
                   help="auto (float16 on CUDA, as the original; else float32), float32, float16, bfloat16 "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="images per CLIP forward pass (default: %(default)s)")


class ClipFilter(Command):
    name = "clip-filter"
    help = "score shards with CLIP (object present? shift present?) and write keep/drop masks"
    description = ("The reference rule (default) keeps a sample when cos(image, 'a photo of a {class name}') >= "
                   "the object threshold and, for shifts, cos(image, the shift's object-free caption, e.g. 'a photo "
                   "in the snow') >= the shift threshold. The default thresholds are placeholders until calibrated "
                   "(dsi-bench clip-calibrate); pass a calibration with --thresholds.")
    examples = """
        dsi-bench clip-filter shards/ --thresholds clip_calibration.json
        dsi-bench clip-filter world_shards/ --clip world
        dsi-bench clip-filter shards/ --rule token-gain --tokens tokens.zip
        dsi-bench eval --classifier torchvision:resnet50 --root shards/ --masks shards/clip_masks.npz
    """

    def add_arguments(self, p):
        p.add_argument("dir", help="shard folder")
        _add_clip(p, tokens_help="token-gain rule: the bank the shards were generated with (default: class names)")
        p.add_argument("--class-names", action="store_true", help="token-gain rule: score with class names even "
                       "if tokens fit")
        p.add_argument("--thresholds", default=None, metavar="JSON",
                       help="thresholds fitted by clip-calibrate (default: the rule's placeholder thresholds; "
                            "with --clip world, the world CLIP's calibrated ones)")
        p.add_argument("--object-threshold", type=finite_float("--object-threshold"), default=None,
                       help="override the object threshold (default: 0.2, or the --thresholds file's)")
        p.add_argument("--shift-threshold", type=finite_float("--shift-threshold"), default=None,
                       help="override the shift threshold (default: reference 0.2, token-gain 0.0, or the "
                            "--thresholds file's)")
        deprecated_flag(p, "--shift-margin", "--shift-threshold", "shift_threshold",
                        type=finite_float("--shift-margin"))
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
            rule=args.rule,
            tokens=None if args.tokens in (None, "none") else args.tokens,
            use_tokens=False if args.class_names else None,
            thresholds=args.thresholds,
            object_threshold=args.object_threshold,
            shift_threshold=args.shift_threshold,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            scores_out=args.scores_out,
            masks_out=args.masks_out,
            progress=not args.quiet,
        )
        t = out["thresholds"]
        note = "" if t["calibrated"] else " (placeholders, not calibrated)"
        print(f"rule {out['rule']}, scored with {out['text']}; object >= {t['object_threshold']:.4f}, "
              f"shift >= {t['shift_threshold']:.4f}{' (per shift)' if t['per_shift'] else ''}{note}; kept per shift:")
        for shift, (kept, n) in out["kept"].items():
            print(f"  {shift:24s} {kept:7d} of {n:7d}")
        print(f"scores: {out['scores']}\nmasks:  {out['masks']} (use with --masks / masks=)")
        return 0


class ClipCalibrate(Command):
    name = "clip-calibrate"
    help = "fit the CLIP keep rule's thresholds that best reproduce the release's masks"
    description = ("Scores the ImageNet* release's images with CLIP and fits the object and shift thresholds that "
                   "best reproduce its masks.npy (whose thresholds are not published), then reports the agreement "
                   "per shift. Run it once with the release and a GPU; pass the JSON to clip-filter --thresholds.")
    examples = """
        dsi-bench clip-calibrate imagenet-star/ --masks masks.npy --out clip_calibration.json
        dsi-bench clip-calibrate imagenet-star/ --masks masks.npy --shifts base,in_the_snow --classes 0-99
    """

    def add_arguments(self, p):
        from ..clip_metric import FIT_MODES

        p.add_argument("release", help="the ImageNet* release: a folder of {shift}.zip or shift folders")
        p.add_argument("--masks", required=True, help="the release's masks.npy (read safely) or .npz")
        p.add_argument("--shifts", default=None, help="comma-separated shift ids (default: all in release and masks)")
        p.add_argument("--classes", default=None, help="only these classes, e.g. 0-99 (default: all 1000)")
        p.add_argument("--missing", choices=["error", "skip"], default="error",
                       help="files missing from the copy: stop, or score the rest (default: %(default)s)")
        p.add_argument("--mode", choices=list(FIT_MODES), default="global",
                       help="one shift threshold for all shifts, or one per shift (default: %(default)s; the other "
                            "is reported for comparison)")
        _add_clip(p, tokens_help="token-gain rule: the release's tokens (tokens.zip or imagenet-star)")
        p.add_argument("--out", default="clip_calibration.json", help="calibration JSON (default: %(default)s)")
        p.add_argument("--scores-out", default=None, help="also write the scores (.npz) here")
        add_quiet(p)

    def run(self, args) -> int:
        from ..clip_metric import calibrate_thresholds

        cal = calibrate_thresholds(
            args.release, args.masks,
            shifts=[s.strip() for s in args.shifts.split(",") if s.strip()] if args.shifts else None,
            classes=args.classes, missing=args.missing, rule=args.rule, mode=args.mode, clip=args.clip,
            tokens=None if args.tokens in (None, "none") else args.tokens, device=args.device, dtype=args.dtype,
            batch_size=args.batch_size, out=args.out, scores_out=args.scores_out, progress=not args.quiet,
        )
        t = cal.thresholds
        print(f"rule {t.rule}, mode {cal.mode}: object >= {t.object:.4f}, shift >= {t.shift:.4f}"
              + (" (median of per-shift)" if t.per_shift else ""))
        print(f"  {'shift':24s} {'n':>7s} {'agree %':>8s} {'kept fit':>9s} {'kept rel':>9s}"
              + (f" {'threshold':>9s}" if t.per_shift else ""))
        for shift, a in cal.agreement.items():
            extra = f" {t.per_shift[shift]:9.4f}" if shift in t.per_shift else ""
            print(f"  {shift:24s} {a['n']:7d} {100 * a['accuracy']:8.2f} {a['kept_fitted']:9d} "
                  f"{a['kept_released']:9d}{extra}")
        for mode, alt in cal.alternatives.items():
            print(f"({mode} fit for comparison: agreement {100 * alt['accuracy']:.2f} %)")
        print(f"calibration: {args.out} (use with clip-filter --thresholds)")
        return 0


COMMANDS = [ClipFilter(), ClipCalibrate()]
