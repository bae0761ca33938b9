"""The ``lfopt`` command line.

Subcommands live in modules under :mod:`lfopt.commands`; each has
``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys

from .errors import LfoptError

SUBCOMMANDS = ("train", "evaluate", "predict", "recommend", "info", "compare", "rank", "experiment")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lfopt",
        description=(
            "Latent factor models for sparse (high-dimensional and incomplete) matrices: train with SGD, "
            "Adam, ALS, the second-order AdaGO / SLF / SSLF or Bayesian averaging (Gibbs sampling), evaluate, "
            "predict, recommend, compare optimizers, and rank implicit feedback with BPR and learned "
            "regularization (lambdaOpt)."
        ),
        epilog="Run 'lfopt COMMAND --help' for the options of a command. "
        "'lfopt train' with no option trains on the built-in synthetic dataset.",
    )
    parser.add_argument("--version", action="version", version=f"lfopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue  # command not built yet
            raise
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run, _flags=getattr(module, "FLAG_NAMES", None))
    return parser


def main(argv=None) -> int:
    from .commands.common import cli_output, to_flags
    from .errors import ConfigError, DataError, DivergenceError
    from .train.trainer import progress_style

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    args._argv = argv
    quiet = bool(getattr(args, "quiet", False))
    try:
        with cli_output(args.command, quiet), progress_style(getattr(args, "progress", None)):
            return int(args._run(args) or 0)
    except (LfoptError, FileExistsError) as exc:
        text = str(exc)
        if isinstance(exc, (ConfigError, DivergenceError, DataError)):
            # the library names its Python parameters (lam); the user typed flags (--lambda)
            text = to_flags(text, getattr(args, "_flags", None))
        print(f"lfopt {args.command}: error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lfopt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
