"""Studies that reproduce (or refute) the claims of the papers lfopt is built on (METHODS.md section 5).

Each study module offers ``add_parser(subparsers)`` and ``run(args) -> int`` like the commands of
:mod:`lfopt.commands`, so the CLI can expose it as ``lfopt experiment NAME --outdir D [--quick]``:

* :mod:`lfopt.experiments.overparam`: over-parameterized matrix sensing (GD, the one-step
  modification, ScaledGD(lambda), PrecGD, SLF) and GD vs SLF on ML-1M at rank 10 and 100; the
  sensing problem, objective and methods are in :mod:`lfopt.experiments.sensing`.
* :mod:`lfopt.experiments.flatness`: flatness regularization (the trace of the Hessian) of deep
  factorizations against SAM and the nuclear-norm minimizer, on synthetic sensing and completion.
* :mod:`lfopt.experiments.dims`: learned embedding dimensions (DNIS-style selection weights per
  frequency block and dimension, pruning, fine-tuning) against uniform ranks on ML-1M and Yelp.
"""


def study_parser(sub, name: str, help: str, description: str, seed_help: str, seed_default=0,
                 quick_help: str = "a small size for tests (seconds)"):
    """The sub-command of one study with the options every study takes: ``--outdir``, ``--quick``,
    ``--overwrite``, ``--seed`` and ``--quiet`` (the study adds its own)."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--outdir", required=True, help="folder for results.json, table.md and the plots")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--overwrite", action="store_true", help="replace the study's files in --outdir")
    p.add_argument("--seed", type=int, default=seed_default, help=seed_help)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return p


def write_study(outdir, table: str, results: dict) -> dict:
    """Write a study's table.md and results.json into ``outdir`` (atomically; the study checked
    them with --overwrite first); returns ``results`` with the table added."""
    from ..results import write_atomic, write_json

    write_atomic(outdir / "table.md", (table.rstrip("\n") + "\n").encode(), overwrite=True)
    write_json(outdir / "results.json", results, overwrite=True)
    results["table"] = table
    return results


def run_cli(args, config_from_args, run_study) -> int:
    """``run(args)`` of a study: its config from the options, the study, the table printed
    unless ``--quiet``."""
    quiet = getattr(args, "quiet", False)
    res = run_study(config_from_args(args), args.outdir, quiet=quiet, overwrite=getattr(args, "overwrite", False))
    if not quiet:
        print(res["table"])
    return 0
