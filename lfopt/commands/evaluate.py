"""``lfopt evaluate``: score a saved model (any model) on a data file."""

from __future__ import annotations

from ..errors import ConfigError
from ..estimators import load as load_model
from ..results import check_writable, write_json
from .common import add_data_options, load_dataset


def add_parser(sub):
    p = sub.add_parser("evaluate", help="score a saved model on a data file (RMSE/MAE or full-ranking metrics)",
                       description="Score a saved model on the entries of a file, matched by original IDs. "
                       "Rating models report RMSE/MAE: pairs whose user or item the model never saw are "
                       "predicted from the mean and biases (--unseen bias, default) or left out (--unseen drop); "
                       "both are counted. Ranking models (and any model with --kind ranking) report full-ranking "
                       "AUC, HR/NDCG/Recall/Precision@K: the file's entries (those >= --threshold if given) are "
                       "the positives, ranked against every item the user did not have in training.")
    p.add_argument("--model", required=True, metavar="MODEL.npz",
                   help="a model saved by 'lfopt train --save' or 'lfopt rank --save'")
    add_data_options(p, default_synthetic=False)
    p.add_argument("--kind", choices=("rating", "ranking"), default=None,
                   help="which metrics (default: rating for rating models, ranking for ranking models)")
    p.add_argument("--unseen", choices=("bias", "drop"), default="bias", help="rating: policy for unseen users/items")
    p.add_argument("--threshold", type=float, default=None, help="ranking: positives are entries >= this value")
    p.add_argument("--ks", default="10,20,50", help="ranking: cut-offs K (default: 10,20,50)")
    p.add_argument("--output", metavar="JSON", help="write the metrics to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing --output file")
    return p


def run(args) -> int:
    if args.output:
        check_writable(args.output, args.overwrite)
    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError:
        raise ConfigError(f"--ks: expected positive integers separated by commas, got {args.ks!r}") from None
    model = load_model(args.model)
    data = load_dataset(args)
    kind = args.kind or model._task
    if kind == "rating":
        scores = model.evaluate(data, kind="rating", unseen=args.unseen)
        print(f"RMSE {scores['rmse']:.4f}  MAE {scores['mae']:.4f}  on {scores['n'] - scores['n_dropped']} ratings"
              f" ({scores['n_unseen']} with a user or item unseen in training, policy '{args.unseen}')")
    else:
        scores = model.evaluate(data, kind="ranking", ks=ks, threshold=args.threshold)
        shown = ["auc"] + [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")]
        print("  ".join(f"{m.upper() if m == 'auc' else m} {scores[m]:.4f}" for m in shown)
              + f"  over {scores['n_users']} users ({scores['n_unseen']} entries with an unknown user or item left out)")
    if args.output:
        write_json(args.output, {"model": args.model, "data": args.data, "kind": kind, **scores}, args.overwrite)
    return 0
