"""MF-lambdaFix: grid search of the fixed lambda, selected on the validation metric."""

from __future__ import annotations

import math

from ..errors import ConfigError
from .data import ImplicitSplit
from ..estimators.bpr import BPRMF


def grid_search(split: ImplicitSplit, lambdas, metric: str = "ndcg@50", verbose: bool = False, **params):
    """Train one fixed-lambda BPR-MF per value of ``lambdas`` (same options ``params``) and
    pick the one with the best validation ``metric`` (at its best epoch; never the test set).

    Returns ``(best_model, table)`` where ``table`` lists, per lambda, the validation
    value, best epoch, epochs run and seconds.
    """
    lambdas = [float(x) for x in lambdas]
    if not lambdas:
        raise ConfigError("the lambda grid is empty")
    if any(not math.isfinite(x) or x < 0 for x in lambdas):
        raise ConfigError(f"grid lambdas must be non-negative numbers, got {lambdas}")
    params = dict(params)
    params.pop("regularizer", None)
    best, best_value, table = None, -math.inf, []
    for lam in lambdas:
        model = BPRMF(regularizer="fixed", lam=lam, metric=metric, verbose=verbose, **params).fit(split)
        value = model.best_valid_ if model.best_valid_ is not None else -math.inf
        table.append({"lambda": lam, "valid_" + metric.lower(): value, "best_epoch": model.best_epoch_,
                      "epochs": len(model.history_), "seconds": model.fit_seconds_})
        if verbose:
            import sys

            print(f"lambda {lam:g}: valid {metric} {value:.4f} (best epoch {model.best_epoch_})",
                  file=sys.stderr, flush=True)
        if value > best_value:
            best, best_value = model, value
    return best, table
