"""Studies that reproduce (or refute) the claims of the papers lfopt is built on (METHODS.md section 5).

Each study module offers ``add_parser(subparsers)`` and ``run(args) -> int`` like the commands of
:mod:`lfopt.commands`, so the CLI can expose it as ``lfopt experiment NAME --outdir D [--quick]``:

* :mod:`lfopt.experiments.overparam`: over-parameterized matrix sensing (GD, the one-step
  modification, ScaledGD(lambda), PrecGD, SLF) and GD vs SLF on ML-1M at rank 10 and 100; the
  sensing problem, objective and methods are in :mod:`lfopt.experiments.sensing`.
"""
