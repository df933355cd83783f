"""``dsi-bench world``: the embedded world (train it, draw it, describe it)."""

from __future__ import annotations

from .common import Command, Parser, _refuse_empty_values, add_quiet, example


class World(Command):
    name = "world"
    help = "the embedded trained world: train it, draw it, describe it"
    description = ("The world is a miniature ImageNet* shipped inside dsi-bench: a procedural renderer of ten "
                   "ImageNet classes in every catalog context, and a text-to-image pipeline, class tokens, a CLIP "
                   "and three classifiers trained on it. Use it anywhere with --generator world, --tokens world, "
                   "--clip world and --classifier world:base (world:augmented, world:resnet).")
    examples = """
        dsi-bench world info
        dsi-bench world render --out world.png
        dsi-bench world train --out my_world/
    """
    loads_models = False

    def register(self, sub):
        parser = sub.add_parser(self.name, help=self.help, description=self.description,
                                epilog=example(self.examples))
        inner = parser.add_subparsers(dest="world_command", metavar="WORLD_COMMAND", parser_class=Parser)
        inner.required = True
        train = inner.add_parser("train", help="train every component of the world (resumable)",
                                 description="Trains the world's autoencoder, UNet and text encoder, class tokens "
                                             "(with learn-tokens), CLIP and classifiers into --out, then writes "
                                             "its manifest. About an hour on 2 CPU cores; a rerun resumes.")
        train.add_argument("--out", required=True, help="output folder (dsi_bench/world/weights regenerates the "
                                                        "shipped world)")
        train.add_argument("--jobs", type=int, choices=(1, 2), default=2,
                           help="run the two independent chains of stages side by side (default: 2)")
        train.add_argument("--stages", default=None, help="only these stages, comma-separated "
                                                         "(vae,unet,tokens,clip,classifiers; default: all)")
        train.add_argument("--seed", type=int, default=0, help="seed of every stage (default: 0)")
        add_quiet(train)
        render = inner.add_parser("render", help="draw the world: every class in every context, as one PNG")
        render.add_argument("--out", required=True, help="PNG to write")
        render.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")
        render.add_argument("--scale", type=int, default=2, help="pixel zoom (default: 2)")
        inner.add_parser("info", help="the shipped world: classes, sizes, training times and measurements")
        for p in (train, render):
            _refuse_empty_values(p)
        parser.set_defaults(command_object=self)
        return parser

    def run(self, args) -> int:
        return getattr(self, f"run_{args.world_command}")(args)

    def run_train(self, args) -> int:
        from ..errors import SpecError
        from ..world.train import STAGES, WorldConfig, train_world

        stages = None
        if args.stages:
            stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
            unknown = [s for s in stages if s not in STAGES]
            if unknown:
                raise SpecError(f"unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(STAGES)}")
        result = train_world(args.out, WorldConfig(seed=args.seed), jobs=args.jobs, stages=stages,
                             progress=not args.quiet)
        if "files" in result:
            print(f"wrote the world to {args.out} ({result['total_bytes'] / 1e6:.1f} MB, "
                  f"{result['total_seconds'] / 60:.1f} CPU-stage minutes); manifest: {args.out}/manifest.json")
        else:
            print(f"trained {', '.join(result)} in {args.out}; rerun without --stages to finish the world")
        return 0

    def run_render(self, args) -> int:
        from ..files import check_writable
        from ..world.scene import contact_sheet

        path = check_writable(args.out, "picture")
        contact_sheet(seed=args.seed, scale=args.scale).save(path)
        print(f"wrote {path}")
        return 0

    def run_info(self, args) -> int:
        from ..world import manifest

        m = manifest()
        classes = ", ".join(f"{c['name']} ({c['index']})" for c in m["classes"])
        print(f"the embedded world ({m['format']}, {m['image_size']} px): {classes}")
        print(f"files: {m['total_bytes'] / 1e6:.1f} MB; trained with dsi-bench {m['versions']['dsi_bench']}, "
              f"torch {m['versions']['torch']}, diffusers {m['versions']['diffusers']}")
        for stage, record in m["stages"].items():
            facts = {k: v for k, v in record.items() if k not in ("seconds", "tokens") and not isinstance(v, dict)}
            facts.update({k: f"held-out base top-1 {v['held_out_base_top1']:.3f}" for k, v in record.items()
                          if isinstance(v, dict) and "held_out_base_top1" in v})
            print(f"  {stage}: {record['seconds'] / 60:.1f} min; " + ", ".join(f"{k} {v}" for k, v in facts.items()))
        return 0


COMMANDS = [World()]
