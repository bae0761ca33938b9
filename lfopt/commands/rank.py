"""``lfopt rank``: BPR-MF on implicit feedback with a fixed (grid-searched) or learned (lambdaOpt) regularization."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import ConfigError, DivergenceError
from ..eval.ranking import parse_metric
from ..results import check_writable, peak_memory_mb, write_json
from ..ranking.data import implicit_split
from ..estimators.bpr import BPRMF, OPTIMIZERS, REGULARIZERS
from ..regularizers.lambda_opt import GRANULARITIES
from ..ranking.search import grid_search
from .common import add_backend_options, add_data_options, add_output_options, load_dataset, say

PLOT_FILES = ("rank_validation.png", "rank_lambda.png", "rank_grid.png")


def _floats(text: str, what: str) -> list:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not out:
        raise ConfigError(f"{what}: expected at least one number")
    return out


def add_parser(sub):
    p = sub.add_parser(
        "rank",
        help="rank implicit feedback with BPR-MF and learned fine-grained regularization (lambdaOpt)",
        description="Build implicit positives (all entries, or values >= --threshold), keep the k-core, split "
        "every user's positives 60/20/20 into train/validation/test (by time when the data has timestamps, "
        "else at random), train BPR-MF with a fixed lambda (optionally grid-searched on validation: "
        "MF-lambdaFix) or with lambdaOpt's Lambda learned on validation, and report full-ranking test "
        "metrics (AUC, HR/NDCG/Recall/Precision@K against every non-interacted item).",
    )
    add_data_options(p)
    g = p.add_argument_group("implicit feedback and split")
    g.add_argument("--implicit", action="store_true",
                   help="treat every entry as a positive interaction (the default when no --threshold is given)")
    g.add_argument("--threshold", type=float, default=None,
                   help="positives are entries with value >= this (e.g. 4 for star ratings, a play count); "
                   "default: every entry (synthetic data: 4)")
    g.add_argument("--k-core", type=int, default=5,
                   help="keep users and items with at least this many positives (default: 5; 1 = no filter)")
    g.add_argument("--split", default="0.6,0.2,0.2", help="per-user train,valid,test fractions (default: 0.6,0.2,0.2)")
    g.add_argument("--order", choices=("auto", "time", "random"), default="auto",
                   help="per-user split order: by timestamp, random, or auto = time when the data has timestamps")
    g.add_argument("--seed", type=int, default=42, help="seed of the split, initialization and sampling (default: 42)")
    g = p.add_argument_group("model and training")
    g.add_argument("--rank", type=int, default=64, help="latent dimensions (default: 64)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="adam (lazy, row-wise) or sgd (default: adam)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.005 adam, 0.05 sgd)")
    g.add_argument("--batch-size", type=int, default=1024, help="training triples per step (default: 1024)")
    g.add_argument("--epochs", type=int, default=100, help="maximum epochs (default: 100)")
    g.add_argument("--patience", type=int, default=10,
                   help="stop after this many epochs without a better validation metric (default: 10; 0 = never)")
    g.add_argument("--item-bias", action="store_true", help="add a learned item bias b_i to the score")
    g.add_argument("--lambda-bias", dest="lam_bias", type=float, default=0.0, help="L2 of the item biases (default: 0)")
    g.add_argument("--init-scale", type=float, default=0.1, help="factors start ~ N(0, s^2) (default: 0.1)")
    g = p.add_argument_group("regularization")
    g.add_argument("--regularizer", choices=REGULARIZERS, default="lambdaopt",
                   help="fixed lambda (MF-lambdaFix) or lambdaopt (learned on validation; default)")
    g.add_argument("--granularity", default="DUI", metavar="|".join(GRANULARITIES),
                   help="lambdaOpt's granularity: global, D (per dimension), DU (per user and dimension), "
                   "DI (per item and dimension) or DUI (both; default)")
    g.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="fixed: the lambda (default 0.01); lambdaopt: the initial Lambda (default 0)")
    g.add_argument("--lambda-lr", dest="lam_lr", type=float, default=1e-3,
                   help="lambdaopt: learning rate of Lambda's Adam (default: 0.001)")
    g.add_argument("--valid-batch-size", type=int, default=None,
                   help="lambdaopt: validation triples per Lambda step (default: --batch-size)")
    g.add_argument("--lambda-holdout", dest="lambda_holdout", type=float, default=0.0,
                   help="lambdaopt: fraction of each user's validation positives kept out of the Lambda steps "
                   "and used only for early stopping (default: 0, as in the paper)")
    g.add_argument("--grid", metavar="L1,L2,...",
                   help="fixed: grid-search these lambdas and keep the best on validation (MF-lambdaFix)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--metric", default="ndcg@50",
                   help="validation metric for early stopping and --grid (default: ndcg@50)")
    g.add_argument("--ks", default="10,20,50", help="cut-offs K of the reported metrics (default: 10,20,50)")
    g.add_argument("--buckets", type=int, default=4,
                   help="user activity buckets (quantiles of training positives) in the report (default: 4)")
    add_backend_options(p)
    add_output_options(p)
    p.add_argument("--plots", metavar="DIR", help=f"write PNG plots into this folder ({', '.join(PLOT_FILES)})")
    p.add_argument("--save", metavar="MODEL.npz", help="save the trained model")
    return p


def _check_args(args):
    if args.k_core < 1:
        raise ConfigError(f"--k-core must be at least 1, got {args.k_core}")
    if args.buckets < 1:
        raise ConfigError(f"--buckets must be at least 1, got {args.buckets}")
    fractions = _floats(args.split, "--split")
    if len(fractions) != 3 or any(x <= 0 for x in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"--split: expected three positive fractions summing to 1, got {args.split!r}")
    ks = _floats(args.ks, "--ks")
    if any(k != int(k) or k < 1 for k in ks):
        raise ConfigError(f"--ks: expected positive integers, got {args.ks!r}")
    _, metric_k = parse_metric(args.metric)
    ks = sorted({int(k) for k in ks} | ({metric_k} if metric_k else set()))
    grid = None
    if args.grid:
        if args.regularizer != "fixed":
            raise ConfigError("--grid searches a fixed lambda: use it with --regularizer fixed")
        grid = _floats(args.grid, "--grid")
    if args.save and not str(args.save).endswith(".npz"):
        raise ConfigError(f"--save: the model file name must end in .npz, got {args.save!r}")
    return fractions, ks, grid


def _model_params(args, ks) -> dict:
    learn = args.regularizer == "lambdaopt"
    return dict(rank=args.rank, optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                granularity=args.granularity if learn else "global", lam=args.lam, lam_lr=args.lam_lr,
                lambda_holdout=args.lambda_holdout,
                lam_bias=args.lam_bias, item_bias=args.item_bias, init_scale=args.init_scale,
                valid_batch_size=args.valid_batch_size, patience=args.patience or None, metric=args.metric,
                ks=ks, seed=args.seed, verbose=not args.quiet, backend=args.backend, device=args.device)


def run(args) -> int:
    fractions, ks, grid = _check_args(args)
    params = _model_params(args, ks)
    BPRMF(regularizer=args.regularizer, **params)  # validate every option before loading data
    plot_dir = Path(args.plots) if args.plots else None
    for path in (args.output, args.save):
        if path:
            check_writable(path, args.overwrite)
    if plot_dir is not None:
        if plot_dir.exists() and not plot_dir.is_dir():
            raise FileExistsError(f"{plot_dir} exists and is not a folder")
        for name in PLOT_FILES:
            check_writable(plot_dir / name, args.overwrite)

    data = load_dataset(args)
    threshold = args.threshold
    if args.data is None and threshold is None:
        threshold = 4.0  # the synthetic ratings: "liked" items are the implicit positives
    by_time = {"auto": None, "time": True, "random": False}[args.order]
    say(args, f"data: {data!r}")
    split = implicit_split(data, threshold=threshold, k_core=args.k_core, fractions=fractions, by_time=by_time,
                           seed=args.seed)
    say(args, f"implicit: {split!r}; split {'by time' if split.info['by_time'] else 'random'}"
              + ("" if threshold is None else f", positives = values >= {threshold:g}"))

    t0 = time.perf_counter()
    table = None
    if grid is not None:
        params.pop("lam")
        verbose = params.pop("verbose")
        model, table = grid_search(split, grid, verbose=verbose, **params)
    else:
        model = BPRMF(regularizer=args.regularizer, **params).fit(split)
    seconds = time.perf_counter() - t0
    if model.stopped_ == "diverged":
        raise DivergenceError(model.train_result_.message)
    t1 = time.perf_counter()
    test = model.evaluate(split.test, ks=ks, n_buckets=args.buckets)
    eval_seconds = time.perf_counter() - t1

    label = ("lambdaOpt-" + model.effective_granularity) if args.regularizer == "lambdaopt" else "MF-lambdaFix"
    summary = {
        "data": args.data or "synthetic", "model": label, "split": split.info,
        "test": test, "best_epoch": model.best_epoch_, "epochs": len(model.history_), "stopped": model.stopped_,
        "best_valid": model.best_valid_, "valid_metric": args.metric,
        "lambda": model.effective_lam if args.regularizer == "fixed" else None,
        "train_seconds": seconds, "eval_seconds": eval_seconds,
        "seconds_per_epoch": (sum(h["epoch_seconds"] for h in model.history_) / max(1, len(model.history_))),
        "peak_memory_mb": peak_memory_mb(),
        "options": {k: v for k, v in vars(args).items() if not k.startswith("_")}
        | {"model_params": model.get_params()},
        "history": model.history_,
    }
    if args.regularizer == "lambdaopt":
        traj = model.lambda_trajectory_
        summary["lambda_final"] = traj[model.best_epoch_ - 1] if traj else None
        summary["lambda_trajectory"] = traj
    if table is not None:
        summary["grid"] = table

    lines = [f"{label}: rank {model.rank}, {model.optimizer} lr {model.effective_lr:g}, "
             + (f"lambda {model.effective_lam:g}" if args.regularizer == "fixed"
                else f"granularity {model.effective_granularity}")
             + f"; best epoch {model.best_epoch_} of {len(model.history_)} ({model.stopped_}) in {seconds:.1f} s"]
    if table is not None:
        key = "valid_" + args.metric.lower()
        lines.append("grid (validation " + args.metric + "): "
                     + ", ".join(f"{row['lambda']:g}: {row[key]:.4f}" for row in table))
    lines.append(f"test ({test['n_users']} users, {test['n_targets']} positives, full ranking): AUC {test['auc']:.4f}")
    for k in ks:
        lines.append(f"  @{k:<4d} HR {test[f'hr@{k}']:.4f}  NDCG {test[f'ndcg@{k}']:.4f}  "
                     f"Recall {test[f'recall@{k}']:.4f}  Precision {test[f'precision@{k}']:.4f}")
    metric = args.metric.lower()
    for b in test.get("by_activity", []):
        lo, hi = b["count_range"]
        lines.append(f"  users with {lo}-{hi} train positives ({b['n_users']}): {metric} {b[metric]:.4f}  "
                     f"AUC {b['auc']:.4f}")
    if args.regularizer == "lambdaopt" and summary["lambda_final"]:
        lf = summary["lambda_final"]
        lines.append(f"learned Lambda: users mean {lf['user']['mean']:.4g} (p5 {lf['user']['p5']:.3g}, p95 "
                     f"{lf['user']['p95']:.3g}); items mean {lf['item']['mean']:.4g} (p5 {lf['item']['p5']:.3g}, "
                     f"p95 {lf['item']['p95']:.3g})")
    lines.append(f"evaluation {eval_seconds:.2f} s; peak memory {summary['peak_memory_mb']:.0f} MiB")
    print("\n".join(lines))

    if args.output:
        write_json(args.output, summary, args.overwrite)
        say(args, f"results written to {args.output}")
    if plot_dir is not None:
        from ..ranking.plots import plot_grid, plot_lambda, plot_validation

        plot_dir.mkdir(parents=True, exist_ok=True)
        written = [plot_validation({label: model.history_}, metric, plot_dir / PLOT_FILES[0], args.overwrite)]
        if args.regularizer == "lambdaopt" and model.lambda_trajectory_:
            written.append(plot_lambda(model.lambda_trajectory_, plot_dir / PLOT_FILES[1],
                                       title=f"{label}: Lambda per epoch", overwrite=args.overwrite))
        if table is not None:
            written.append(plot_grid(table, "valid_" + metric, plot_dir / PLOT_FILES[2], args.overwrite))
        say(args, "plots: " + ", ".join(str(p) for p in written))
    if args.save:
        say(args, f"model saved to {model.save(args.save, overwrite=args.overwrite)}")
    return 0
