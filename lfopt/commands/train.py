"""``lfopt train``: fit a latent factor model and report test accuracy."""

from __future__ import annotations

import argparse
import inspect
import time

from ..errors import DivergenceError
from ..estimators import LatentFactorModel
from ..optim.base import make_optimizer
from ..results import check_writable, model_path, peak_memory_mb, write_json
from .common import add_backend_options, add_data_options, add_output_options, load_dataset, say, split_dataset

OPTIMIZERS = ("sgd", "adam", "als", "adago", "slf", "sslf", "gibbs")

# per-optimizer options exposed on the command line: (flag, dest, type, help)
OPTIMIZER_FLAGS = [
    ("--lr", "lr", float, "learning rate (sgd, adam, adago)"),
    ("--decay", "decay", float, "sgd: multiply lr by this after every epoch"),
    ("--batch-size", "batch_size", int, "adam/adago: entries per mini-batch (0 = full batch; default: |K|/100 within "
     "[256, 8192]); sgd: per mini-batch when it cannot run its fused per-entry epoch (torch backend, --rho)"),
    ("--damping", "damping", float, "adago: damping a added to the GN diagonal; slf/sslf: initial LM damping"),
    ("--cg-iters", "cg_iters", int, "slf/sslf: at most this many CG iterations per step"),
    ("--cg-tol", "cg_tol", float, "slf/sslf: relative residual at which CG stops"),
    ("--rho", "rho", float, "radius of the sharpness-aware perturbation, with any optimizer but als "
     "(sslf = slf with --rho, default 0.05)"),
]


def add_model_options(p) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--optimizer", default=None, choices=OPTIMIZERS, help="optimizer (default: the model's, als)")
    g.add_argument("--rank", type=int, default=None,
                   help="latent dimensions (default: the model's, 32; on the synthetic data its true rank, 5)")
    g.add_argument("--epochs", type=int, default=40, help="maximum epochs (default: 40)")
    g.add_argument("--lambda", dest="lam", type=_lambda, default=None, metavar="LAMBDA|learn",
                   help="count-weighted L2 of the factors (row u: --lambda0 + LAMBDA n_u, in units of standardized "
                   "ratings), or 'learn' to learn it on the validation part (lambdaOpt) (default: the model's)")
    g.add_argument("--lambda0", dest="lam0", type=float, default=None,
                   help="constant part of each row's factor penalty (default: the model's)")
    g.add_argument("--lambda-bias", dest="lam_b", type=float, default=None,
                   help="count-weighted L2 of the biases (default: the model's)")
    g.add_argument("--lambda0-bias", dest="lam0_b", type=float, default=None,
                   help="constant part of each row's bias penalty (default: the model's)")
    g.add_argument("--preset", choices=("accurate",), default=None,
                   help="accurate: Bayesian averaging (Gibbs sampling warm-started by ALS) on all the training data, "
                   "until --time-budget is spent (default: none)")
    g.add_argument("--time-budget", dest="time_budget", type=float, default=None, metavar="SECONDS",
                   help="stop training before an epoch would end past this many seconds (default: no limit)")
    g.add_argument("--granularity", choices=("global", "D", "DU", "DI", "DUI"), default=None,
                   help="with --lambda learn: one lambda for all, per dimension, per (user|item, dimension)")
    g.add_argument("--no-bias", action="store_true", help="the plain model r = p.q (no mean and biases)")
    g.add_argument("--init-scale", type=float, default=0.1, help="initial factor scale (default: 0.1)")
    g.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (default: 5)")
    for flag, dest, typ, text in OPTIMIZER_FLAGS:
        g.add_argument(flag, dest=dest, type=typ, default=None, help=text)
    g.add_argument("--precondition", choices=("block", "jacobi", "none"), default=None,
                   help="slf/sslf: CG preconditioner (default: block, the per-user/per-item GN blocks)")
    add_backend_options(p)


def add_parser(sub):
    p = sub.add_parser(
        "train",
        help="train a latent factor model and report test RMSE/MAE",
        description="Train a latent factor model on a ratings file (or the built-in synthetic dataset), "
        "evaluate it on a held-out test part and print a summary.",
    )
    add_data_options(p)
    g = p.add_argument_group("split")
    g.add_argument("--test-fraction", type=float, default=0.1, help="held-out test fraction (default: 0.1)")
    g.add_argument("--valid-fraction", type=float, default=0.1,
                   help="fraction of the training part held out for early stopping (default: 0.1; 0 trains on the "
                   "whole training part with no early stopping)")
    g.add_argument("--seed", type=int, default=42, help="seed of the split, initialization and optimizer (default: 42)")
    add_model_options(p)
    add_output_options(p)
    p.add_argument("--save", metavar="MODEL.npz", help="save the trained model")
    return p


def optimizer_options(args) -> dict:
    """The optimizer hyper-parameters given on the command line, checked against the optimizer."""
    opts = {dest: getattr(args, dest) for _, dest, _, _ in OPTIMIZER_FLAGS if getattr(args, dest) is not None}
    if getattr(args, "precondition", None):
        opts["precondition"] = args.precondition
    make_optimizer(args.optimizer or _model_default("optimizer"), **opts)  # validates names and values early
    return opts


def _model_default(name: str):
    """The default of a LatentFactorModel parameter (the CLI's defaults are the model's)."""
    return inspect.signature(LatentFactorModel).parameters[name].default


def _lambda(text: str):
    if text.strip().lower() == "learn":
        return "learn"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'learn', got {text!r}") from None


def build_model(args, rank: int) -> LatentFactorModel:
    given = {k: getattr(args, k) for k in ("lam", "lam0", "lam_b", "lam0_b", "granularity", "preset", "time_budget")
             if getattr(args, k, None) is not None}
    if args.optimizer is not None:
        given["optimizer"] = args.optimizer
    return LatentFactorModel(rank=rank, epochs=args.epochs, **given,
                             use_bias=not args.no_bias, init_scale=args.init_scale, seed=args.seed,
                             patience=args.patience, validation=args.valid_fraction or None,
                             verbose=not args.quiet, backend=args.backend,
                             device=args.device, **optimizer_options(args))


def run(args) -> int:
    for path in (args.output, args.save and model_path(args.save)):
        if path:
            check_writable(path, args.overwrite)
    data = load_dataset(args)
    rank = args.rank if args.rank is not None else (data.meta.get("true_rank") or _model_default("rank"))
    model = build_model(args, rank)
    say(args, f"data: {data!r}")
    train, test = split_dataset(data, args.test_fraction, args.seed)
    t0 = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - t0
    res = model.train_result_
    if res.stopped == "diverged":
        raise DivergenceError(res.message)
    scores = model.evaluate(test)
    summary = {
        "data": args.data or "synthetic",
        "n_users": data.n_users, "n_items": data.n_items, "n_ratings": data.nnz,
        "n_train": model.n_train_, "n_valid": model.n_valid_, "n_test": test.nnz,
        "test_rmse": scores["rmse"], "test_mae": scores["mae"], "n_test_unseen": scores["n_unseen"],
        "epochs": len(res.history), "best_epoch": res.best_epoch or len(res.history), "stopped": res.stopped,
        "train_seconds": seconds, "seconds_per_epoch": seconds / max(1, len(res.history)),
        "peak_memory_mb": peak_memory_mb(),
        "options": {k: v for k, v in vars(args).items() if not k.startswith("_")} | {"rank": rank, "optimizer": model.optimizer_.name,
                                                                                "lambda": model.lam, "lambda0": model.lam0},
        "history": res.history,
    }
    if "noise_floor" in data.meta:
        summary["noise_floor"] = data.meta["noise_floor"]
        summary["rmse_over_floor"] = scores["rmse"] / data.meta["noise_floor"]
    if res.message:
        summary["message"] = res.message
    lines = [
        (f"optimizer gibbs (preset accurate, {model.n_samples_} samples averaged), rank {rank}: "
         if model.preset == "accurate" else
         f"optimizer {model.optimizer}, rank {rank}, lambda {model.lam} (+ {model.lam0} per row): ")
        + f"{summary['epochs']} epochs ({res.stopped}) in {seconds:.2f} s",
        f"test RMSE {scores['rmse']:.4f}  MAE {scores['mae']:.4f}  on {test.nnz} ratings"
        + (f" ({scores['n_unseen']} with unseen user/item, predicted from biases)" if scores["n_unseen"] else ""),
    ]
    if "noise_floor" in summary:
        lines.append(f"noise floor {summary['noise_floor']:.4f}: RMSE is {summary['rmse_over_floor']:.3f} x the floor")
    lines.append(f"peak memory {summary['peak_memory_mb']:.0f} MiB")
    print("\n".join(lines))
    if args.output:
        write_json(args.output, summary, args.overwrite)
        say(args, f"results written to {args.output}")
    if args.save:
        path = model.save(args.save, overwrite=args.overwrite)
        say(args, f"model saved to {path}")
    return 0
