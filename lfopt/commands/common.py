"""Options and steps shared by several subcommands.

Besides the option groups, this module holds what every command does the same way:

* :func:`warm_up`: numba compiles (or loads from its cache) the kernels on a tiny
  problem before anything is timed, so that no reported time includes compilation;
* :func:`count_data_problem`: play counts and other counts are not ratings;
* :data:`PARAM_FLAGS` / :func:`to_flags`: error messages of the library name Python
  parameters (``lam``); the CLI shows them with its flags (``--lambda``);
* :func:`run_info`, :func:`record_options`: what every results JSON starts with;
* :func:`check_output_paths`: every output checked before a long job starts;
* :func:`pairs_hash`: a fingerprint of a held-out part, so that a saved model can
  tell whether a split recreated later is the one it was trained with.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import logging
import math
import re
import shlex
import sys
import time
import warnings

import numpy as np

from ..data.io import FORMATS, load
from ..data.split import fixed_split, random_split
from ..data.synthetic import synthetic
from ..errors import ConfigError

logger = logging.getLogger("lfopt")


# ============================================================== option groups
def add_data_options(p: argparse.ArgumentParser, default_synthetic: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH",
                   help="ratings file" + (" (default: the built-in synthetic dataset)" if default_synthetic else ""),
                   required=not default_synthetic)
    g.add_argument("--format", choices=FORMATS, help="file format (default: guessed from the file name)")
    g.add_argument("--columns", metavar="MAP",
                   help="column mapping for csv/parquet/tsv, e.g. 'user=userId,item=movieId,rating=stars'")
    g.add_argument("--duplicates", choices=("error", "mean", "last"), default="error",
                   help="repeated (user, item) pairs: fail (default), average them, or keep the last")
    g.add_argument("--missing", type=float, default=None, metavar="VALUE",
                   help="--format matrix (a dense matrix, one line per user, one value per item): the value of a "
                   "missing cell, e.g. -1 for WS-Dream QoS matrices (default: 0; NaN and empty fields always)")


def add_model_option(p: argparse.ArgumentParser) -> None:
    """``--model``: the saved model a command reads (evaluate, predict, recommend)."""
    p.add_argument("--model", required=True, metavar="MODEL.npz",
                   help="a model saved by 'lfopt train --save' or 'lfopt rank --save'")


def table_text(columns: dict, output=None) -> str:
    """``columns`` (name -> values) as text with a header line, by pandas' C writer: comma-separated
    when ``output`` ends with .csv, else tab-separated; floats to 6 significant digits, NaN empty."""
    import pandas as pd

    sep = "," if output and str(output).lower().endswith(".csv") else "\t"
    return pd.DataFrame(columns).to_csv(sep=sep, index=False, float_format="%.6g", na_rep="", lineterminator="\n")


def add_rating_data_options(p: argparse.ArgumentParser) -> None:
    """Options of commands that train a rating model (train, compare)."""
    p.add_argument("--force-rating", action="store_true",
                   help="train a rating model even when the values look like counts (plays, clicks), which "
                   "belong to 'lfopt rank'")


def add_synthetic_options(p: argparse.ArgumentParser) -> None:
    """The size and noise of the built-in synthetic dataset (without --data)."""
    g = p.add_argument_group("synthetic data (without --data)")
    g.add_argument("--n-users", type=_positive_int("--n-users"), default=None, metavar="N",
                   help="users (default: 3000)")
    g.add_argument("--n-items", type=_positive_int("--n-items"), default=None, metavar="N",
                   help="items (default: 2000)")
    g.add_argument("--nnz", type=_positive_int("--nnz"), default=None, metavar="N",
                   help="ratings (default: 500000, or a quarter of the cells when --n-users/--n-items are given, "
                   "at most 500000)")
    g.add_argument("--noise", type=_nonneg_float("--noise"), default=None, metavar="STD",
                   help="standard deviation of the Gaussian noise, the RMSE a perfect model gets (default: 0.5)")
    g.add_argument("--true-rank", type=_positive_int("--true-rank"), default=None, metavar="K",
                   help="rank of the generating low-rank part (default: 5)")


SYNTHETIC_OPTIONS = {"n_users": ("--n-users", "n_users"), "n_items": ("--n-items", "n_items"),
                     "nnz": ("--nnz", "nnz"), "noise": ("--noise", "noise_std"), "true_rank": ("--true-rank", "rank")}


def add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output", metavar="JSON", help="write results (metrics, options, history) to this JSON file")
    g.add_argument("--overwrite", action="store_true", help="allow replacing existing output/model files")
    g.add_argument("--quiet", "-q", action="store_true",
                   help="no progress or information output (the result summary, warnings and errors still show)")
    add_progress_option(g)


def add_progress_option(g) -> None:
    g.add_argument("--progress", choices=("auto", "bar", "lines"), default="auto",
                   help="training progress: a bar with ETA, one line per epoch in labelled columns, or auto (a bar "
                   "when stderr is a terminal, else lines; default)")


def add_backend_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    g.add_argument("--backend", choices=("numba", "torch"), default="numba",
                   help="numba (CPU kernels, default) or torch (needs PyTorch: pip install \"lfopt[torch]\")")
    g.add_argument("--device", default=None, help="torch backend: cpu (default), cuda or cuda:N")


# ======================================================== argument checkers
def fraction(flag: str, allow_zero: bool = False):
    """An argparse type: a number strictly between 0 and 1 (or exactly 0 with ``allow_zero``),
    refusing NaN, negatives and 1 with a message naming ``flag``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if allow_zero and value == 0:
            return 0.0
        if not (0.0 < value < 1.0):  # NaN fails this too
            zero = " (or 0 for none)" if allow_zero else ""
            raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1{zero}, got {text!r}")
        return value

    return parse


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
        return value

    return parse


def _nonneg_float(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and value >= 0):
            raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
        return value

    return parse


def positive_float(flag: str):
    """An argparse type: a finite number > 0 (e.g. seconds)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
        return value

    return parse


def parse_columns(text: str | None):
    if not text:
        return None
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise ConfigError(f"--columns: expected FIELD=COLUMN pairs separated by commas, got {part!r}")
        key, col = (s.strip() for s in part.split("=", 1))
        out[key] = int(col) if col.isdigit() else col
    return out


# ====================================================================== data
def load_dataset(args, **synthetic_kwargs):
    """The dataset named by --data, or the synthetic default (sized by --n-users, --n-items,
    --nnz, --noise, --true-rank when the command has them)."""
    given = {flag: getattr(args, dest) for dest, (flag, _) in SYNTHETIC_OPTIONS.items()
             if getattr(args, dest, None) is not None}
    if args.data is None:
        for dest, (_, kw) in SYNTHETIC_OPTIONS.items():
            if getattr(args, dest, None) is not None:
                synthetic_kwargs[kw] = getattr(args, dest)
        n_users = synthetic_kwargs.get("n_users", 3000)
        n_items = synthetic_kwargs.get("n_items", 2000)
        cells = n_users * n_items
        nnz = synthetic_kwargs.get("nnz", 500_000 if not ({"n_users", "n_items"} & set(synthetic_kwargs))
                                   else max(min(500_000, cells // 4), max(n_users, n_items)))
        if nnz > cells // 2:
            raise ConfigError(f"--nnz {nnz} is more than half of the {n_users} x {n_items} = {cells} cells of the "
                              f"synthetic matrix (--n-users x --n-items); give at most {cells // 2}")
        if nnz < max(n_users, n_items):
            raise ConfigError(f"--nnz {nnz} is below max(--n-users, --n-items) = {max(n_users, n_items)}: every "
                              f"user and item of the synthetic data gets at least one rating")
        synthetic_kwargs["nnz"] = nnz
        return synthetic(seed=getattr(args, "seed", 0), **synthetic_kwargs)
    if given:
        raise ConfigError(f"{', '.join(given)} {'describes' if len(given) == 1 else 'describe'} the synthetic "
                          f"dataset; {'it does' if len(given) == 1 else 'they do'} not apply with --data")
    return load(args.data, args.format, columns=parse_columns(args.columns), duplicates=args.duplicates,
                missing=args.missing)


def split_dataset(data, test_fraction: float, seed: int):
    """A fixed split when the data carries one (e.g. Douban's), else a random one."""
    if "test_mask" in data.meta:
        return fixed_split(data)
    return random_split(data, test_fraction, seed)


def dataset_label(args, data=None) -> str:
    """A short name of the data for titles: the synthetic data, or the file's folder/name."""
    from pathlib import Path

    if getattr(args, "data", None) is None:
        if data is not None:
            return f"synthetic ({data.n_users} x {data.n_items}, {data.nnz:,} ratings)"
        return "synthetic"
    path = Path(args.data)
    generic = path.stem.lower() in ("ratings", "u", "data", "training_test_dataset", "user_item", "user_artist",
                                    "user_business")
    name = f"{path.parent.name}/{path.name}" if generic and path.parent.name else path.name
    return name + (f" ({data.nnz:,} ratings)" if data is not None else "")


# ================================================================ count data
COUNT_MIN_MAX = 100.0
COUNT_MIN_SKEW = 2.0


def count_data_problem(values) -> str | None:
    """Why ``values`` look like counts (plays, clicks, purchases) rather than ratings, or None.

    Rule: every value is a whole number >= 0, the largest is above 100 (beyond any
    rating scale: stars, 1..10, 0..100 scores) and the distribution has a heavy
    right tail (skewness above 2; rating scales are near-symmetric or skewed to
    the left: MovieLens -0.5, Amazon -1.2, Last.fm play counts +43).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size < 3 or not np.isfinite(v).all():
        return None
    lo, hi = float(v.min()), float(v.max())
    if lo < 0 or hi <= COUNT_MIN_MAX or not np.array_equal(v, np.round(v)):
        return None
    sd = float(v.std())
    skew = float(np.mean(((v - v.mean()) / sd) ** 3)) if sd > 0 else 0.0
    if skew <= COUNT_MIN_SKEW:
        return None
    return (f"the values are whole numbers from {lo:g} to {hi:g} (median {float(np.median(v)):g}, 99th percentile "
            f"{float(np.percentile(v, 99)):g}, skewness {skew:.1f}): they look like counts (plays, clicks), not "
            f"ratings -- beyond {COUNT_MIN_MAX:g} and heavy-tailed")


def check_rating_data(data, args) -> None:
    """Refuse count data for a rating model (ConfigError pointing to ``lfopt rank``) unless
    ``--force-rating``, in which case it is a warning."""
    problem = count_data_problem(data.values)
    if problem is None:
        return
    where = getattr(args, "data", None) or "the data"
    advice = (f"an RMSE on raw counts is dominated by a few huge values. Rank them as implicit feedback "
              f"instead: lfopt rank --data {where} --model ials (or bpr)")
    if getattr(args, "force_rating", False):
        warnings.warn(f"{where}: {problem}; {advice} (training a rating model anyway: --force-rating)",
                      UserWarning, stacklevel=2)
        return
    raise ConfigError(f"{where}: {problem}; {advice}. Pass --force-rating to train a rating model anyway")


# ==================================================================== warm-up
def _tiny_data():
    return synthetic(n_users=60, n_items=40, nnz=1200, seed=0)


def warm_up(models, data=None, epochs: int = 2) -> float:
    """Compile (or load from numba's cache) the kernels the given models will run; returns the seconds.

    ``models``: estimators (not fitted; e.g. the one about to be trained) or a single one.
    A copy of each (same hyper-parameters, so the same code paths: optimizer,
    sharpness-aware wrapper, preconditioner, backend) is fitted for ``epochs``
    epochs, with a validation part and early stopping, on ``data`` (default: a
    tiny synthetic rating problem) and evaluated, then thrown away.  The models
    given are not touched.  Call it before timing anything: numba's first
    compilation takes seconds, an epoch on ML-1M a fraction of one.
    """
    from ..estimators.base import Recommender

    if isinstance(models, Recommender):
        models = [models]
    t0 = time.perf_counter()
    tiny = _tiny_data() if data is None else data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        todo = []
        for model in models:
            params = model.get_params()
            todo.append((model, params))
            if params.get("optimizer") == "auto":  # the sampler on small data, ALS on large: both paths
                todo.append((model, {**params, "optimizer": "als"}))
        for model, params in todo:
            names = set(type(model)._param_names()) | set(params)
            n_epochs = epochs
            gibbs = params.get("optimizer") == "gibbs" or params.get("preset") == "accurate"
            if gibbs:  # the sampler keeps samples only after its warm start and burn-in
                n_epochs = int(params.get("warm_start", 0) or 0) + int(params.get("burn_in", 20) or 20) + 2
            override = {"epochs": n_epochs, "verbose": False, "time_budget": None, "patience": 1,
                        "validation": 0.2}
            if params.get("preset") == "accurate":
                override.update(preset=None, optimizer="gibbs")
            params.update({k: v for k, v in override.items() if k in names})
            copy = type(model)(**params)
            copy.fit(tiny)
            try:
                copy.evaluate(tiny)
            except ConfigError:  # a model that cannot score these data; fitting compiled the kernels
                pass
            if hasattr(copy, "posterior_"):  # LF models score many pairs with the parallel kernel
                from ..kernels.gibbs import pair_dots

                X = np.zeros((1, 2), np.float32)
                pair_dots(np.zeros(1, np.int64), np.zeros(1, np.int64), X, X, 2, np.empty(1))
    return time.perf_counter() - t0


def say_compile(args, seconds: float) -> None:
    say(args, f"numba kernels compiled or loaded from its cache in {seconds:.2f} s (not counted in any timing)")


# ============================================================ flags in errors
#: Python parameter names (estimators, optimizers, splits) -> the CLI flags that set them.
PARAM_FLAGS = {
    "lam": "--lambda", "lam0": "--lambda0", "lam_b": "--lambda-bias", "lam0_b": "--lambda0-bias",
    "init_scale": "--init-scale", "batch_size": "--batch-size", "cg_iters": "--cg-iters", "cg_tol": "--cg-tol",
    "time_budget": "--time-budget", "lr": "--lr", "valid_fraction": "--valid-fraction",
    "test_fraction": "--test-fraction", "use_bias": "--no-bias", "noise_std": "--noise", "n_users": "--n-users",
    "n_items": "--n-items", "cg_steps": "--cg-steps", "lam_lr": "--lambda-lr", "lam_bias": "--lambda-bias",
    "valid_batch_size": "--valid-batch-size", "lambda_holdout": "--lambda-holdout", "lam_scaling": "--lambda-scaling",
    "k_core": "--k-core", "lazy": "--lazy",
    # ordinary words: replaced only as the subject of a message ("rank must be ...", "rho=...")
    "rank": "--rank", "epochs": "--epochs", "patience": "--patience", "seed": "--seed", "damping": "--damping",
    "decay": "--decay", "rho": "--rho", "validation": "--valid-fraction", "granularity": "--granularity",
    "preset": "--preset", "precondition": "--precondition", "alpha": "--alpha", "solver": "--solver",
    "threshold": "--threshold", "unseen": "--unseen", "duplicates": "--duplicates", "missing": "--missing",
}
_WORDS = {"rank", "epochs", "patience", "seed", "damping", "decay", "rho", "validation", "granularity", "preset",
          "precondition", "alpha", "solver", "threshold", "unseen", "duplicates", "missing"}
_SUBJECT = r"(?=\s+must\b|\s+should\b|\s*[<>]=?\s|\s*=)"


def to_flags(message: str, extra: dict | None = None) -> str:
    """``message`` (a library error) with the Python parameter names replaced by CLI flags.

    ``lam must be ...`` -> ``--lambda must be ...``; ``lam="learn"`` -> ``--lambda learn``;
    ``(lam, lam0)`` -> ``(--lambda, --lambda0)``.  Names that are ordinary words
    (``rank``, ``validation``) are replaced only as the subject of a rule (``rank must``,
    ``validation > 0``).  ``extra`` adds or overrides entries of :data:`PARAM_FLAGS`.
    """
    table = {**PARAM_FLAGS, **(extra or {})}
    for name in sorted(table, key=len, reverse=True):
        flag = table[name]
        if not flag or not re.search(rf"(?<![\w\-./\\]){re.escape(name)}(?![\w\-/\\])", message):
            continue
        pat = re.escape(name)
        # name="value" / name='value' -> flag value
        message = re.sub(rf"(?<![\w\-./\\]){pat}=([\"'])([^\"']*)\1", lambda m: f"{flag} {m.group(2)}", message)
        if name in _WORDS:
            message = re.sub(rf"(?<![\w\-./\\'\"]){pat}{_SUBJECT}", flag, message)
        else:
            message = re.sub(rf"(?<![\w\-./\\'\"]){pat}(?![\w\-(/\\'\"])", flag, message)
    return message


# ========================================================== results records
def run_info(args=None) -> dict:
    """What every results JSON starts with: lfopt's version, the UTC time and the command line."""
    from .. import __version__

    argv = getattr(args, "_argv", None)
    if argv is None:
        argv = sys.argv[1:]
    return {"lfopt_version": __version__,
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["lfopt", *[str(a) for a in argv]])}


def option_names(parser: argparse.ArgumentParser) -> dict:
    """dest -> the name an option has in results files: its long flag without dashes
    (``--lambda-bias`` -> ``lambda_bias``), so that every option has one name."""
    out = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs and action.dest not in ("help", "version"):
            out[action.dest] = longs[0][2:].replace("-", "_")
    return out


def record_options(args, resolved: dict | None = None) -> dict:
    """The options of a run, one name per option (see :func:`option_names`), with ``resolved``
    (keyed by dest: the values actually used where an option was left to a default) filled in."""
    names = getattr(args, "_names", None) or {}
    values = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command",)}
    values.update(resolved or {})
    return {names.get(k, k): v for k, v in values.items()}


def pairs_hash(part) -> str:
    """A fingerprint (SHA-256, hex) of the (user ID, item ID, value) triples of ``part`` in order."""
    h = hashlib.sha256()
    for arr in (part.user_ids[part.users], part.item_ids[part.items]):
        if arr.dtype.kind in "iu":
            h.update(np.ascontiguousarray(arr, dtype=np.uint64).tobytes())
        else:
            h.update("\x1f".join(map(str, arr.tolist())).encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    h.update(np.ascontiguousarray(part.values, dtype=np.float32).tobytes())
    return h.hexdigest()


def check_output_paths(pairs, overwrite: bool) -> None:
    """Check every output before a long job: ``pairs`` like ``("--output", path)`` (None paths skipped).

    Uses :func:`lfopt.results.check_outputs` (non-writable folder, a parent that is a file,
    two options naming the same file, existing files) when it exists, else the
    existence check of :func:`lfopt.results.check_writable`.
    """
    from .. import results

    pairs = [(flag, path) for flag, path in pairs if path]
    check = getattr(results, "check_outputs", None)
    if check is not None:
        check(pairs, overwrite)
        return
    for _, path in pairs:  # pragma: no cover - older results module
        results.check_writable(path, overwrite)


# =================================================================== output
def say(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest's capture swaps it)."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def emit(self, record):
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"lfopt {self.command}: {record.levelname.lower()}: {text}"
            print(text, file=sys.stderr, flush=True)
        except Exception:  # pragma: no cover
            self.handleError(record)


@contextlib.contextmanager
def cli_output(command: str, quiet: bool):
    """For the duration of a command: the ``lfopt`` logger prints INFO messages (WARNING and
    above with ``quiet``) to stderr, and Python warnings show as one line
    ``lfopt COMMAND: warning: ...`` instead of a file:line dump (each message once)."""
    handler = _StderrHandler(command)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text in shown:
            return
        shown.add(text)
        print(f"lfopt {command}: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        # what concerns the user (data, divergence, numbers): lfopt's own warnings are UserWarnings
        # (DataWarning among them) or RuntimeWarnings; deprecations of other packages are not shown
        warnings.simplefilter("ignore")
        warnings.simplefilter("default", UserWarning)
        warnings.simplefilter("default", RuntimeWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = old_propagate
