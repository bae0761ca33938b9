"""``lfopt recommend``: top-k items for users from a saved model."""

from __future__ import annotations

import json

import numpy as np

from ..estimators import load as load_model
from ..results import write_atomic
from .common import add_model_option, check_output_paths, say, table_text


def add_parser(sub):
    p = sub.add_parser("recommend", help="top-k items for a user from a saved model (any model)",
                       description="Print the k items with the highest score for each given user (original "
                       "IDs), excluding the items the user had in training unless --include-seen. Works with "
                       "any saved model (lfopt train --save, lfopt rank --save). A user unknown to the model is "
                       "reported and skipped (the others are printed; exit status 1) unless --fallback, which "
                       "recommends the most popular items "
                       "(shrunk popularity: a damped mean rating, or the interaction count for ranking models). "
                       "--all-users recommends for every user the model was trained on; --output writes the lists "
                       "as a table (user, rank, item, score; tab-separated, comma-separated for .csv).")
    add_model_option(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", action="append", help="user ID (repeat for several users)")
    who.add_argument("--all-users", action="store_true",
                     help="every user with training entries (computed a block of users at a time); the lists "
                     "print as a table (user, rank, item, score), or go to --output")
    p.add_argument("-k", type=int, default=10, help="number of items (default: 10)")
    p.add_argument("--include-seen", action="store_true", help="also recommend items seen in training")
    p.add_argument("--min-support", type=int, default=None, metavar="N",
                   help="recommend only items with at least N training entries (default: 1)")
    p.add_argument("--fallback", action="store_true",
                   help="recommend popular items to users unknown to the model instead of failing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--output", metavar="FILE",
                   help="write the lists to this file as a table: user, rank, item, score (tab-separated; "
                   "comma-separated when FILE ends with .csv)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing --output file")
    p.add_argument("--quiet", "-q", action="store_true", help="no information output")
    return p


def _table(out: dict, output=None) -> str:
    """The lists of ``out`` (user -> [{"item", "score"}, ...]) as text: user, rank, item, score."""
    users, ranks, items, scores = [], [], [], []
    for user, recs in out.items():
        for rank, r in enumerate(recs, 1):
            users.append(user)
            ranks.append(rank)
            items.append(r["item"])
            scores.append(r["score"])
    return table_text({"user": users, "rank": ranks, "item": items, "score": scores}, output)


def _all_users(model, args) -> dict:
    """user ID -> list of {"item", "score"} for every user with training entries (padding left out)."""
    rows = np.flatnonzero(model.user_counts_ > 0)
    users = model.user_ids_[rows]
    items, scores = model.recommend(users, k=args.k, exclude_seen=not args.include_seen,
                                    min_support=args.min_support)
    out = {}
    for user, its, scs in zip(users.tolist(), items, scores):
        out[user] = [{"item": np.asarray(i).item(), "score": float(s)} for i, s in zip(its, scs) if np.isfinite(s)]
    return out


def _as_id(model, raw: str):
    """Convert a command-line ID to the type of the model's user IDs."""
    if model.user_ids_.dtype.kind in "iu":
        try:
            return int(raw)
        except ValueError:
            return raw
    return raw


def run(args) -> int:
    import sys
    import warnings

    from ..errors import ConfigError

    if args.min_support is not None and args.min_support < 1:
        raise ConfigError(f"--min-support must be a positive integer, got {args.min_support}")
    if args.k < 1:
        raise ConfigError(f"-k must be a positive integer, got {args.k}")
    if args.output:
        check_output_paths([("--output", args.output)], args.overwrite)
    model = load_model(args.model)
    if args.all_users:
        out = _all_users(model, args)
        _write(out, args)
        return 0
    ids = [_as_id(model, raw) for raw in args.user]
    # one lookup per ID: a list mixing numbers and text (an unknown "abc" beside 1 and 2) would become
    # an array of strings, in which no numeric ID is found
    rows = np.array([model._user_rows([i])[0] for i in ids], dtype=np.int64)
    unknown = [raw for raw, r in zip(args.user, rows) if r < 0 or model.user_counts_[r] == 0]
    if unknown and not args.fallback:
        # the known users still get their lists; the unknown ones are reported and the exit status is 1
        print(f"lfopt recommend: warning: {len(unknown)} user(s) unknown to the model: "
              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; give --fallback to recommend the "
              f"most popular items to them", file=sys.stderr)
    skip = set() if args.fallback else set(unknown)
    out = {}
    for raw, uid in zip(args.user, ids):
        if raw in skip:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown users are reported below, once each
            items, scores = model.recommend(uid, k=args.k, exclude_seen=not args.include_seen,
                                            min_support=args.min_support)
        out[raw] = [{"item": np.asarray(i).item(), "score": float(s)} for i, s in zip(items, scores)]
    if unknown and args.fallback:
        print(f"lfopt recommend: warning: {len(unknown)} user(s) unknown to the model "
              f"({', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}): recommended by popularity",
              file=sys.stderr)
    _write(out, args)
    return 1 if skip else 0


def _write(out: dict, args) -> None:
    """The lists to --output (a table), or printed: JSON, a table (--all-users) or one block per user."""
    if args.output:
        write_atomic(args.output, _table(out, args.output).encode("utf-8"), args.overwrite)
        say(args, f"top-{args.k} lists of {len(out)} users written to {args.output}")
    elif args.json:
        print(json.dumps({str(u): recs for u, recs in out.items()}, indent=2))
    elif args.all_users:
        print(_table(out), end="")
    else:
        for user, recs in out.items():
            print(f"user {user}:")
            for rank, r in enumerate(recs, 1):
                print(f"  {rank:3d}. item {r['item']}  score {r['score']:.3f}")
