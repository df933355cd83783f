"""What every command shares: the parser class, options used by several commands, deprecated flags.

Each command lives in its own module as a :class:`Command` (its arguments next to its handler);
shared options come from the ``add_*`` helpers here, and choices come from the library's
registries (sources, samplers, engines, presets, model kinds), never from copies.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

__all__ = ["DEVICE_OPTIONS", "Command", "Parser", "add_device", "add_pipeline", "add_quiet", "add_samples",
           "add_shifts", "class_list_from", "deprecated_flag", "example", "finite_float", "masks_value",
           "non_negative_int",
           "pipeline_from", "resolve_devices", "shifts_from",
           "tokens_value"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away) and no abbreviations."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def non_negative_int(text: str) -> int:
    """An argparse ``type``: a count that may be 0 (``--num-workers``), refused at parse time otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def example(text: str) -> str:
    return "example:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


class Command:
    """One subcommand: its name, help, example, arguments and handler."""

    name: str = ""
    help: str = ""
    description: str | None = None
    examples: str = ""
    #: Whether the command loads diffusers/transformers models (their chatter is then silenced, which
    #: imports them: seconds that a command reading files only should not spend).
    loads_models: bool = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit code."""
        raise NotImplementedError

    def check(self, args: argparse.Namespace) -> None:
        """Refuse what can be refused before any work (called before :meth:`run`): by default, resolve
        ``--device auto`` and check every device option names a device this machine has."""
        resolve_devices(args)

    def register(self, sub) -> argparse.ArgumentParser:
        parser = sub.add_parser(self.name, help=self.help, description=self.description,
                                epilog=example(self.examples))
        self.add_arguments(parser)
        _refuse_empty_values(parser)
        parser.set_defaults(command_object=self)
        return parser


#: Text options where an empty value means something ("no negative prompt"); every other empty
#: value is refused while parsing, never taken for "the default" or "the current folder".
EMPTY_ALLOWED = {"negative_prompt"}


def _refuse_empty_values(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:  # argparse has no public walk over a parser's arguments
        if action.type is None and action.nargs != 0 and action.dest not in EMPTY_ALLOWED and not isinstance(
                action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            action.type = _non_empty


def _non_empty(text: str) -> str:
    if not text.strip(" ,"):
        raise argparse.ArgumentTypeError(f"{text!r} is empty; give a value (an empty value never stands for a default)")
    return text


# ---------------------------------------------------------------------- deprecated flags
class _DeprecatedFlag(argparse.Action):
    """An old flag: does what the new one does, and says so on stderr (removed in 0.3)."""

    def __init__(self, option_strings, dest, new: str, append: bool = False, **kwargs):
        self.new, self.append = new, append
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated, use {self.new} (removed in dsi-bench 0.3)",
              file=sys.stderr)
        if self.append:
            setattr(namespace, self.dest, (getattr(namespace, self.dest, None) or []) + [values])
        else:
            setattr(namespace, self.dest, True if self.nargs == 0 else values)


def deprecated_flag(parser, old: str, new: str, dest: str, *, append: bool = False, flag: bool = False,
                    type=None) -> None:
    """Accept ``old`` as a hidden alias of ``new`` (stored in ``dest``, converted by ``type``), with a warning."""
    parser.add_argument(old, dest=dest, action=_DeprecatedFlag, new=new, append=append, help=argparse.SUPPRESS,
                        type=type, **({"nargs": 0} if flag else {}))


# ---------------------------------------------------------------------- number options
def finite_float(flag: str, **bounds):
    """An argparse ``type`` for a float option: a finite number within ``bounds`` (the keywords of
    :func:`~dsi_bench.validate.check_finite_float`); ``nan``, ``inf`` and words are refused in one line."""
    from ..errors import SpecError
    from ..validate import check_finite_float

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = text  # refused below, in the validator's words
        try:
            return check_finite_float(value, flag, **bounds)
        except SpecError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    return parse


# ---------------------------------------------------------------------- shared options
def add_quiet(parser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_shifts(parser, default: str) -> None:
    """``--shifts``: the same in every command (repeatable, comma-separated, ids or names)."""
    parser.add_argument("--shifts", action="append", metavar="SHIFTS",
                        help=f"shift ids or names, comma-separated, repeatable (e.g. base,in_the_snow); {default}")


def shifts_from(args, *, default=None):
    """The shifts asked for: ``"all"``, a list of names (``--shifts`` then ``--shift``), or ``default``."""
    names = [s.strip() for text in (getattr(args, "shifts", None) or []) for s in text.split(",") if s.strip()]
    names += list(getattr(args, "shift", None) or [])
    if "all" in names:
        return "all"
    return names or default


def add_samples(parser) -> None:
    """What to generate: shifts, classes, samples per class, seed."""
    add_shifts(parser, "default: base")
    parser.add_argument("--shift", action="append",
                        help="one shift name, template or phrase (commas allowed); repeat for several")
    parser.add_argument("--classes", default=None, help="indices, ranges, names or ids of the label space, e.g. "
                        "0-9,207 or goldfish, or all (default: every class the --tokens cover)")
    parser.add_argument("--per-class", type=int, default=50, help="images per class (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    parser.add_argument("--class-list", default=None, help="the label space: .txt (one name per line) or .json "
                        "class list (default: the classes a token bank learned on your dataset records, else "
                        "ImageNet-1k)")


def class_list_from(args):
    """``--class-list``: a :class:`~dsi_bench.classes.ClassList` read from the file, or ``None``."""
    path = getattr(args, "class_list", None)
    if not path:
        return None
    from ..classes import ClassList

    return ClassList.from_file(path)


#: Device options (argparse dest -> flag), resolved and checked by :func:`resolve_devices`.
DEVICE_OPTIONS = {"device": "--device", "gen_device": "--gen-device", "devices": "--devices"}


def add_device(parser, what: str = "the model") -> None:
    parser.add_argument("--device", default="auto", help=f"where {what} runs: auto (cuda if there is one, else mps, "
                        "else cpu), cpu, cuda, cuda:1 or mps (default: %(default)s)")


def resolve_devices(args, *, check: bool = True) -> None:
    """Resolve every device option of ``args`` in place (``auto`` -> the device it picks, which results
    record) and, with ``check``, refuse one this machine lacks: one line naming the devices there are,
    before any output folder is created. ``--devices`` is a comma-separated list."""
    names = [dest for dest in DEVICE_OPTIONS if getattr(args, dest, None) is not None]
    if not names:
        return  # no torch import for commands without devices
    from ..devices import resolve_device

    for dest in names:
        flag, value = DEVICE_OPTIONS[dest], getattr(args, dest)
        if dest == "devices":
            value = ",".join(resolve_device(d.strip(), check=check, option=flag) for d in value.split(",") if d.strip())
        else:
            value = resolve_device(value, check=check, option=flag)
        setattr(args, dest, value)


def add_pipeline(parser, *, cache: bool = True) -> None:
    """The diffusion model and its sampler settings (``--generator``, ``--steps``, ...)."""
    from ..pipeline import DEFAULT_MODEL, SAMPLERS

    g = parser.add_argument_group("generator")
    g.add_argument("--generator", default=DEFAULT_MODEL,
                   help="the diffusion model: a diffusers folder or Hub id, or 'world' (the embedded world's) "
                        "(default: %(default)s)")
    deprecated_flag(g, "--model", "--generator", "generator")
    g.add_argument("--revision", default=None, help="Hub branch, tag or commit (default: the main branch)")
    g.add_argument("--tokens", default="imagenet-star", help="token bank, tokens.zip, diffusers file/folder, "
                   "'imagenet-star' (Hub), 'world' (the embedded world's learned tokens) or 'none' for class names "
                   "(default: %(default)s)")
    g.add_argument("--sampler", default="euler", choices=list(SAMPLERS), help="sampler preset (default: euler)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the sampler's, 50 for euler)")
    g.add_argument("--guidance-scale", type=finite_float("--guidance-scale", low=0, example=7.5), default=7.5,
                   help="classifier-free guidance (default: 7.5)")
    g.add_argument("--gen-size", type=int, default=None, help="generation size in px (default: model native)")
    g.add_argument("--out-size", type=non_negative_int, default=None,
                   help="output size in px, 0 = keep (default: 512; the world's generator: its native 32)")
    g.add_argument("--negative-prompt", default=None, help="negative prompt (default: none, as the original)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="samples per denoiser call; part of the sampler settings (default: 8)")
    add_device(g, "the generator")
    g.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16 (default: auto)")
    g.add_argument("--safety-checker", action="store_true",
                   help="run the model's safety checker (flagged images come out black)")
    g.add_argument("--channels-last", action="store_true", help="channels-last UNet memory format (faster on "
                   "some GPUs; same images up to float rounding)")
    g.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    if cache:
        g.add_argument("--cache-dir", default=None, help="sample cache (default: ~/.cache/dsi-bench/samples)")
        g.add_argument("--no-cache", action="store_true", help="do not read or write the sample cache")


def pipeline_from(args):
    """The :class:`~dsi_bench.pipeline.PipelineSpec` of :func:`add_pipeline`'s options."""
    from ..pipeline import PipelineSpec

    return PipelineSpec(
        model=args.generator,
        revision=args.revision,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        gen_size=args.gen_size,
        out_size="auto" if args.out_size is None else (args.out_size or None),
        negative_prompt=args.negative_prompt,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        safety_checker=args.safety_checker,
        channels_last=args.channels_last,
        compile=args.compile,
    )


def tokens_value(text):
    """``--tokens``: ``none`` means class names in the prompts."""
    return None if text is None or text.lower() == "none" else text


def masks_value(text):
    """``--masks``: none/false -> no masks; release/true/flags -> the source's own; else a path."""
    if text is None or text.lower() in ("none", "false", "no"):
        return False
    if text.lower() in ("true", "release", "flags", "yes"):
        return True
    return text
