"""``lfopt recommend``: top-k items for users from a saved model."""

from __future__ import annotations

import json

import numpy as np

from ..estimators import load as load_model


def add_parser(sub):
    p = sub.add_parser("recommend", help="top-k items for a user from a saved model (any model)",
                       description="Print the k items with the highest score for each given user (original "
                       "IDs), excluding the items the user had in training unless --include-seen. Works with "
                       "any saved model (lfopt train --save, lfopt rank --save). An unknown user gets the most "
                       "popular items, with a warning.")
    p.add_argument("--model", required=True, metavar="MODEL.npz",
                   help="a model saved by 'lfopt train --save' or 'lfopt rank --save'")
    p.add_argument("--user", required=True, action="append", help="user ID (repeat for several users)")
    p.add_argument("-k", type=int, default=10, help="number of items (default: 10)")
    p.add_argument("--include-seen", action="store_true", help="also recommend items seen in training")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _as_id(model, raw: str):
    """Convert a command-line ID to the type of the model's user IDs."""
    if model.user_ids_.dtype.kind in "iu":
        try:
            return int(raw)
        except ValueError:
            return raw
    return raw


def run(args) -> int:
    model = load_model(args.model)
    out = {}
    for raw in args.user:
        items, scores = model.recommend(_as_id(model, raw), k=args.k, exclude_seen=not args.include_seen)
        out[raw] = [{"item": np.asarray(i).item(), "score": float(s)} for i, s in zip(items, scores)]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for user, recs in out.items():
            print(f"user {user}:")
            for rank, r in enumerate(recs, 1):
                print(f"  {rank:3d}. item {r['item']}  score {r['score']:.3f}")
    return 0
