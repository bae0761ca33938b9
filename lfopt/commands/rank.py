"""``lfopt rank``: ranking models on implicit feedback.

``--model bpr`` (default): BPR-MF with a fixed (grid-searched) or learned (lambdaOpt)
regularization; ``--model ials``: implicit-feedback ALS (Hu, Koren, Volinsky 2008);
``--model pop``: items by training popularity (the baseline every model must beat).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, DivergenceError
from ..eval.ranking import merged_csr, parse_metric
from ..results import check_writable, peak_memory_mb, write_json
from ..ranking.data import implicit_split
from ..estimators.bpr import BPRMF, OPTIMIZERS, REGULARIZERS
from ..estimators.ials import LAM_SCALINGS, SOLVERS, VALUE_TRANSFORMS, ImplicitALS, PopularityRanker
from ..regularizers.lambda_opt import GRANULARITIES
from ..ranking.search import grid_search
from .common import add_backend_options, add_data_options, add_output_options, load_dataset, say

PLOT_FILES = ("rank_validation.png", "rank_lambda.png", "rank_grid.png")
MODELS = ("bpr", "ials", "pop")

#: options that only one model takes: dest -> (flag, models that take it).  They default to
#: None so that giving one with another model is detected and refused, naming the flag.
MODEL_OPTIONS = {
    "optimizer": ("--optimizer", ("bpr",)),
    "lr": ("--lr", ("bpr",)),
    "batch_size": ("--batch-size", ("bpr",)),
    "item_bias": ("--item-bias", ("bpr",)),
    "lam_bias": ("--lambda-bias", ("bpr",)),
    "init_scale": ("--init-scale", ("bpr",)),
    "regularizer": ("--regularizer", ("bpr",)),
    "granularity": ("--granularity", ("bpr",)),
    "lam_lr": ("--lambda-lr", ("bpr",)),
    "valid_batch_size": ("--valid-batch-size", ("bpr",)),
    "lambda_holdout": ("--lambda-holdout", ("bpr",)),
    "grid": ("--grid", ("bpr",)),
    "device": ("--device", ("bpr",)),
    "alpha": ("--alpha", ("ials",)),
    "solver": ("--solver", ("ials",)),
    "cg_steps": ("--cg-steps", ("ials",)),
    "lam_scaling": ("--lambda-scaling", ("ials",)),
    "value_transform": ("--value-transform", ("ials",)),
    "rank": ("--rank", ("bpr", "ials")),
    "epochs": ("--epochs", ("bpr", "ials")),
    "patience": ("--patience", ("bpr", "ials")),
    "lam": ("--lambda", ("bpr", "ials")),
}
#: the Python parameter names of the models, as the CLI spells them (for error messages)
FLAG_NAMES = {"rank": "--rank", "lam": "--lambda", "alpha": "--alpha", "cg_steps": "--cg-steps", "epochs": "--epochs",
              "patience": "--patience", "lr": "--lr", "batch_size": "--batch-size", "lam_lr": "--lambda-lr",
              "lam_bias": "--lambda-bias", "init_scale": "--init-scale", "valid_batch_size": "--valid-batch-size",
              "lambda_holdout": "--lambda-holdout", "solver": "--solver", "lam_scaling": "--lambda-scaling",
              "value_transform": "--value-transform"}
BPR_DEFAULTS = dict(rank=64, optimizer="adam", batch_size=1024, epochs=100, patience=10, item_bias=False,
                    lam_bias=0.0, init_scale=0.1, regularizer="lambdaopt", granularity="DUI", lam_lr=1e-3,
                    lambda_holdout=0.0)
IALS_DEFAULTS = {k: v for k, v in ImplicitALS().get_params().items()
                 if k in ("rank", "epochs", "patience", "alpha", "lam", "solver", "cg_steps", "lam_scaling",
                          "value_transform")}


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
        help="rank implicit feedback: BPR-MF with learned regularization (lambdaOpt), implicit ALS or popularity",
        description="Build implicit positives (all entries, or values >= --threshold), keep the k-core, split "
        "every user's positives 60/20/20 into train/validation/test (by time when the data has timestamps, "
        "else at random), train a model and report full-ranking test metrics (AUC, HR/NDCG/Recall/Precision@K "
        "against every non-interacted item).  Models (--model): bpr (default), BPR-MF with a fixed lambda "
        "(optionally grid-searched on validation: MF-lambdaFix) or lambdaOpt's Lambda learned on validation; "
        "ials, implicit-feedback ALS (Hu, Koren, Volinsky 2008; CG or Cholesky row solves); pop, items by "
        "training popularity.  Timings exclude numba's first compilation (reported apart).",
    )
    p.add_argument("--model", choices=MODELS, default="bpr",
                   help="bpr (BPR-MF, default), ials (implicit ALS) or pop (popularity baseline)")
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
    g.add_argument("--keep-values", action="store_true",
                   help="keep the positives' values (e.g. play counts) as ials strengths instead of 1 (with "
                   "--value-transform log for heavy-tailed counts)")
    g = p.add_argument_group("model and training (bpr and ials)")
    g.add_argument("--rank", type=int, default=None, help="latent dimensions (default: 64)")
    g.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs (default: 100 for bpr, 15 ALS iterations for ials)")
    g.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better validation metric (default: 10 for bpr, "
                   "none for ials; 0 = never); the best epoch is kept either way")
    g.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="bpr fixed: the lambda (default 0.01); bpr lambdaopt: the initial Lambda (default 0); "
                   "ials: the L2 weight, per unit of a row's confidence with --lambda-scaling frequency "
                   "(default 0.02)")
    g = p.add_argument_group("bpr")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="adam (lazy, row-wise) or sgd (default: adam)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.005 adam, 0.05 sgd)")
    g.add_argument("--batch-size", type=int, default=None, help="training triples per step (default: 1024)")
    g.add_argument("--item-bias", action="store_true", default=None, help="add a learned item bias b_i to the score")
    g.add_argument("--lambda-bias", dest="lam_bias", type=float, default=None,
                   help="L2 of the item biases (default: 0)")
    g.add_argument("--init-scale", type=float, default=None, help="factors start ~ N(0, s^2) (default: 0.1)")
    g.add_argument("--regularizer", choices=REGULARIZERS, default=None,
                   help="fixed lambda (MF-lambdaFix) or lambdaopt (learned on validation; default)")
    g.add_argument("--granularity", default=None, metavar="|".join(GRANULARITIES),
                   help="lambdaOpt's granularity: global, D (per dimension), DU (per user and dimension), "
                   "DI (per item and dimension) or DUI (both; default)")
    g.add_argument("--lambda-lr", dest="lam_lr", type=float, default=None,
                   help="lambdaopt: learning rate of Lambda's Adam (default: 0.001)")
    g.add_argument("--valid-batch-size", type=int, default=None,
                   help="lambdaopt: validation triples per Lambda step (default: --batch-size)")
    g.add_argument("--lambda-holdout", dest="lambda_holdout", type=float, default=None,
                   help="lambdaopt: fraction of each user's validation positives kept out of the Lambda steps "
                   "and used only for early stopping (default: 0, as in the paper)")
    g.add_argument("--grid", metavar="L1,L2,...",
                   help="fixed: grid-search these lambdas and keep the best on validation (MF-lambdaFix)")
    g = p.add_argument_group("ials")
    g.add_argument("--alpha", type=float, default=None,
                   help="confidence of an interaction, c = 1 + alpha (0/1 positives; default: 10)")
    g.add_argument("--solver", choices=SOLVERS, default=None,
                   help="row solver: cg (a few conjugate-gradient steps, default) or cholesky (exact)")
    g.add_argument("--cg-steps", type=int, default=None, help="CG steps per row and iteration (default: 3)")
    g.add_argument("--lambda-scaling", dest="lam_scaling", choices=LAM_SCALINGS, default=None,
                   help="frequency (default: a row's L2 weight is --lambda times its total confidence, so the "
                   "same --lambda suits data of any size) or none (the convention of Hu et al. and of the "
                   "implicit library: --lambda itself)")
    g.add_argument("--value-transform", dest="value_transform", choices=VALUE_TRANSFORMS, default=None,
                   help="linear (default: c = 1 + alpha r / mean r) or log (r -> log(1 + r) first): with "
                   "--keep-values")
    g = p.add_argument_group("evaluation")
    g.add_argument("--metric", default="ndcg@50",
                   help="validation metric for early stopping and --grid (default: ndcg@50)")
    g.add_argument("--ks", default="10,20,50", help="cut-offs K of the reported metrics (default: 10,20,50)")
    g.add_argument("--buckets", type=int, default=4,
                   help="user activity buckets (quantiles of training positives) in the report (default: 4)")
    add_backend_options(p)
    p.set_defaults(backend=None)  # None: not given (numba); only bpr has a torch backend
    add_output_options(p)
    p.add_argument("--plots", metavar="DIR", help=f"write PNG plots into this folder ({', '.join(PLOT_FILES)})")
    p.add_argument("--save", metavar="MODEL.npz", help="save the trained model")
    return p


def _check_model_options(args) -> None:
    """Refuse an option of another model, naming the flag."""
    for dest, (flag, models) in MODEL_OPTIONS.items():
        if args.model not in models and getattr(args, dest, None) is not None:
            takers = " and ".join(f"--model {m}" for m in models)
            raise ConfigError(f"{flag} applies to {takers} only, not to --model {args.model}")
    if args.model != "bpr" and args.backend not in (None, "numba"):
        raise ConfigError(f"--backend {args.backend} applies to --model bpr only (--model {args.model} runs on numba)")


def _check_args(args):
    _check_model_options(args)
    if args.k_core < 1:
        raise ConfigError(f"--k-core must be at least 1, got {args.k_core}")
    if args.buckets < 1:
        raise ConfigError(f"--buckets must be at least 1, got {args.buckets}")
    fractions = _floats(args.split, "--split")
    if len(fractions) != 3 or any(not x > 0 for x in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"--split: expected three positive fractions summing to 1, got {args.split!r}")
    ks = _floats(args.ks, "--ks")
    if any(k != int(k) or k < 1 for k in ks):
        raise ConfigError(f"--ks: expected positive integers, got {args.ks!r}")
    _, metric_k = parse_metric(args.metric)
    ks = sorted({int(k) for k in ks} | ({metric_k} if metric_k else set()))
    grid = None
    if args.grid:
        if (args.regularizer or BPR_DEFAULTS["regularizer"]) != "fixed":
            raise ConfigError("--grid searches a fixed lambda: use it with --regularizer fixed")
        grid = _floats(args.grid, "--grid")
    if args.save and not str(args.save).endswith(".npz"):
        raise ConfigError(f"--save: the model file name must end in .npz, got {args.save!r}")
    return fractions, ks, grid


def _given(args, dest, defaults):
    value = getattr(args, dest, None)
    return defaults.get(dest) if value is None else value


def _model_params(args, ks) -> dict:
    """The estimator's parameters from the options (each model's defaults for options not given)."""
    if args.model == "pop":
        return {}
    if args.model == "ials":
        d = IALS_DEFAULTS
        patience = _given(args, "patience", d)
        return dict(rank=_given(args, "rank", d), alpha=_given(args, "alpha", d), lam=_given(args, "lam", d),
                    lam_scaling=_given(args, "lam_scaling", d), epochs=_given(args, "epochs", d),
                    solver=_given(args, "solver", d), cg_steps=_given(args, "cg_steps", d),
                    value_transform=_given(args, "value_transform", d), patience=patience or None,
                    metric=args.metric, ks=ks, seed=args.seed, verbose=not args.quiet)
    d = BPR_DEFAULTS
    regularizer = _given(args, "regularizer", d)
    learn = regularizer == "lambdaopt"
    return dict(rank=_given(args, "rank", d), optimizer=_given(args, "optimizer", d), lr=args.lr,
                batch_size=_given(args, "batch_size", d), epochs=_given(args, "epochs", d), regularizer=regularizer,
                granularity=_given(args, "granularity", d) if learn else "global", lam=args.lam,
                lam_lr=_given(args, "lam_lr", d), lambda_holdout=_given(args, "lambda_holdout", d),
                lam_bias=_given(args, "lam_bias", d), item_bias=bool(_given(args, "item_bias", d)),
                init_scale=_given(args, "init_scale", d), valid_batch_size=args.valid_batch_size,
                patience=_given(args, "patience", d) or None, metric=args.metric, ks=ks, seed=args.seed,
                verbose=not args.quiet, backend=args.backend or "numba", device=args.device)


def _make_model(model: str, params: dict):
    """The estimator; a ConfigError about a parameter names its CLI flag (``--lambda``, not ``lam``)."""
    cls = {"bpr": BPRMF, "ials": ImplicitALS, "pop": PopularityRanker}[model]
    try:
        return cls(**params)
    except ConfigError as exc:
        text = str(exc)
        for name, flag in FLAG_NAMES.items():
            if text.startswith(name + " "):
                raise ConfigError(flag + text[len(name):]) from None
        raise


def _warm_up(model: str, params: dict, ks) -> float:
    """Fit and evaluate the same model on a tiny problem so that numba compiles (or loads from its
    cache) every kernel before the timed run; returns the seconds that took."""
    if params.get("backend", "numba") != "numba":
        return 0.0
    from ..data.interactions import Interactions
    from ..ranking.data import ImplicitSplit

    t0 = time.perf_counter()
    m, n = 12, 10

    def part(k):
        u = np.repeat(np.arange(m), k)
        i = (np.tile(np.arange(k), m) + 3 * u) % n
        return Interactions(u, i, np.ones(len(u), np.float32), n_users=m, n_items=n)

    train = part(3)
    valid = Interactions(np.arange(m), (np.arange(m) * 3 + 3) % n, np.ones(m, np.float32), n_users=m, n_items=n)
    test = Interactions(np.arange(m), (np.arange(m) * 3 + 4) % n, np.ones(m, np.float32), n_users=m, n_items=n)
    tiny = ImplicitSplit(train, valid, test, {})
    small = dict(params)
    if model != "pop":
        small.update(epochs=1, verbose=False, rank=int(params["rank"]))
    if model == "bpr":
        small.update(batch_size=8, valid_batch_size=None)
    warm = _make_model(model, small).fit(tiny)
    warm.evaluate(tiny.test, ks=ks)
    return time.perf_counter() - t0


def _users_owning_everything(split) -> int:
    """Test users whose train + validation + test positives cover every item (nothing to rank against)."""
    ptr, _ = merged_csr([split.train, split.valid, split.test], split.n_users, split.n_items)
    has_test = np.diff(split.test.csr.indptr) > 0
    return int(((np.diff(ptr) >= split.n_items) & has_test).sum())


def _label(args, model) -> str:
    if args.model == "pop":
        return "popularity"
    if args.model == "ials":
        return f"iALS-{model.solver}"
    return ("lambdaOpt-" + model.effective_granularity) if model.regularizer == "lambdaopt" else "MF-lambdaFix"


def _headline(args, model, seconds, label) -> str:
    if args.model == "pop":
        return f"{label}: items ranked by training count, fitted in {seconds:.2f} s"
    epochs = len(model.history_)
    if args.model == "ials":
        what = (f"{label}: rank {model.rank}, alpha {model.alpha:g}, lambda {model.lam:g} ({model.lam_scaling})"
                + (f", {model.cg_steps} CG steps" if model.solver == "cg" else ""))
    else:
        what = (f"{label}: rank {model.rank}, {model.optimizer} lr {model.effective_lr:g}, "
                + (f"lambda {model.effective_lam:g}" if model.regularizer == "fixed"
                   else f"granularity {model.effective_granularity}"))
    return what + f"; best epoch {model.best_epoch_} of {epochs} ({model.stopped_}) in {seconds:.1f} s"


def run(args) -> int:
    fractions, ks, grid = _check_args(args)
    params = _model_params(args, ks)
    _make_model(args.model, params)  # validate every option before loading data
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
                           seed=args.seed, keep_values=args.keep_values)
    say(args, f"implicit: {split!r}; split {'by time' if split.info['by_time'] else 'random'}"
              + ("" if threshold is None else f", positives = values >= {threshold:g}"))
    owners = _users_owning_everything(split)
    n_test_users = int((np.diff(split.test.csr.indptr) > 0).sum())
    if owners and owners == n_test_users:
        raise DataError(f"every test user ({owners}) interacted with every one of the {split.n_items} items: there "
                        f"is nothing left to rank against; use data with more items (or a lower --k-core)")

    compile_seconds = _warm_up(args.model, params, ks)
    if compile_seconds > 0.5:
        say(args, f"numba kernels compiled or loaded in {compile_seconds:.1f} s (not counted in the timings)")

    t0 = time.perf_counter()
    table = None
    if grid is not None:
        params.pop("lam")
        verbose = params.pop("verbose")
        model, table = grid_search(split, grid, verbose=verbose, **params)
    else:
        model = _make_model(args.model, params).fit(split)
    seconds = time.perf_counter() - t0
    if model.stopped_ == "diverged":
        raise DivergenceError(model.train_result_.message)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        if owners:  # their AUC is undefined (no negatives): said below, not warned about by numpy
            warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        test = model.evaluate(split.test, ks=ks, n_buckets=args.buckets)
    eval_seconds = time.perf_counter() - t1

    label = _label(args, model)
    history = getattr(model, "history_", [])
    summary = {
        "data": args.data or "synthetic", "model": label, "model_kind": args.model, "split": split.info,
        "test": test, "best_epoch": model.best_epoch_, "epochs": len(history), "stopped": model.stopped_,
        "best_valid": model.best_valid_, "valid_metric": args.metric,
        "lambda": (model.effective_lam if args.model == "bpr" and model.regularizer == "fixed"
                   else model.lam if args.model == "ials" else None),
        "train_seconds": seconds, "eval_seconds": eval_seconds, "compile_seconds": compile_seconds,
        "seconds_per_epoch": (sum(h["epoch_seconds"] for h in history) / len(history)) if history else None,
        "users_owning_every_item": owners,
        "peak_memory_mb": peak_memory_mb(),
        "options": {k: v for k, v in vars(args).items() if not k.startswith("_")}
        | {"model_params": model.get_params()},
        "history": history,
    }
    lambdaopt = args.model == "bpr" and model.regularizer == "lambdaopt"
    if lambdaopt:
        traj = model.lambda_trajectory_
        summary["lambda_final"] = traj[model.best_epoch_ - 1] if traj else None
        summary["lambda_trajectory"] = traj
    if table is not None:
        summary["grid"] = table

    lines = [_headline(args, model, seconds, label)]
    if history:
        lines[0] += f" ({summary['seconds_per_epoch']:.3f} s per epoch)"
    if table is not None:
        key = "valid_" + args.metric.lower()
        lines.append("grid (validation " + args.metric + "): "
                     + ", ".join(f"{row['lambda']:g}: {row[key]:.4f}" for row in table))
    auc = test.get("auc", math.nan)
    auc_text = f"AUC {auc:.4f}" if math.isfinite(auc) else "AUC undefined"
    lines.append(f"test ({test['n_users']} users, {test['n_targets']} positives, full ranking): {auc_text}")
    if owners:
        lines.append(f"  note: {owners} test user(s) interacted with every item, so no item is left to rank "
                     f"against: they count in HR/NDCG/Recall/Precision, not in AUC")
    for k in ks:
        lines.append(f"  @{k:<4d} HR {test[f'hr@{k}']:.4f}  NDCG {test[f'ndcg@{k}']:.4f}  "
                     f"Recall {test[f'recall@{k}']:.4f}  Precision {test[f'precision@{k}']:.4f}")
    metric = args.metric.lower()
    for b in test.get("by_activity", []):
        lo, hi = b["count_range"]
        b_auc = f"AUC {b['auc']:.4f}" if math.isfinite(b["auc"]) else "AUC undefined"
        lines.append(f"  users with {lo}-{hi} train positives ({b['n_users']}): {metric} {b[metric]:.4f}  {b_auc}")
    if lambdaopt and summary["lambda_final"]:
        lf = summary["lambda_final"]
        lines.append(f"learned Lambda: users mean {lf['user']['mean']:.4g} (p5 {lf['user']['p5']:.3g}, p95 "
                     f"{lf['user']['p95']:.3g}); items mean {lf['item']['mean']:.4g} (p5 {lf['item']['p5']:.3g}, "
                     f"p95 {lf['item']['p95']:.3g})")
    lines.append(f"evaluation {eval_seconds:.2f} s; numba compilation {compile_seconds:.2f} s (excluded); "
                 f"peak memory {summary['peak_memory_mb']:.0f} MiB")
    print("\n".join(lines))

    if args.output:
        write_json(args.output, summary, args.overwrite)
        say(args, f"results written to {args.output}")
    if plot_dir is not None:
        from ..ranking.plots import plot_grid, plot_lambda, plot_validation

        plot_dir.mkdir(parents=True, exist_ok=True)
        written = []
        if history:
            written.append(plot_validation({label: history}, metric, plot_dir / PLOT_FILES[0], args.overwrite))
        if lambdaopt and model.lambda_trajectory_:
            written.append(plot_lambda(model.lambda_trajectory_, plot_dir / PLOT_FILES[1],
                                       title=f"{label}: Lambda per epoch", overwrite=args.overwrite))
        if table is not None:
            written.append(plot_grid(table, "valid_" + metric, plot_dir / PLOT_FILES[2], args.overwrite))
        say(args, "plots: " + (", ".join(str(p) for p in written) or "none (this model has no epochs)"))
    if args.save:
        say(args, f"model saved to {model.save(args.save, overwrite=args.overwrite)}")
    return 0
