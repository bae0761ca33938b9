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
    got.update(slf_communication(train))
    if comm.rank == 0:
        np.savez(out, **got)


def slf_communication(train) -> dict:
    """Three SLF steps on the distributed objective, counting the floats every all-reduce sums: the
    vectors (more than 16 floats) and the scalar reductions apart."""
    from lfopt.models.lf_dist import DistributedLFObjective
    from lfopt.optim.base import make_optimizer

    obj = DistributedLFObjective(train, 6, lam=0.05, comm=lfopt.dist.communicator())
    sizes = []
    reduce = obj.comm.allreduce_
    obj.comm.allreduce_ = lambda x: (sizes.append(int(np.size(x))), reduce(x))[1]
    y = obj.init_params(0.1, seed=0)
    opt = make_optimizer("slf")
    infos = []
    for epoch in range(1, 4):
        infos.append(opt.epoch(obj, y, epoch))
        obj.sync_params(y)
    return {"comm_vector_floats": np.array(sum(s for s in sizes if s > 16)),
            "comm_scalar_calls": np.array(sum(1 for s in sizes if s <= 16)),
            "comm_cg_iters": np.array(sum(i["cg_iters"] for i in infos)),
            "comm_attempts": np.array(sum(i["rejected"] + 1 for i in infos)),
            "comm_shape": np.array([obj.m, obj.n, obj.f])}




def bpr_main(out: str) -> None:
    """BPR with lambdaOpt (DUI) on 2 processes: the validation NDCG it reaches."""
    comm = lfopt.dist.init("gloo")
    split = bpr_split()
    m = bpr_model(True).fit(split.train, split.valid)
    res = m.evaluate(split.test)
    if comm.rank == 0:
        np.savez(out, ndcg=np.array(res["ndcg@10"]), auc=np.array(res["auc"]), P=m.params_)


def bpr_split():
    from lfopt.ranking import implicit_split

    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k" / "u.data"
    return implicit_split(lfopt.load_data(path), threshold=4, k_core=3)


def bpr_model(distributed: bool):
    from lfopt.ranking import BPRMF

    return BPRMF(rank=16, epochs=15, regularizer="lambdaopt", granularity="DUI", patience=None, seed=1,
                 distributed=distributed)


if __name__ == "__main__":
    if sys.argv[2] == "bpr":
        bpr_main(sys.argv[1])
    else:
        main(sys.argv[1], sys.argv[2].split(","))
