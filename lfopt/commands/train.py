"""``lfopt train``: fit a latent factor model and report test accuracy.

The protocol: a held-out test part (``--test-fraction`` of the ratings at random,
the fixed split of a file that has one, or a second file given by ``--test``),
a validation part carved from the training part for early stopping
(``--valid-fraction``; the model is then refit on the whole training part for
the chosen number of epochs), and the test part scored once at the end.  The
kernels are compiled (or loaded from numba's cache) on a tiny problem first, so
that the reported training time is training only (``compile_seconds`` apart).
``--save`` keeps the data's description and the split in the model file, so
that ``lfopt evaluate --model M --data SAME-FILE`` scores the held-out part.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import time
import warnings

from ..data.split import align_test, fixed_split, random_split
from ..errors import ConfigError, DataError, DivergenceError
from ..estimators import LatentFactorModel
from ..estimators.lf import auto_candidate
from ..optim.base import make_optimizer
from ..results import model_path, peak_memory_mb, write_json
from .common import (add_backend_options, add_data_options, add_output_options, add_rating_data_options,
                     add_synthetic_options, check_output_paths, check_rating_data, fraction, load_dataset,
                     positive_float,
                     option_names, pairs_hash, parse_columns, record_options, run_info, say, say_compile, warm_up)

OPTIMIZERS = ("sgd", "adam", "als", "adago", "slf", "sslf", "gibbs")
DEFAULT_TEST_FRACTION = 0.1
DEFAULT_VALID_FRACTION = 0.1

def _lazy(value: str):
    v = value.strip().lower()
    if v not in ("on", "off", "auto"):
        raise argparse.ArgumentTypeError(f"--lazy takes on, off or auto, got {value!r}")
    return {"on": True, "off": False}.get(v, "auto")


# per-optimizer options exposed on the command line: (flag, dest, type, help)
OPTIMIZER_FLAGS = [
    ("--lr", "lr", float, "learning rate (sgd, adam, adago)"),
    ("--decay", "decay", float, "sgd: multiply lr by this after every epoch"),
    ("--batch-size", "batch_size", int, "adam/adago: entries per mini-batch (0 = full batch; default: |K|/100 within "
     "[256, 8192]); sgd: per mini-batch when it cannot run its fused per-entry epoch (torch backend, --rho)"),
    ("--lazy", "lazy", _lazy, "adam/adago mini-batches: update only the rows a batch touches (on), "
     "never (off), or when the parameters dwarf a batch (auto, the default: large data)"),
    ("--damping", "damping", float, "adago: damping a added to the GN diagonal; slf/sslf: initial LM damping"),
    ("--cg-iters", "cg_iters", int, "slf/sslf: at most this many CG iterations per step"),
    ("--cg-tol", "cg_tol", float, "slf/sslf: relative residual at which CG stops"),
    ("--rho", "rho", float, "radius of the sharpness-aware perturbation, with any optimizer but als "
     "(sslf = slf with --rho, default 0.05)"),
]


def add_model_options(p) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--optimizer", default=None, choices=("auto",) + OPTIMIZERS,
                   help="optimizer (default: auto, the model's: Bayesian averaging by Gibbs sampling where its 200 "
                   "sweeps cost at most 1e12 multiply-adds (about a minute on 2 cores), else als)")
    g.add_argument("--rank", type=int, default=None,
                   help="latent dimensions (default: the model's, 32; on the synthetic data its true rank, 5)")
    g.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: the model's, 40; 200 sweeps "
                   "for the sampler)")
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
                   help="accurate: Bayesian averaging (Gibbs sampling from a small start) on all the training data, "
                   "until --time-budget is spent (default: none)")
    g.add_argument("--keep-samples", dest="keep_samples", action="store_const", const=True, default=None,
                   help="after Gibbs sampling, keep every sample and predict with their exact average (memory and "
                   "model file S x (users + items) x rank floats) instead of its rank-r summary (the default)")
    g.add_argument("--time-budget", dest="time_budget", type=positive_float("--time-budget"), default=None,
                   metavar="SECONDS",
                   help="stop training before an epoch would end past this many seconds (default: no limit)")
    g.add_argument("--granularity", choices=("global", "D", "DU", "DI", "DUI"), default=None,
                   help="with --lambda learn: one lambda for all, per dimension, per (user|item, dimension)")
    g.add_argument("--no-bias", action="store_true", help="the plain model r = p.q (no mean and biases)")
    g.add_argument("--init-scale", type=float, default=None, help="initial factor scale (default: the model's, 0.1)")
    g.add_argument("--patience", type=int, default=None,
                   help="early-stopping patience in epochs (default: the model's, 5)")
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
        "evaluate it on a held-out test part and print a summary.  Validation for early stopping is carved from "
        "the training part (then the model is refit on all of it).  Timings exclude numba's first compilation, "
        "which is done on a tiny problem first and reported apart.",
    )
    add_data_options(p)
    add_rating_data_options(p)
    add_synthetic_options(p)
    g = p.add_argument_group("split")
    g.add_argument("--test", metavar="FILE",
                   help="a fixed test file: every rating of --data trains, this file's ratings are the test part "
                   "(read like --data; IDs matched to the training IDs, unknown ones handled by --unseen)")
    g.add_argument("--test-fraction", type=fraction("--test-fraction"), default=None, metavar="F",
                   help=f"held-out test fraction of a random split (default: {DEFAULT_TEST_FRACTION}; not with "
                   "--test or a file with its own split)")
    g.add_argument("--valid-fraction", type=fraction("--valid-fraction", allow_zero=True), default=None, metavar="F",
                   help="fraction of the training part held out for early stopping (default: "
                   f"{DEFAULT_VALID_FRACTION}; "
                   "0 trains on the whole training part with no early stopping; the sampler, the default on data "
                   "of up to a few million ratings, and --preset accurate use the whole training part and no "
                   "early stopping)")
    g.add_argument("--unseen", choices=("bias", "drop"), default="bias",
                   help="test pairs whose user or item has no training rating: predict from the mean and biases "
                   "(default) or leave them out; counted either way")
    g.add_argument("--seed", type=int, default=42, help="seed of the split, initialization and optimizer (default: 42)")
    add_model_options(p)
    add_output_options(p)
    p.add_argument("--save", metavar="MODEL.npz",
                   help="save the trained model (with the data's description and split, for 'lfopt evaluate')")
    g = p.add_argument_group("deep factorization (lfopt.DeepMF: r = mu + b_u + b_i + p_u W_1..W_L q_i)")
    g.add_argument("--depth", type=int, default=None, metavar="L",
                   help="train DeepMF with L square layers between the factors (0 is the LF model; default: the "
                   "LF model itself); optimizers adam (DeepMF's default), sgd, adago, slf, sslf")
    g.add_argument("--flatness", type=float, default=None, metavar="BETA",
                   help="with --depth: the flatness penalty BETA tr(J^T J) (trace of the Gauss-Newton matrix)")
    g.add_argument("--lambda-w", dest="lam_w", type=float, default=None,
                   help="with --depth: per-entry decay of the layers toward the identity (default 0.05)")
    p.add_argument("--distributed", action="store_true",
                   help="train on the processes torchrun starts (torch.distributed: gloo on CPUs, NCCL on GPUs): "
                   "torchrun --nproc-per-node N -m lfopt train ... --distributed; every process reads the data, "
                   "only the first prints and writes files")
    p.set_defaults(_names=option_names(p))
    return p


def optimizer_options(args) -> dict:
    """The optimizer hyper-parameters given on the command line, checked against the optimizer."""
    opts = {dest: getattr(args, dest) for _, dest, _, _ in OPTIMIZER_FLAGS if getattr(args, dest) is not None}
    if getattr(args, "precondition", None):
        opts["precondition"] = args.precondition
    name = args.optimizer or _model_default("optimizer")
    if name == "auto":  # auto runs the sampler or ALS: the options must suit one of them
        auto_candidate(opts)
    else:
        make_optimizer(name, **opts)  # validates names and values early
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


MODEL_DESTS = ("lam", "lam0", "lam_b", "lam0_b", "granularity", "preset", "time_budget", "epochs", "patience",
               "init_scale", "optimizer", "keep_samples")


def build_model(args, rank: int) -> LatentFactorModel:
    """The model the options describe; options left out take the model's defaults."""
    given = {k: getattr(args, k) for k in MODEL_DESTS if getattr(args, k, None) is not None}
    deep = {k: getattr(args, k, None) for k in ("flatness", "lam_w")}
    if getattr(args, "depth", None) is not None:
        from ..estimators.deep import DeepMF

        for flag, value in (("--distributed", getattr(args, "distributed", False)), ("--preset", args.preset),
                            ("--lambda learn", given.get("lam") == "learn"), ("--keep-samples", args.keep_samples)):
            if value:
                raise ConfigError(f"{flag} is not available with --depth (DeepMF)")
        if args.backend != "numba":
            raise ConfigError("--depth (DeepMF) runs on the numba backend only: drop --backend")
        return DeepMF(rank=rank, depth=args.depth, **given, **{k: v for k, v in deep.items() if v is not None},
                      use_bias=not args.no_bias, seed=args.seed, validation=args.valid_fraction or None,
                      verbose=not args.quiet, **optimizer_options(args))
    for flag, value in (("--flatness", deep["flatness"]), ("--lambda-w", deep["lam_w"])):
        if value is not None:
            raise ConfigError(f"{flag} applies to the deep factorization: give --depth L too")
    return LatentFactorModel(rank=rank, **given, use_bias=not args.no_bias, seed=args.seed,
                             validation=args.valid_fraction or None, verbose=not args.quiet,
                             backend=args.backend, device=args.device,
                             distributed=bool(getattr(args, "distributed", False)), **optimizer_options(args))


def _check_args(args, data) -> None:
    if args.test is not None and args.test_fraction is not None:
        raise ConfigError(f"--test-fraction {args.test_fraction:g} does not apply with --test (the test part is "
                          f"the file {args.test}); drop one of them")
    if args.test is not None and "test_mask" in data.meta:
        raise ConfigError(f"--test: {args.data} carries its own fixed train/test split; drop --test")
    if "test_mask" in data.meta and args.test_fraction is not None:
        raise ConfigError(f"--test-fraction {args.test_fraction:g}: {args.data} carries its own fixed train/test "
                          f"split ({int(data.meta['test_mask'].sum())} test ratings), which is used as it is; "
                          f"drop --test-fraction")
    tf = args.test_fraction if args.test_fraction is not None else DEFAULT_TEST_FRACTION
    if args.test is None and "test_mask" not in data.meta and args.valid_fraction and \
            args.valid_fraction >= 1 - tf:
        raise ConfigError(f"--valid-fraction {args.valid_fraction:g} is a fraction of the training part; with "
                          f"--test-fraction {tf:g} it must stay below 1")


def make_split(args, data):
    """(train, test, data_info): the split the options describe, and its description for the model file."""
    info = {"command": "train", "path": os.path.abspath(args.data) if args.data else None,
            "format": args.format, "columns": args.columns, "duplicates": args.duplicates,
            "missing": args.missing,
            "n_ratings": data.nnz, "seed": args.seed, "valid_fraction": args.valid_fraction}
    if args.data is None:
        info["synthetic"] = {k: getattr(args, k, None) for k in ("n_users", "n_items", "nnz", "noise", "true_rank")}
    if args.test is not None:
        test_data = load_test_file(args)
        train, test = align_test(data, test_data)
        info.update(split="test_file", test_path=os.path.abspath(args.test))
    elif "test_mask" in data.meta:
        train, test = fixed_split(data)
        info.update(split="fixed")
    else:
        tf = args.test_fraction if args.test_fraction is not None else DEFAULT_TEST_FRACTION
        train, test = random_split(data, tf, args.seed)
        info.update(split="random", test_fraction=tf)
    info.update(n_test=test.nnz, test_hash=pairs_hash(test))
    return train, test, info


def load_test_file(args):
    from ..data.io import load

    test = load(args.test, args.format, columns=parse_columns(args.columns), duplicates=args.duplicates,
                missing=args.missing)
    if "test_mask" in test.meta:
        raise ConfigError(f"--test {args.test} carries its own train/test split (a Monti file); give it as --data")
    return test


def run(args) -> int:
    valid_given = args.valid_fraction is not None
    if not valid_given:
        args.valid_fraction = DEFAULT_VALID_FRACTION
    comm = None
    if getattr(args, "distributed", False):
        from ..dist import init

        comm = init("nccl" if args.device and str(args.device).startswith("cuda") else "gloo")
        if comm.rank != 0:  # one voice: the other processes compute and stay quiet
            args.quiet = True
    lead = comm is None or comm.rank == 0
    check_output_paths([("--output", args.output), ("--save", args.save and model_path(args.save))],
                       args.overwrite)
    data = load_dataset(args)
    _check_args(args, data)
    check_rating_data(data, args)
    model_rank = args.rank if args.rank is not None else (data.meta.get("true_rank") or _model_default("rank"))
    model = build_model(args, model_rank)
    say(args, f"data: {data!r}")
    train, test, info = make_split(args, data)
    if args.test is not None:
        say(args, f"test file {args.test}: {test.nnz} ratings, {test.meta['n_unseen_pairs']} with a user or item "
                  f"absent from --data")
    if valid_given and args.valid_fraction and isinstance(model, LatentFactorModel) and \
            model._resolve_optimizer(train) == "gibbs":
        warnings.warn(f"--valid-fraction {args.valid_fraction:g} is not used: the sampler trains on the whole training "
                      f"part (its hyper-priors set the regularization, nothing stops early); give --optimizer als "
                      f"(or another optimizer) to stop early on a held-out part", UserWarning, stacklevel=1)
    compile_seconds = warm_up(model)
    say_compile(args, compile_seconds)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        model.fit(train)
        seconds = time.perf_counter() - t0
    res = model.train_result_
    diverged = res.stopped == "diverged" or getattr(model, "stopped_", None) == "diverged"
    message = res.message or next((str(w.message) for w in caught if "diverged" in str(w.message)), "")
    for w in caught:  # re-issue what fit warned about, except the divergence the error below reports
        if not (diverged and "diverged" in str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if diverged:
        refit = res.stopped != "diverged"
        raise DivergenceError((message or "training diverged").rstrip(". ")
                              + (" (in the refit on the whole training part)" if refit else "")
                              + ". No result reported.")
    scores = model.evaluate(test, unseen=args.unseen)
    n_unseen = int(scores.get("n_unseen", 0))
    n_dropped = int(scores.get("n_dropped", n_unseen if args.unseen == "drop" else 0))
    n_scored = test.nnz - n_dropped
    if n_scored <= 0:
        raise DataError(f"all {test.nnz} test ratings have a user or item with no training rating; with --unseen "
                        f"drop nothing is left to score (use --unseen bias)")
    if not math.isfinite(scores["rmse"]):
        raise DivergenceError(f"the test RMSE is not a number ({scores['rmse']}): the model's predictions are not "
                              f"finite; no result reported")
    epochs_run = len(res.history)
    epoch_total = float(sum(r.get("epoch_seconds", 0.0) for r in res.history))
    per_epoch = epoch_total / max(1, epochs_run)
    synthetic_sizes = {}
    if args.data is None:
        synthetic_sizes = {"n_users": data.n_users, "n_items": data.n_items, "nnz": data.nnz,
                           "noise": data.meta.get("noise_floor"), "true_rank": data.meta.get("true_rank")}
    summary = {
        **run_info(args),
        "data": args.data or "synthetic",
        "n_users": data.n_users, "n_items": data.n_items, "n_ratings": data.nnz,
        "split": info["split"],
        "n_train": model.n_train_, "n_valid": model.n_valid_, "n_test": test.nnz, "n_test_scored": n_scored,
        "test_rmse": scores["rmse"], "test_mae": scores["mae"], "n_test_unseen": n_unseen,
        "epochs": epochs_run, "best_epoch": res.best_epoch or epochs_run, "stopped": res.stopped,
        "train_seconds": seconds, "seconds_per_epoch": per_epoch, "epoch_seconds_total": epoch_total,
        "compile_seconds": compile_seconds,
        "peak_memory_mb": peak_memory_mb(),
        "options": record_options(args, {
            "rank": model_rank, "optimizer": model.optimizer_.name,
            **{k: getattr(model, k, None) for k in MODEL_DESTS if k != "optimizer"},
            "test_fraction": info.get("test_fraction"), **synthetic_sizes,
            **({"depth": model.depth, "flatness": model.flatness, "lam_w": model.lam_w}
               if getattr(args, "depth", None) is not None else {})}),
        "optimizer_options": {k: v for k, v in (model.optimizer_.options() if hasattr(model.optimizer_, "options")
                                                else {}).items() if k != "seed"},  # the seed is an option
        "history": res.history,
    }
    if getattr(model, "rank_", model_rank) != model_rank:
        summary["rank_fitted"] = model.rank_
    if comm is not None:
        summary["distributed"] = {"processes": comm.world, "backend": comm.backend}
    if "noise_floor" in data.meta:
        summary["noise_floor"] = data.meta["noise_floor"]
        summary["rmse_over_floor"] = scores["rmse"] / data.meta["noise_floor"]
    if res.message:
        summary["message"] = res.message
    if getattr(model, "n_samples_", 0) or model.optimizer_.name == "gibbs":
        fitted = getattr(model, "rank_", model_rank)
        capped = f" (capped from {model_rank} at the mean ratings per row)" if fitted != model_rank else ""
        how = "preset accurate" if model.preset == "accurate" else ("auto" if model.optimizer == "auto" else "")
        kept = ("" if getattr(model, "posterior_", None) is not None or not model.n_samples_
                else f", their rank-{fitted} summary")
        head = (f"optimizer gibbs ({how + ', ' if how else ''}{model.n_samples_} samples averaged{kept}), "
                f"rank {fitted}{capped}: ")
    else:
        head = (f"optimizer {model.optimizer_.name}, rank {model_rank}, lambda {model.lam} (+ {model.lam0} "
                f"per row): ")
        if getattr(args, "depth", None) is not None:
            head = f"DeepMF depth {model.depth} (flatness {model.flatness:g}), " + head
    unseen_text = ""
    if n_unseen:
        unseen_text = (f" ({n_dropped} with a user or item unseen in training left out)" if args.unseen == "drop"
                       else f" ({n_unseen} with unseen user/item, predicted from biases)")
    lines = [
        head + f"{epochs_run} epochs ({res.stopped}), {per_epoch:.3f} s per epoch; fit {seconds:.2f} s in all "
        f"(data preparation{', refit' if model.n_valid_ else ''} and validation included; compilation "
        f"{compile_seconds:.2f} s apart)",
        f"test RMSE {scores['rmse']:.4f}  MAE {scores['mae']:.4f}  on {n_scored} ratings{unseen_text}",
    ]
    if "noise_floor" in summary:
        lines.append(f"noise floor {summary['noise_floor']:.4f}: RMSE is {summary['rmse_over_floor']:.3f} x the floor")
    lines.append(f"peak memory {summary['peak_memory_mb']:.0f} MiB" + (" (this process)" if comm else ""))
    if comm is not None:
        lines.append(f"distributed: {comm.world} processes ({comm.backend})")
    if not lead:  # only the first process reports and writes
        return 0
    print("\n".join(lines))
    if args.output:
        write_json(args.output, summary, args.overwrite)
        say(args, f"results written to {args.output}")
    if args.save:
        model.data_info_ = info
        path = model.save(args.save, overwrite=args.overwrite)
        say(args, f"model saved to {path}")
    return 0
