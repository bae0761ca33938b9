"""``lfopt evaluate``: score a saved model (any model) on a data file.

A model saved by ``lfopt train --save`` remembers its data and split
(``model.data_info_``): given the same file again, ``evaluate`` recreates the
split, checks that it is the one the model was trained with (a fingerprint of
the held-out pairs) and scores the held-out part only; ``--all`` scores every
rating of the file (training ratings included, so an optimistic number).
"""

from __future__ import annotations

import os

from ..data.io import load
from ..data.split import fixed_split, random_split
from ..errors import ConfigError, DataError
from ..estimators import load as load_model
from ..results import write_json
from .common import (add_data_options, add_model_option, check_output_paths, logger, pairs_hash, parse_columns,
                     run_info, say)


def add_parser(sub):
    p = sub.add_parser("evaluate", help="score a saved model on a data file (RMSE/MAE or full-ranking metrics)",
                       description="Score a saved model on the entries of a file, matched by original IDs. "
                       "A model saved by 'lfopt train --save' and given its training file again is scored on the "
                       "held-out test part of that run's split (recreated and checked); --all scores every rating. "
                       "Rating models report RMSE/MAE: pairs whose user or item the model never saw are "
                       "predicted from the mean and biases (--unseen bias, default) or left out (--unseen drop); "
                       "both are counted. Ranking models (and any model with --kind ranking) report full-ranking "
                       "AUC, HR/NDCG/Recall/Precision@K: the file's entries (those >= --threshold if given) are "
                       "the positives, ranked against every item the user did not have in training.")
    add_model_option(p)
    add_data_options(p, default_synthetic=False)
    p.add_argument("--all", action="store_true",
                   help="score every rating of --data, even when it is the model's training file (whose held-out "
                   "part is scored by default)")
    p.add_argument("--kind", choices=("rating", "ranking"), default=None,
                   help="which metrics (default: rating for rating models, ranking for ranking models)")
    p.add_argument("--unseen", choices=("bias", "drop"), default="bias", help="rating: policy for unseen users/items")
    p.add_argument("--threshold", type=float, default=None, help="ranking: positives are entries >= this value")
    p.add_argument("--ks", default="10,20,50", help="ranking: cut-offs K (default: 10,20,50)")
    p.add_argument("--output", metavar="JSON", help="write the metrics to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing --output file")
    p.add_argument("--quiet", "-q", action="store_true", help="no information output (the metrics still print)")
    return p


def _same_file(a, b) -> bool:
    if not a or not b:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _load(args, info: dict):
    """The --data file, read as at training time when it is the model's training file and
    --format/--columns/--duplicates are not given."""
    fmt, columns, duplicates, missing = args.format, args.columns, args.duplicates, args.missing
    if info.get("command") == "train" and _same_file(args.data, info.get("path")):
        fmt = fmt or info.get("format")
        columns = columns or info.get("columns")
        if duplicates == "error" and info.get("duplicates"):
            duplicates = info["duplicates"]
        if missing is None:
            missing = info.get("missing")
    return load(args.data, fmt, columns=parse_columns(columns), duplicates=duplicates, missing=missing)


def held_out_part(data, info: dict, args):
    """(part, description): the held-out part of ``data`` when it is the data the model was trained
    on (its split recreated from ``info`` and checked by fingerprint), else ``(data, why)``."""
    if not info or info.get("command") != "train":
        return data, "all"
    split = info.get("split")
    if split == "test_file":
        if _same_file(args.data, info.get("path")):
            logger.warning(f"every rating of {args.data} was used to train this model; its held-out ratings are in "
                           f"{info.get('test_path')} (--data {info.get('test_path')}); scoring all of them")
            return data, "all (the training file)"
        return data, "all"
    if split not in ("random", "fixed") or data.nnz != info.get("n_ratings"):
        if _same_file(args.data, info.get("path")):
            logger.warning(f"{args.data} has {data.nnz} ratings, the model's training file had "
                           f"{info.get('n_ratings')}: it changed since training, so the held-out part cannot be "
                           f"recreated; scoring all its ratings")
        return data, "all"
    try:
        if split == "fixed":
            if "test_mask" not in data.meta:
                return data, "all"
            _, test = fixed_split(data)
        else:
            _, test = random_split(data, float(info["test_fraction"]), int(info["seed"]))
    except (KeyError, TypeError, ValueError, DataError, ConfigError):
        return data, "all"
    if pairs_hash(test) != info.get("test_hash"):
        if _same_file(args.data, info.get("path")):
            logger.warning(f"{args.data}: the split recreated from the model's seed and fractions does not match the "
                           f"one it was trained with (the file changed?); scoring all its ratings")
        return data, "all"
    how = "fixed split" if split == "fixed" else f"seed {info['seed']}, test fraction {info['test_fraction']:g}"
    return test, f"held-out test part ({how})"


def run(args) -> int:
    check_output_paths([("--output", args.output)], args.overwrite)
    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError:
        raise ConfigError(f"--ks: expected positive integers separated by commas, got {args.ks!r}") from None
    model = load_model(args.model)
    info = getattr(model, "data_info_", None) or {}
    data = _load(args, info)
    part, which = (data, "all") if args.all else held_out_part(data, info, args)
    if which.startswith("held-out"):
        say(args, f"scoring the {which}: {part.nnz} of the {data.nnz} ratings (--all for every rating)")
    kind = args.kind or model._task
    if kind == "rating":
        scores = model.evaluate(part, kind="rating", unseen=args.unseen)
        n_unseen = int(scores.get("n_unseen", 0) or 0)
        n_dropped = int(scores.get("n_dropped", n_unseen if args.unseen == "drop" else 0) or 0)
        n_scored = part.nnz - n_dropped
        if n_scored <= 0 or (args.unseen == "drop" and n_unseen >= part.nnz):
            raise DataError(f"all {part.nnz} pairs of {args.data} have a user or item that {args.model} never saw in "
                            f"training: nothing to score with --unseen drop (is this the model's data? "
                            f"--unseen bias predicts them from the mean and biases)")
        if n_unseen >= part.nnz:
            logger.warning(f"every pair of {args.data} has a user or item the model never saw in training: all are "
                           f"predicted from the mean and biases (is this the model's data?)")
        if args.unseen == "drop":
            note = f" ({n_dropped} pairs with a user or item unseen in training dropped)" if n_dropped else ""
        else:
            note = (f" ({n_unseen} with a user or item unseen in training, predicted from the mean and biases)"
                    if n_unseen else "")
        print(f"RMSE {scores['rmse']:.4f}  MAE {scores['mae']:.4f}  on {n_scored} ratings{note}")
        scores = {**scores, "n_scored": n_scored, "n_dropped": n_dropped}
    else:
        scores = model.evaluate(part, kind="ranking", ks=ks, threshold=args.threshold)
        shown = ["auc"] + [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")]
        print("  ".join(f"{m.upper() if m == 'auc' else m} {scores[m]:.4f}" for m in shown)
              + f"  over {scores['n_users']} users ({scores.get('n_unseen', 0)} entries with an unknown user or "
                f"item left out)")
    if args.output:
        write_json(args.output, {**run_info(args), "model": args.model, "data": args.data, "part": which,
                                 "n_ratings": data.nnz, "n_part": part.nnz, "kind": kind, "unseen": args.unseen,
                                 **scores}, args.overwrite)
    return 0
