"""``lfopt experiment NAME``: the studies of :mod:`lfopt.experiments` (METHODS.md section 5)."""

from __future__ import annotations

import importlib

#: study name -> module under lfopt.experiments (each has add_parser(sub) and run(args))
STUDIES = {"overparam": "overparam", "flatness": "flatness", "dims": "dims"}


def add_parser(sub):
    p = sub.add_parser(
        "experiment",
        help="run a study that reproduces (or refutes) a paper's claim: overparam, flatness, dims",
        description="Studies of METHODS.md section 5. Each writes results.json, table.md and PNG plots into "
        "--outdir; --quick runs a small size in seconds.",
    )
    studies = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    for name, module in STUDIES.items():
        mod = importlib.import_module(f"lfopt.experiments.{module}")
        sp = mod.add_parser(studies)
        sp.set_defaults(_study_run=mod.run)
    return p


def run(args) -> int:
    return int(args._study_run(args) or 0)
