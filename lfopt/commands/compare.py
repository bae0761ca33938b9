"""``lfopt compare``: several optimizers side by side on one dataset and split."""

from __future__ import annotations

from pathlib import Path

from ..compare import compare, csv_table, markdown_table, model_default, summarize
from ..errors import ConfigError
from ..estimators import LatentFactorModel
from ..optim.base import make_optimizer
from ..plots import plot_curves
from ..results import write_atomic, write_json
from .common import (add_data_options, add_progress_option, add_rating_data_options, check_output_paths,
                     check_rating_data, dataset_label, fraction, load_dataset, option_names, record_options,
                     run_info, say, say_compile, warm_up)
from .train import OPTIMIZERS, _lambda

OUTPUT_FILES = ("table.md", "table.csv", "results.json", "rmse_vs_epoch.png", "rmse_vs_time.png")
#: model hyper-parameters compare exposes: dest -> LatentFactorModel parameter
MODEL_OPTIONS = ("rank", "lam", "lam0", "lam_b", "lam0_b", "epochs", "patience", "init_scale")


def add_parser(sub):
    p = sub.add_parser(
        "compare",
        help="train several optimizers with the same split, init and hyper-parameters; tables and plots",
        description="Train each optimizer on the same split (a random 80/10/10 train/validation/test split, or a "
        "dataset's fixed test split with validation carved from its training part), from the same initialization "
        "and with the same model hyper-parameters (by default the model's, the same as 'lfopt train'); stop early "
        "on validation RMSE and score the test set at the best validation epoch. Timings exclude numba's first "
        "compilation (done on a tiny problem first, reported apart) and validation scoring. Writes table.md, "
        "table.csv, results.json and rmse_vs_epoch.png / rmse_vs_time.png into --outdir.",
    )
    add_data_options(p)
    add_rating_data_options(p)
    p.add_argument("--optimizers", default=",".join(o for o in OPTIMIZERS if o != "gibbs"),
                   help="comma-separated (default: the six optimizers; gibbs may be added)")
    g = p.add_argument_group("model (default: the model's, as in 'lfopt train')")
    g.add_argument("--rank", type=int, default=None,
                   help=f"latent dimensions (default: {model_default('rank')}; on the synthetic data its true rank, 5)")
    g.add_argument("--lambda", dest="lam", type=_lambda, default=None, metavar="LAMBDA|learn",
                   help=f"count-weighted L2 of the factors, for all (default: {model_default('lam')})")
    g.add_argument("--lambda0", dest="lam0", type=float, default=None,
                   help=f"constant part of each row's factor penalty (default: {model_default('lam0')})")
    g.add_argument("--lambda-bias", dest="lam_b", type=float, default=None,
                   help=f"count-weighted L2 of the biases (default: {model_default('lam_b')})")
    g.add_argument("--lambda0-bias", dest="lam0_b", type=float, default=None,
                   help=f"constant part of each row's bias penalty (default: {model_default('lam0_b')})")
    g.add_argument("--init-scale", type=float, default=None,
                   help=f"initial factor scale (default: {model_default('init_scale')})")
    g.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: 40)")
    g.add_argument("--patience", type=int, default=None,
                   help=f"early-stopping patience (default: {model_default('patience')})")
    g = p.add_argument_group("split")
    g.add_argument("--valid-fraction", type=fraction("--valid-fraction", allow_zero=True), default=0.1, metavar="F",
                   help="fraction of the data held out for early stopping (default: 0.1; 0: no validation part, "
                   "every run trains all its epochs and is scored at the last)")
    g.add_argument("--test-fraction", type=fraction("--test-fraction"), default=None, metavar="F",
                   help="test fraction of a random split (default: 0.1; not with a file that has its own split)")
    g.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2,3,4 (default: 0)")
    p.add_argument("--set", action="append", default=[], metavar="OPT:KEY=VALUE",
                   help="an optimizer option, e.g. --set sgd:lr=0.01 --set sslf:rho=0.1 (repeatable)")
    g = p.add_argument_group("output")
    g.add_argument("--outdir", required=True, help="folder for the tables, plots and results")
    g.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --outdir")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress output (the table still prints)")
    add_progress_option(g)
    p.set_defaults(_names=option_names(p))
    return p


def _parse_sets(items, names) -> dict:
    out = {n: {} for n in names}
    for item in items:
        try:
            opt, kv = item.split(":", 1)
            key, value = kv.split("=", 1)
        except ValueError:
            raise ConfigError(f"--set expects OPT:KEY=VALUE, got {item!r}") from None
        if opt not in out:
            raise ConfigError(f"--set {item!r}: {opt!r} is not among the compared optimizers {names}")
        try:
            val = int(value)
        except ValueError:
            try:
                val = float(value)
            except ValueError:
                val = {"true": True, "false": False}.get(value.lower(), value)
        out[opt][key] = val
    for n, opts in out.items():
        try:
            make_optimizer(n, **opts)  # validate now, not after an hour of training
        except ConfigError as exc:
            raise ConfigError(f"--set {n}:...: {exc}") from None
    return out


def _protocol(args, data) -> str:
    vf = args.valid_fraction
    if "test_mask" in data.meta:
        split = "fixed test split" + (f", {vf:.0%} validation" if vf else ", no validation")
    else:
        tf = args.test_fraction or 0.1
        split = (f"random {1 - vf - tf:.0%}/{vf:.0%}/{tf:.0%} split" if vf else f"random {1 - tf:.0%}/{tf:.0%} split")
    stop = "early stop on valid RMSE" if vf else "no early stop"
    return f"{split}, {stop}"


def run(args) -> int:
    names = [s.strip() for s in args.optimizers.split(",") if s.strip()]
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad or not names:
        raise ConfigError(f"--optimizers: unknown {bad}; choose from {', '.join(OPTIMIZERS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise ConfigError(f"--seeds: no seed given in {args.seeds!r}")
    options = _parse_sets(args.set, names)
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"--outdir {outdir}: is a file, not a folder")
    if outdir.exists() and any(outdir.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{outdir} is not empty; pass --overwrite to write into it")
    check_output_paths([("--outdir", outdir / name) for name in OUTPUT_FILES], overwrite=True)
    data = load_dataset(args)
    check_rating_data(data, args)
    if "test_mask" in data.meta and args.test_fraction is not None:
        raise ConfigError(f"--test-fraction {args.test_fraction:g}: {args.data} carries its own fixed train/test "
                          f"split, which is used as it is; drop --test-fraction")
    tf = args.test_fraction if args.test_fraction is not None else 0.1
    if args.valid_fraction and args.valid_fraction + tf >= 1:
        raise ConfigError(f"--valid-fraction {args.valid_fraction:g} + --test-fraction {tf:g} must stay below 1")
    given = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    if "rank" not in given and data.meta.get("true_rank"):
        given["rank"] = int(data.meta["true_rank"])
    resolved = {k: given.get(k, model_default(k)) for k in MODEL_OPTIONS}
    say(args, f"data: {data!r}; optimizers {names}; seeds {seeds}; rank {resolved['rank']}, lambda {resolved['lam']} "
              f"(+ {resolved['lam0']} per row)")
    compile_seconds = warm_up([LatentFactorModel(optimizer=n, **given, **options[n]) for n in names])
    say_compile(args, compile_seconds)
    per_epoch = not args.quiet and _bars_wanted(args)
    runs = compare(data, names, seeds, options=options, verbose=per_epoch, valid_fraction=args.valid_fraction,
                   test_fraction=tf, **given)
    summary = summarize(runs)
    label = dataset_label(args, data)
    protocol = _protocol(args, data)
    title = f"{label}: {protocol}; rank {resolved['rank']}, lambda {resolved['lam']}, {len(seeds)} seed(s)"
    md = markdown_table(summary, title)
    outdir.mkdir(parents=True, exist_ok=True)
    write_atomic(outdir / "table.md", md.encode(), overwrite=True)
    write_atomic(outdir / "table.csv", csv_table(summary).encode(), overwrite=True)
    diverged = [f"{r.optimizer} (seed {r.seed})" for r in runs if r.diverged]
    write_json(outdir / "results.json", {
        **run_info(args), "data": args.data or "synthetic", "protocol": protocol,
        "compile_seconds": compile_seconds,
        "options": record_options(args, {**resolved, "test_fraction": None if "test_mask" in data.meta else tf,
                                         "seeds": seeds, "optimizers": names, "set": options}),
        "summary": summary, "diverged": diverged,
        "runs": [vars(r) for r in runs]}, overwrite=True)
    first = {r.optimizer: r.history for r in runs if r.seed == seeds[0]}
    sub = f"{label}, seed {seeds[0]}\n{protocol}; rank {resolved['rank']}, lambda {resolved['lam']}"
    plot_curves(first, "epoch", "test_rmse", outdir / "rmse_vs_epoch.png", title=f"Test RMSE by epoch: {sub}",
                ylabel="test RMSE (not used for any choice)")
    plot_curves(first, "seconds", "test_rmse", outdir / "rmse_vs_time.png",
                title=f"Test RMSE by training time: {sub}",
                xlabel=f"training seconds (compilation, {compile_seconds:.1f} s, and validation excluded)",
                ylabel="test RMSE (not used for any choice)")
    print(md)
    say(args, f"tables, plots and results written to {outdir}")
    if diverged:
        from ..errors import DivergenceError

        first_bad = next(r for r in runs if r.diverged)
        raise DivergenceError(f"{len(diverged)} run(s) diverged: {', '.join(diverged)} (marked in the table; the "
                              f"others are written to {outdir}). {first_bad.optimizer}: {first_bad.message}")
    return 0


def _bars_wanted(args) -> bool:
    """Per-epoch progress of every run: asked for (--progress bar or lines), or bars on a terminal;
    otherwise (auto, not a terminal) one line per run only."""
    import sys

    style = getattr(args, "progress", "auto")
    if style in ("bar", "lines"):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False

