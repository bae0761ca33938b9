"""The fused BPR kernel (a registered fast path) equals the step composed from the protocol's
pieces: batch gradient, SGD step, and the LambdaOpt regularizer's hyper-gradient step."""

from __future__ import annotations

import numpy as np
import pytest

import lfopt
from lfopt.models.bpr import BPRObjective, composed_sgd_step
from lfopt.ranking import implicit_split
from lfopt.regularizers.lambda_opt import LambdaOpt


@pytest.fixture(scope="module")
def split():
    data = lfopt.synthetic(n_users=80, n_items=60, nnz=2400, seed=2)
    return implicit_split(data, threshold=3, k_core=2, seed=0)


@pytest.mark.parametrize("granularity,learn,bias", [("global", False, False), ("global", True, True),
                                                    ("D", True, False), ("DU", True, True), ("DUI", True, False)])
def test_fused_epoch_equals_composed_steps(split, granularity, learn, bias):
    def make():
        reg = LambdaOpt(granularity, init=0.05, learn=learn, lr=0.01)
        obj = BPRObjective(split.train, 5, reg, item_bias=bias, lam_bias=0.01, lam_valid=split.valid, seed=0)
        return obj, obj.init_params(0.1, 3)

    B, Bv, lr = 32, 16, 0.05
    rng = np.random.default_rng(0)
    N = 4 * B
    idx = rng.integers(0, split.train.nnz, N)
    tu, ti = split.train.users[idx], split.train.items[idx]
    tj = rng.integers(0, split.n_items, N)
    tj[5] = -1  # a skipped triple (a user who had every item)
    vidx = rng.integers(0, split.valid.nnz, 4 * Bv)
    vu, vi = split.valid.users[vidx], split.valid.items[vidx]
    vj = rng.integers(0, split.n_items, 4 * Bv)

    fused, y1 = make()
    P, Q, b = fused.unpack(y1)
    z = np.zeros((0, 0), np.float32)
    z1 = np.zeros(0, np.float32)
    cnt = np.zeros(fused.m, np.int64), np.zeros(fused.n, np.int64)
    reg = fused.regularizer
    stats = np.zeros(4)
    f32 = np.float32
    fused.backend.bpr_train(tu, ti, tj.astype(np.int64), B, vu, vi, vj.astype(np.int64), Bv, P, Q, b, bias,
                            f32(0.01), 0, f32(lr), f32(0.9), f32(0.999), f32(1e-8), z, z, z, z, z1, z1, *cnt,
                            reg.lam, reg.layout.lam_map(), learn, f32(reg.lr), reg.m, reg.v, reg.count,
                            np.zeros(0, np.float32), stats)

    comp, y2 = make()
    for s in range(N // B):
        t = slice(s * B, (s + 1) * B)
        v = slice(s * Bv, (s + 1) * Bv)
        composed_sgd_step(comp, y2, tu[t], ti[t], tj[t], vu[v], vi[v], vj[v], lr)
    np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fused.regularizer.lam, comp.regularizer.lam, rtol=1e-4, atol=1e-7)
    if learn:
        assert np.abs(comp.regularizer.lam - 0.05).max() > 1e-4  # Lambda did move
        np.testing.assert_array_equal(fused.regularizer.count, comp.regularizer.count)
