"""``dsi-bench``: a thin command-line layer over the library, one module per group of commands.

Each subcommand is a :class:`~dsi_bench.cli.common.Command` that calls one public function with
the same defaults. Bad input prints one line (``dsi-bench <command>: error: ...``) and exits with
code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from ..errors import DsiBenchError
from ..version import __version__
from . import clip, demo, evaluate, generate, hub, probe, shards, tokens, world
from .common import Parser, example

__all__ = ["build_parser", "main"]

#: Every command, in ``--help`` order.
COMMANDS = [*generate.COMMANDS, *tokens.COMMANDS[:1], *demo.COMMANDS, *shards.COMMANDS, *evaluate.COMMANDS,
            *probe.COMMANDS, *tokens.COMMANDS[1:], *clip.COMMANDS, *hub.COMMANDS, *world.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dsi-bench",
        description="Dataset interfaces: labelled test sets under controlled distribution shifts.",
        epilog=example("""
            dsi-bench shifts
            dsi-bench generate --generator ./sd2 --tokens tokens.zip --shift "in the rain" --classes 0-9 --out out/
        """),
    )
    parser.add_argument("--version", action="version", version=f"dsi-bench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        with warnings.catch_warnings():
            # the CLI already said so on stderr for deprecated flags; library deprecations are for Python callers
            warnings.simplefilter("ignore", DeprecationWarning)
            args.command_object.check(args)  # before anything is loaded or written
            if not args.verbose:
                _quiet_libraries(models=args.command_object.loads_models)
            return args.command_object.run(args)
    except DsiBenchError as e:
        print(f"dsi-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dsi-bench {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _quiet_libraries(models: bool) -> None:
    """Keep library chatter (weight-loading bars, resize notices, Hub retries) out of the CLI's output.

    diffusers and transformers are imported (seconds) only for commands that load models with them.
    """
    try:
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # its retry warnings, once through our handler too
    except ImportError:
        pass
    if not models:
        return
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
