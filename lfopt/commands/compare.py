"""``lfopt compare``: several optimizers side by side on one dataset and split."""

from __future__ import annotations

from pathlib import Path

from ..compare import compare, csv_table, markdown_table, summarize
from ..errors import ConfigError
from ..optim.base import make_optimizer
from ..plots import plot_curves
from ..results import write_atomic, write_json
from .common import add_data_options, load_dataset, say
from .train import OPTIMIZERS


def add_parser(sub):
    p = sub.add_parser(
        "compare",
        help="train several optimizers with the same split, init and lambda; tables and plots",
        description="Train each optimizer on the same 80/10/10 split (a dataset's fixed test split when it has "
        "one, validation carved from its training part), from the same initialization and with the same "
        "lambda; stop early on validation RMSE and score the test set at the best validation epoch. Writes "
        "table.md, table.csv, results.json and rmse_vs_epoch.png / rmse_vs_time.png into --outdir.",
    )
    add_data_options(p)
    p.add_argument("--optimizers", default=",".join(o for o in OPTIMIZERS if o != "gibbs"),
                   help="comma-separated (default: the six optimizers; gibbs may be added)")
    p.add_argument("--rank", type=int, default=20, help="latent dimensions (default: 20)")
    p.add_argument("--lambda", dest="lam", type=float, default=0.02, help="L2 strength for all (default: 0.02)")
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs (default: 100)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (default: 5)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2,3,4 (default: 0)")
    p.add_argument("--set", action="append", default=[], metavar="OPT:KEY=VALUE",
                   help="an optimizer option, e.g. --set sgd:lr=0.01 --set sslf:rho=0.1 (repeatable)")
    p.add_argument("--outdir", required=True, help="folder for the tables, plots and results")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --outdir")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
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
        make_optimizer(n, **opts)  # validate now, not after an hour of training
    return out


def run(args) -> int:
    names = [s.strip() for s in args.optimizers.split(",") if s.strip()]
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad or not names:
        raise ConfigError(f"--optimizers: unknown {bad}; choose from {', '.join(OPTIMIZERS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    options = _parse_sets(args.set, names)
    outdir = Path(args.outdir)
    if outdir.exists() and any(outdir.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{outdir} is not empty; pass --overwrite to write into it")
    data = load_dataset(args)
    say(args, f"data: {data!r}; optimizers {names}; seeds {seeds}; rank {args.rank}, lambda {args.lam}")
    runs = compare(data, names, seeds, args.rank, args.lam, args.epochs, args.patience, options,
                   log=None if args.quiet else (lambda t: say(args, t)))
    summary = summarize(runs)
    label = "synthetic" if not args.data else (Path(args.data).parent.name or Path(args.data).stem)
    title = f"{label}: rank {args.rank}, lambda {args.lam}, {len(seeds)} seed(s)"
    md = markdown_table(summary, title)
    outdir.mkdir(parents=True, exist_ok=True)
    write_atomic(outdir / "table.md", md.encode(), overwrite=True)
    write_atomic(outdir / "table.csv", csv_table(summary).encode(), overwrite=True)
    write_json(outdir / "results.json", {"data": args.data or "synthetic", "rank": args.rank, "lambda": args.lam,
                                         "seeds": seeds, "options": options, "summary": summary,
                                         "runs": [vars(r) for r in runs]}, overwrite=True)
    first = {r.optimizer: r.history for r in runs if r.seed == seeds[0]}
    plot_curves(first, "epoch", "test_rmse", outdir / "rmse_vs_epoch.png", title=f"{title} (seed {seeds[0]})",
                ylabel="test RMSE")
    plot_curves(first, "seconds", "test_rmse", outdir / "rmse_vs_time.png", title=f"{title} (seed {seeds[0]})",
                xlabel="training seconds", ylabel="test RMSE")
    print(md)
    say(args, f"tables, plots and results written to {outdir}")
    return 0
