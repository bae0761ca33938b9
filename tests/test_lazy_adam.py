"""Lazy (row-sparse) mini-batch steps of Adam and AdaGO: the segment kernel, the row-sparse
batch oracle, the optimizer against the dense one, and the "auto" rule."""

import numpy as np
import pytest

import lfopt
from lfopt.errors import ConfigError
from lfopt.kernels import vector as V
from lfopt.models.lf import LFObjective
from lfopt.optim.base import make_optimizer
from lfopt.optim.first_order import LAZY_RATIO, lazy_wanted
from lfopt.regularizers import L2


def _state(n, seed):
    rng = np.random.default_rng(seed)
    y, g, d, m = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    s = rng.random(n).astype(np.float32)
    return y, g, d, m, s


ARGS = (np.float32(0.01), np.float32(0.9), np.float32(0.999), np.float32(1e-8), np.float32(0.3), np.float32(0.02))


def test_segments_covering_the_vector_give_the_dense_step_bit_for_bit():
    n = 1000
    dense = _state(n, 0)
    lazy = tuple(a.copy() for a in dense)
    y, g, d, m, s = dense
    V.adaptive_moment_update(y, g, d + np.float32(0.5), m, s, *ARGS, np.float32(0.0))
    cuts = np.sort(np.random.default_rng(1).choice(np.arange(1, n), 40, replace=False))
    starts = np.concatenate([[0], cuts]).astype(np.int64)
    lengths = np.diff(np.concatenate([starts, [n]])).astype(np.int64)
    order = np.random.default_rng(2).permutation(len(starts))  # any order: segments do not overlap
    ly, lg, ld, lm, ls = lazy
    V.adaptive_moment_update_segments(ly, lg, ld, lm, ls, starts[order], lengths[order], *ARGS, np.float32(0.5))
    for a, b in zip(dense, lazy):
        np.testing.assert_array_equal(a, b)


def test_entries_outside_the_segments_are_left_alone():
    n = 300
    y, g, d, m, s = _state(n, 3)
    before = tuple(a.copy() for a in (y, m, s))
    starts, lengths = np.array([10, 200], dtype=np.int64), np.array([5, 30], dtype=np.int64)
    V.adaptive_moment_update_segments(y, g, d, m, s, starts, lengths, *ARGS, np.float32(0.0))
    inside = np.zeros(n, bool)
    inside[10:15] = inside[200:230] = True
    for a, b in zip((y, m, s), before):
        np.testing.assert_array_equal(a[~inside], b[~inside])
        assert np.all(a[inside] != b[inside])


@pytest.mark.parametrize("use_bias", [True, False])
def test_batch_grad_rows_is_batch_grad_on_the_rows_the_batch_touches(use_bias):
    data = lfopt.synthetic(n_users=80, n_items=60, nnz=1500, seed=4)
    obj = LFObjective(data, 5, regularizer=L2(0.05, lam0=1.0), use_bias=use_bias)
    y = obj.init_params(0.3, seed=1)
    batch = np.random.default_rng(5).choice(data.nnz, 100, replace=False)
    g_dense, d_dense = np.zeros_like(y), np.zeros_like(y)
    sse = obj.batch_grad(y, batch, g_dense, d_dense)
    g, d = np.full_like(y, 7.0), np.full_like(y, 7.0)  # stale values outside the rows
    sse2, (starts, lengths) = obj.batch_grad_rows(y, batch, g, d)
    assert sse2 == pytest.approx(sse, rel=1e-6)
    on = np.zeros(len(y), bool)
    for a, n in zip(starts, lengths):
        assert not on[a:a + n].any()  # no overlap
        on[a:a + n] = True
    np.testing.assert_allclose(g[on], g_dense[on], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d[on], d_dense[on], rtol=1e-6, atol=1e-7)
    assert np.all(g[~on] == 7.0) and np.all(d[~on] == 7.0)
    # the segments are exactly the batch's users' and items' rows: the dense gradient's support
    users, items = np.unique(data.users[batch]), np.unique(data.items[batch])
    bu, bi, P, Q = obj.unpack(on.astype(np.float32))
    assert set(np.flatnonzero(P.all(axis=1))) == set(users) and not P[~np.isin(np.arange(80), users)].any()
    assert set(np.flatnonzero(Q.all(axis=1))) == set(items)
    if use_bias:
        assert set(np.flatnonzero(bu)) == set(users) and set(np.flatnonzero(bi)) == set(items)
    assert not g_dense[~on].any()


@pytest.mark.parametrize("name", ["adam", "adago"])
def test_lazy_epoch_moves_only_the_rows_each_step_touches(name):
    """Two steps (a batch of |K| - 1 entries, then one entry): Adam's first step moves only the
    touched rows in both forms (m = s = 0 elsewhere); in the second, the one entry's rows get
    the same update, and every other row keeps its step-1 value under the lazy form while the
    dense form moves it by its momentum."""
    data = lfopt.synthetic(n_users=60, n_items=50, nnz=900, seed=6)
    out = {}
    for lazy in (False, True):
        obj = LFObjective(data, 4, lam=0.05)
        y = obj.init_params(0.1, seed=0)
        y0 = y.copy()
        opt = make_optimizer(name, batch_size=data.nnz - 1, lazy=lazy, seed=3)
        opt.epoch(obj, y, 1)
        assert opt.lazy_ is lazy
        out[lazy] = (obj, y0, y)
    last = np.random.default_rng(3).permutation(data.nnz)[-1]  # the second step's entry
    u, i = data.users[last], data.items[last]
    obj, y0, yd = out[False]
    _, _, yl = out[True]
    bu_d, bi_d, P_d, Q_d = obj.unpack(yd)
    bu_l, bi_l, P_l, Q_l = obj.unpack(yl)
    np.testing.assert_array_equal(P_l[u], P_d[u])
    np.testing.assert_array_equal(Q_l[i], Q_d[i])
    np.testing.assert_array_equal(bu_l[u], bu_d[u])
    others = np.setdiff1d(np.arange(data.n_users), [u])
    assert np.abs(P_l[others] - P_d[others]).max() > 1e-6  # the dense form kept moving them
    # lazy: the other rows hold their value after step 1, which the dense step 1 also gave them
    single = make_optimizer(name, batch_size=data.nnz - 1, lazy=False, seed=3)
    y1 = y0.copy()
    first = np.random.default_rng(3).permutation(data.nnz)[:-1]
    g, dg = np.zeros_like(y1), np.zeros_like(y1)
    obj.batch_grad(y1, first, g, dg if name == "adago" else None)
    single._init(obj, y1)
    single._apply(obj, y1, g, *single.second_moment(g, dg))
    np.testing.assert_array_equal(obj.unpack(yl)[2][others], obj.unpack(y1)[2][others])


def test_lazy_adam_trains_as_well_as_dense():
    data = lfopt.synthetic(n_users=1500, n_items=1000, nnz=40000, seed=7)
    train, test = lfopt.random_split(data, 0.1, seed=0)
    rmse = {}
    for lazy in (False, True):
        model = lfopt.LatentFactorModel(rank=8, optimizer="adam", epochs=15, batch_size=256, lazy=lazy,
                                        validation=None, seed=0).fit(train)
        assert model.optimizer_.lazy_ is lazy
        rmse[lazy] = model.evaluate(test)["rmse"]
    floor = lfopt.BiasBaseline().fit(train).evaluate(test)["rmse"]
    assert rmse[True] < floor and rmse[False] < floor
    assert abs(rmse[True] - rmse[False]) < 0.02 * rmse[False]


class _Fake:
    def __init__(self, size, f, caps=("sparse_minibatch",)):
        self.size, self.f, self.capabilities = size, f, frozenset(caps)


def test_auto_is_lazy_only_where_the_vector_dwarfs_a_batch():
    b, f = 8192, 64
    edge = LAZY_RATIO * 2 * b * (f + 1)
    assert not lazy_wanted("auto", _Fake(edge, f), b)
    assert lazy_wanted("auto", _Fake(edge + 1, f), b)
    assert lazy_wanted("auto", _Fake(35_750_000, 64), 8192)  # 100M ratings, 550K rows, rank 64
    assert not lazy_wanted("auto", _Fake(9746 * 33, 32), 8192)  # ML-1M rank 32
    assert not lazy_wanted("auto", _Fake(10**9, f, caps=()), b)  # no row-sparse oracle: dense
    assert lazy_wanted(True, _Fake(10, f), b) and not lazy_wanted(False, _Fake(10**9, f), b)


def test_lazy_needs_the_row_sparse_oracle():
    with pytest.raises(ConfigError, match="lazy"):
        make_optimizer("adam", lazy="yes")
    data = lfopt.synthetic(n_users=40, n_items=30, nnz=400, seed=0)
    obj = LFObjective(data, 3, lam=0.05)
    obj.capabilities = obj.capabilities - {"sparse_minibatch"}  # e.g. the torch kernels
    opt = make_optimizer("adam", batch_size=64, lazy=True)
    with pytest.raises(ConfigError, match="sparse_minibatch"):
        opt.epoch(obj, obj.init_params(0.1, 0), 1)
    auto = make_optimizer("adam", batch_size=64)  # "auto" falls back to dense
    auto.epoch(obj, obj.init_params(0.1, 0), 1)
    assert auto.lazy_ is False


def test_sharpness_and_distributed_objectives_do_not_offer_it():
    from lfopt.dist import LocalComm
    from lfopt.models.lf_dist import DistributedLFObjective
    from lfopt.optim.sharpness import SharpnessAwareView

    data = lfopt.synthetic(n_users=40, n_items=30, nnz=400, seed=0)
    obj = LFObjective(data, 3, lam=0.05)
    assert "sparse_minibatch" in obj.capabilities
    assert "sparse_minibatch" not in SharpnessAwareView(obj, 0.05).capabilities
    assert "sparse_minibatch" in SharpnessAwareView(obj, 0.0).capabilities
    assert "sparse_minibatch" not in DistributedLFObjective(data, 3, lam=0.05, comm=LocalComm()).capabilities


def test_cli_lazy_flag(tmp_path, capsys):
    import json

    from lfopt.cli import main

    out = tmp_path / "r.json"
    assert main(["train", "--optimizer", "adam", "--lazy", "on", "--batch-size", "256", "--epochs", "2", "--n-users",
                 "300", "--n-items", "200", "--nnz", "6000", "--quiet", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["options"]["lazy"] is True and len(res["history"]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--optimizer", "adam", "--lazy", "maybe"])
    assert "--lazy takes on, off or auto, got 'maybe'" in capsys.readouterr().err
