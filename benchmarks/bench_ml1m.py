"""ML-1M rating prediction: lfopt's SGD and ALS against cornac's MF and LIBMF, in one run.

Protocol (METHODS.md section 6): the random 90/10 split of all ratings with seed 42,
rank 100, 40 epochs, test RMSE/MAE on the clipped predictions, seconds per epoch
and the ratio of each to lfopt's SGD.  The peers run with the settings that
reproduce their reference numbers (cornac lr 0.01, lambda 0.05 on all cores;
LIBMF eta 0.05, lambda 0.05); their own defaults are far worse on ML-1M (cornac
0.886, LIBMF 0.895), see benchmarks/peers.py.  Peers are optional (pip install -r
benchmarks/requirements-peers.txt); a missing one is reported as skipped.

lfopt's hyper-parameters are not chosen on the test set: ``--select`` runs a
small grid on a validation split carved from the training part (10 %, seed 43)
and prints the best; the defaults below are what it selected.

Usage: python benchmarks/bench_ml1m.py [--data PATH] [--select] [--skip-als]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

import lfopt

try:  # run as a script from the repository root or from benchmarks/
    from peers import PeerUnavailable, run_cornac_mf, run_libmf
except ImportError:  # pragma: no cover
    from benchmarks.peers import PeerUnavailable, run_cornac_mf, run_libmf

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "ratings.dat"
RANK, EPOCHS = 100, 40
# selected by --select on the validation split (see the module docstring)
SGD = dict(lr=0.007, lam=0.04, init_scale=0.1)
ALS = dict(lam=0.08)
ALS_EPOCHS = 15  # ALS converges in far fewer sweeps; its time per epoch is reported anyway


def fit_lfopt(name, train, test, epochs, **params):
    model = lfopt.LatentFactorModel(rank=RANK, optimizer=name, epochs=epochs, seed=42, **params)
    t0 = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - t0
    scores = model.evaluate(test)
    epoch_s = float(np.median([r["epoch_seconds"] for r in model.history_]))
    return {"rmse": scores["rmse"], "mae": scores["mae"], "seconds": seconds, "seconds_per_epoch": epoch_s,
            "epochs": len(model.history_)}


def select(train):
    inner, valid = lfopt.random_split(train, 0.1, seed=43)
    grids = {
        "sgd": [dict(lr=lr, lam=lam, init_scale=0.1) for lr, lam in itertools.product((0.005, 0.007, 0.01),
                                                                                       (0.03, 0.04, 0.05))],
        "als": [dict(lam=lam) for lam in (0.04, 0.05, 0.06, 0.08)],
    }
    for name, grid in grids.items():
        results = []
        for params in grid:
            epochs = EPOCHS if name == "sgd" else ALS_EPOCHS
            model = lfopt.LatentFactorModel(rank=RANK, optimizer=name, epochs=epochs, seed=42, **params).fit(inner)
            rmse = model.evaluate(valid)["rmse"]
            results.append((rmse, params))
            print(f"select {name} {params}: validation RMSE {rmse:.4f}", flush=True)
        best = min(results, key=lambda r: r[0])
        print(f"selected {name}: {best[1]} (validation RMSE {best[0]:.4f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--select", action="store_true", help="choose lfopt's hyper-parameters on validation and stop")
    ap.add_argument("--skip-als", action="store_true")
    args = ap.parse_args()

    lfopt.load_data(args.data)  # warm the file cache and the parser
    t0 = time.perf_counter()
    data = lfopt.load_data(args.data)
    load_s = time.perf_counter() - t0
    print(f"loaded {data!r} in {load_s:.3f} s")
    train, test = lfopt.random_split(data, 0.1, seed=42)
    if args.select:
        select(train)
        return
    # compile the kernels outside the timed runs
    lfopt.LatentFactorModel(rank=4, optimizer="sgd", epochs=1).fit(test)
    lfopt.LatentFactorModel(rank=4, optimizer="als", epochs=1).fit(test)

    rows = [("lfopt sgd", lambda: fit_lfopt("sgd", train, test, EPOCHS, **SGD))]
    if not args.skip_als:
        rows.append(("lfopt als", lambda: fit_lfopt("als", train, test, ALS_EPOCHS, **ALS)))
    arrays = (train.users, train.items, train.values, test.users, test.items, test.values)
    rows.append(("cornac MF", lambda: run_cornac_mf(*arrays, rank=RANK, epochs=EPOCHS, lr=0.01, lam=0.05,
                                                    seed=None)))
    rows.append(("LIBMF", lambda: run_libmf(*arrays, rank=RANK, epochs=EPOCHS, lr=0.05, lam=0.05)))
    results = {}
    for name, fn in rows:
        try:
            results[name] = fn()
            r = results[name]
            print(f"{name:10s} test RMSE {r['rmse']:.4f}  MAE {r['mae']:.4f}  {r['epochs']} epochs in "
                  f"{r['seconds']:.2f} s ({r['seconds_per_epoch'] * 1e3:.1f} ms/epoch)", flush=True)
        except PeerUnavailable as exc:
            print(f"{name:10s} skipped: {exc}")
    ref = results["lfopt sgd"]
    print()
    print(f"| method | test RMSE | test MAE | epochs | seconds | ms/epoch | epoch time / lfopt sgd |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = r["seconds_per_epoch"] / ref["seconds_per_epoch"]
        print(f"| {name} | {r['rmse']:.4f} | {r['mae']:.4f} | {r['epochs']} | {r['seconds']:.2f} | "
              f"{r['seconds_per_epoch'] * 1e3:.1f} | {ratio:.2f} |")
    if "cornac MF" in results:
        ratio = ref["seconds_per_epoch"] / results["cornac MF"]["seconds_per_epoch"]
        print(f"\nlfopt SGD epoch / cornac MF epoch = {ratio:.2f} (target <= 1.0)")
    print(f"lfopt SGD test RMSE {ref['rmse']:.4f} (target <= 0.840); ML-1M load {load_s:.3f} s (target < 1 s)")


if __name__ == "__main__":
    main()
