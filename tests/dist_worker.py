"""Run by tests/test_distributed.py under torchrun: trains one model per optimizer with
``distributed=True`` on a small synthetic set and (process 0) saves the parameters."""

import sys

import numpy as np

import lfopt

#: optimizer -> options; the same table the test trains on one process
CASES = {
    "als": {},
    "slf": {},
    "sslf": {},
    "adam": {"batch_size": 0},
    "adago": {"batch_size": 2048},
    "sgd": {"lr": 0.01},
}


def data():
    return lfopt.synthetic(n_users=300, n_items=200, nnz=12000, seed=3)


def model(opt: str, distributed: bool):
    return lfopt.LatentFactorModel(rank=6, optimizer=opt, epochs=6, seed=1, patience=2, distributed=distributed,
                                   **CASES[opt])


def main(out: str, names: list) -> None:
    comm = lfopt.dist.init("gloo")
    train, test = lfopt.random_split(data(), 0.1, seed=0)
    got = {}
    for opt in names:
        m = model(opt, True).fit(train)
        got[opt] = m.params_
        got[opt + "_rmse"] = np.array(m.evaluate(test)["rmse"])
        got[opt + "_epochs"] = np.array(len(m.history_))
    got["world"] = np.array(comm.world)
    if comm.rank == 0:
        np.savez(out, **got)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
