"""``lfopt predict``: a saved model's predictions for the (user, item) pairs of a file.

The pairs are read like any data file (``--format``, ``--columns``; a rating column, if
there is one, is ignored) and written back in the file's order with their prediction
and whether the model knew both the user and the item; a pair with an unknown user or
item gets the model's fallback (rating models: the mean plus the known side's bias;
ranking models: an empty score).
"""

from __future__ import annotations

import sys

import numpy as np

from ..data.io import load
from ..estimators import load as load_model
from ..results import write_atomic
from .common import add_data_options, add_model_option, check_output_paths, parse_columns, say, table_text


def add_parser(sub):
    p = sub.add_parser("predict", help="a saved model's predictions for the (user, item) pairs of a file",
                       description="Predict the rating (or score, for ranking models) of every (user, item) pair "
                       "of --data with a saved model, matched by original IDs, and write user, item, prediction "
                       "and known (1: the model saw both the user and the item in training; 0: the prediction is "
                       "the fallback, the mean and the known side's bias) in the file's order: tab-separated, or "
                       "comma-separated when --output ends with .csv; to standard output without --output. A "
                       "rating column in --data is ignored ('lfopt evaluate' scores against it).")
    add_model_option(p)
    add_data_options(p, default_synthetic=False)
    p.add_argument("--output", metavar="FILE", help="write the predictions here (default: standard output)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing --output file")
    p.add_argument("--no-clip", action="store_true",
                   help="rating models: do not clip predictions to the training ratings' range")
    p.add_argument("--quiet", "-q", action="store_true", help="no information output")
    return p


def run(args) -> int:
    if args.output:
        check_output_paths([("--output", args.output)], args.overwrite)
    model = load_model(args.model)
    pairs = load(args.data, args.format, columns=parse_columns(args.columns), duplicates=args.duplicates,
                 implicit=True, missing=args.missing)
    users = pairs.user_ids[pairs.users] if pairs.user_ids is not None else pairs.users
    items = pairs.item_ids[pairs.items] if pairs.item_ids is not None else pairs.items
    rows, cols = model._user_rows(users), model._item_cols(items)  # -1: unknown to the model
    pred, _ = model._predict_indices(rows, cols, clip=not args.no_clip)  # what predict() computes, unwarned
    pred = np.asarray(pred, dtype=np.float64)
    known = (rows >= 0) & (cols >= 0)
    text = table_text({"user": users, "item": items, "prediction": np.where(np.isfinite(pred), pred, np.nan),
                       "known": known.astype(np.int8)}, args.output)  # an unknown score empty
    n_unknown = int((~known).sum())
    fallback = "the mean and the known side's bias" if model._task == "rating" else "no score, left empty"
    note = f" ({n_unknown} with a user or item the model never saw: {fallback})" if n_unknown else ""
    if args.output:
        write_atomic(args.output, text.encode("utf-8"), args.overwrite)
        say(args, f"{pairs.nnz} predictions{note} written to {args.output}")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()  # the table first, then the summary on stderr
        say(args, f"{pairs.nnz} predictions{note}")
    return 0

