"""``lfopt evaluate``: score a saved model on a ratings file."""

from __future__ import annotations

from ..estimators import load as load_model
from ..results import check_writable, write_json
from .common import add_data_options, load_dataset


def add_parser(sub):
    p = sub.add_parser("evaluate", help="RMSE/MAE of a saved model on a ratings file",
                       description="Score a saved model on every rating of a file (matched by original IDs). "
                       "Pairs whose user or item the model never saw are predicted from the mean and "
                       "biases (--unseen bias, default) or left out (--unseen drop); both are counted.")
    p.add_argument("--model", required=True, metavar="MODEL.npz", help="a model saved by 'lfopt train --save'")
    add_data_options(p, default_synthetic=False)
    p.add_argument("--unseen", choices=("bias", "drop"), default="bias", help="policy for unseen users/items")
    p.add_argument("--output", metavar="JSON", help="write the metrics to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing --output file")
    return p


def run(args) -> int:
    if args.output:
        check_writable(args.output, args.overwrite)
    model = load_model(args.model)
    data = load_dataset(args)
    scores = model.evaluate(data, unseen=args.unseen)
    print(f"RMSE {scores['rmse']:.4f}  MAE {scores['mae']:.4f}  on {scores['n'] - scores['n_dropped']} ratings"
          f" ({scores['n_unseen']} with a user or item unseen in training, policy '{args.unseen}')")
    if args.output:
        write_json(args.output, {"model": args.model, "data": args.data, **scores}, args.overwrite)
    return 0
