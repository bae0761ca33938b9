"""Issue 3 benchmark: the six optimizers side by side on ML-1M, Douban and Yelp.

For each dataset runs ``lfopt compare`` (80/10/10 split, Douban's fixed test split with
validation carved from its training part; rank 20; the same lambda and initialization for
every optimizer; early stopping on validation RMSE; test RMSE at the best validation epoch)
over 5 seeds, and writes each table, plot and results file under --outdir/<dataset>/.
Then times, on ML-1M at rank 20, one SLF and one SSLF iteration with exactly 10 CG steps
and a full SSLF training run to its early stop.

Usage: python benchmarks/bench_optimizers.py --outdir results/optimizers [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import lfopt
from lfopt.cli import main as cli
from lfopt.compare import split_80_10_10
from lfopt.models.lf import LFObjective
from lfopt.optim.base import make_optimizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "ml-1m": DATA / "ml-1m" / "ratings.dat",
    "douban": DATA / "douban-monti" / "training_test_dataset.mat",
    "yelp": DATA / "yelp" / "user_business.dat",
}


def timings(path: Path, rank: int, lam: float) -> None:
    data = lfopt.load_data(path)
    train, valid, _ = split_80_10_10(data, 0)
    for name in ("slf", "sslf"):
        obj = LFObjective(train, rank, lam)
        y = obj.init_params(0.1, 0)
        opt = make_optimizer(name, cg_iters=10, cg_tol=1e-12)  # tolerance never met: exactly 10 CG steps
        opt.epoch(obj, y, 1)  # compile
        times = []
        for epoch in range(2, 7):
            t0 = time.perf_counter()
            info = opt.epoch(obj, y, epoch)
            times.append(time.perf_counter() - t0)
        print(f"{name} iteration with {int(info['cg_iters'])} CG steps, rank {rank}: median "
              f"{np.median(times):.3f} s over 5 (target < 0.5 s)")
    t0 = time.perf_counter()
    model = lfopt.LatentFactorModel(rank=rank, optimizer="sslf", epochs=100, lam=lam, patience=5).fit(train, valid)
    print(f"full SSLF training to early stop: {time.perf_counter() - t0:.2f} s, "
          f"{len(model.history_)} iterations, best at {model.train_result_.best_epoch} (target < 15 s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--lambda", dest="lam", type=float, default=0.05)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--skip-timings", action="store_true")
    args = ap.parse_args()
    if not args.skip_timings:
        timings(DATASETS["ml-1m"], args.rank, args.lam)
    for name in [d for d in args.datasets.split(",") if d]:
        print(f"\n## {name}")
        cli(["compare", "--data", str(DATASETS[name]), "--rank", str(args.rank), "--lambda", str(args.lam),
             "--seeds", args.seeds, "--outdir", str(Path(args.outdir) / name), "--overwrite", "--quiet"])


if __name__ == "__main__":
    main()
