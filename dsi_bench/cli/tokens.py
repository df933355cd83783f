"""``dsi-bench tokens`` and ``learn-tokens``: class-token banks, imported or learned."""

from __future__ import annotations

from .common import Command, add_device, add_quiet, deprecated_flag, finite_float


class Tokens(Command):
    name = "tokens"
    help = "inspect or convert a class-token bank"
    loads_models = False
    examples = """
        dsi-bench tokens tokens.zip --out imagenet_star.safetensors
        dsi-bench tokens imagenet_star.safetensors --diffusers ti_folders/
    """

    def add_arguments(self, p):
        p.add_argument("source", help="bank .safetensors, tokens.zip/folder, diffusers file/folder, or 'imagenet-star'")
        p.add_argument("--out", help="write a dsi-bench bank (.safetensors)")
        p.add_argument("--diffusers", metavar="DIR", help="export one diffusers textual-inversion folder per class")
        p.add_argument("--generator", help="record the diffusion model the tokens belong to (its Hub id or folder)")
        deprecated_flag(p, "--base-model", "--generator", "generator")

    def run(self, args) -> int:
        from ..tokens import load_tokens

        bank = load_tokens(args.source)
        if args.generator:
            bank = bank.replace(base_model=args.generator)
        print(bank)
        if args.out:
            print(f"wrote {bank.save(args.out)}")
        if args.diffusers:
            print(f"wrote {len(bank)} diffusers folders under {bank.to_diffusers(args.diffusers)}")
        return 0


class LearnTokens(Command):
    name = "learn-tokens"
    help = "learn one token per class of an image dataset (textual inversion)"
    description = ("DATA is an ImageFolder-style folder (one folder per class) or a dataset saved with "
                   "datasets.save_to_disk (image and label columns). Reruns continue unfinished classes.")
    examples = """
        dsi-bench learn-tokens --data my_dataset/ --generator ./sd2 --out my_tokens.safetensors
        dsi-bench learn-tokens --data my_dataset/ --generator ./sd2 --out t.safetensors --preset fast
    """

    def add_arguments(self, p):
        from ..learn import MAX_RESOLUTION_OVER_NATIVE, PRESETS
        from ..pipeline import DEFAULT_MODEL

        p.add_argument("--data", required=True, help="ImageFolder-style folder or a saved Hugging Face dataset")
        p.add_argument("--generator", default=DEFAULT_MODEL,
                       help="the diffusion model: a diffusers folder or Hub id, or 'world' (default: %(default)s)")
        deprecated_flag(p, "--model", "--generator", "generator")
        p.add_argument("--revision", default=None, help="Hub branch, tag or commit of --generator (default: main)")
        p.add_argument("--out", required=True, help="token bank to write (.safetensors); resumes if it exists")
        p.add_argument("--classes", default=None, help="only these classes (default: all)")
        presets = "; ".join(f"{k}: {v['steps']} steps, lr {v['lr']:g}" for k, v in PRESETS.items())
        p.add_argument("--preset", choices=list(PRESETS), default="reference",
                       help=f"{presets}; reference = the ImageNet* settings, fast = ours, not validated on a real "
                            "model (default: %(default)s)")
        p.add_argument("--max-steps", type=int, default=None,
                       help="training steps per class (default: the preset's); before 0.2 this flag was the "
                            "per-run limit, now --max-steps-this-run")
        deprecated_flag(p, "--steps", "--max-steps", "max_steps", type=int)
        p.add_argument("--lr", type=finite_float("--lr", above=0, example=5e-4), default=None,
                       help="learning rate (default: the preset's; reference 5e-4)")
        p.add_argument("--resolution", type=int, default=None,
                       help="training size in px (default: the generator's native size, 768 for SD2; more than "
                            f"{MAX_RESOLUTION_OVER_NATIVE}x native needs --allow-high-resolution)")
        p.add_argument("--allow-high-resolution", action="store_true",
                       help=f"allow --resolution above {MAX_RESOLUTION_OVER_NATIVE}x the native size (slow: cost "
                            "grows with the square of the size)")
        p.add_argument("--init-word", default=None,
                       help="start every token from this word (e.g. object) instead of its class name (the reference)")
        p.add_argument("--template", action="append", dest="templates", metavar="TEMPLATE",
                       help="a prompt to train in, with {} where the token goes; repeatable (default: the "
                            "reference's 27 'a photo of a {}' templates)")
        p.add_argument("--classes-per-batch", type=int, default=8, help="classes trained together (default: 8)")
        p.add_argument("--seed", type=int, default=0, help="seed of each class's draws (default: 0)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace a file at --out that this run cannot continue (default: refuse)")
        p.add_argument("--max-steps-this-run", type=int, default=None,
                       help="stop after this many steps (rerun to continue)")
        add_device(p, "training")
        p.add_argument("--dtype", default="auto",
                       help="auto (fp16 on CUDA), float32, float16, bfloat16 (default: %(default)s)")
        add_quiet(p)

    def run(self, args) -> int:
        from ..learn import learn_tokens
        from ..pipeline import PipelineSpec

        bank = learn_tokens(
            args.data,
            classes=args.classes,
            pipeline=PipelineSpec(model=args.generator, revision=args.revision, device=args.device, dtype=args.dtype),
            preset=args.preset,
            max_steps=args.max_steps,
            lr=args.lr,
            resolution=args.resolution,
            allow_high_resolution=args.allow_high_resolution,
            classes_per_batch=args.classes_per_batch,
            seed=args.seed,
            out=args.out,
            max_steps_this_run=args.max_steps_this_run,
            progress=not args.quiet,
            overwrite=args.overwrite,
            init_word=args.init_word,
            templates=args.templates,
        )
        done = bank.extra["training"]["steps_done"]
        total = bank.extra["training"]["steps"]
        finished = sum(1 for v in done.values() if v >= total)
        px = bank.extra["training"]["resolution"]
        print(f"{bank}: {finished} of {len(done)} classes finished ({total} steps each, {px} px); wrote {args.out}")
        if finished < len(done):
            print("rerun the same command to continue the unfinished classes")
        return 0


COMMANDS = [Tokens(), LearnTokens()]
