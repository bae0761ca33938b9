"""Implicit data, the ranking split protocol, and negative sampling."""

import numpy as np
import pytest

from lfopt.data.interactions import Interactions
from lfopt.errors import ConfigError, DataError
from lfopt.eval.ranking import merged_csr
from lfopt.kernels.bpr import sample_negatives
from lfopt.ranking import implicit_split, to_implicit


def _ratings(seed=0, m=60, n=50, density=0.3, timestamps=True):
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((m, n)) < density)
    r = rng.integers(1, 6, len(u)).astype(float)
    ts = rng.integers(0, 10**6, len(u)) if timestamps else None
    return Interactions.from_arrays(u * 10, i + 1000, r, timestamps=ts)  # non-trivial original IDs


def test_to_implicit_threshold_and_errors():
    data = _ratings()
    pos = to_implicit(data, threshold=4)
    assert pos.nnz == int((data.values >= 4).sum())
    assert np.all(pos.values == 1) and pos.shape == data.shape
    assert to_implicit(data).nnz == data.nnz
    with pytest.raises(DataError, match="no interaction has a value >= 6"):
        to_implicit(data, threshold=6)
    with pytest.raises(ConfigError):
        to_implicit(data, threshold="high")


def test_implicit_split_protocol_by_time():
    data = _ratings(timestamps=True)
    split = implicit_split(data, threshold=3, k_core=5, seed=1)
    tr, va, te = split.train, split.valid, split.test
    assert split.info["by_time"] is True and split.info["k_core"] == 5
    assert tr.shape == va.shape == te.shape
    keys = [set(zip(p.users.tolist(), p.items.tolist())) for p in (tr, va, te)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    total = tr.nnz + va.nnz + te.nnz
    assert total == split.info["n_positives"]
    # k-core: every user and item has at least 5 positives overall
    allu = np.concatenate([tr.users, va.users, te.users])
    alli = np.concatenate([tr.items, va.items, te.items])
    assert np.bincount(allu).min() >= 5 and np.bincount(alli).min() >= 5
    # about 60/20/20 and, per user, train earlier than valid earlier than test
    assert abs(tr.nnz / total - 0.6) < 0.05
    for u in range(tr.n_users):
        t_tr = tr.timestamps[tr.users == u]
        t_va = va.timestamps[va.users == u]
        t_te = te.timestamps[te.users == u]
        if len(t_va):
            assert t_tr.max() <= t_va.min()
        if len(t_va) and len(t_te):
            assert t_va.max() <= t_te.min()
    # original IDs are kept
    assert set(tr.user_ids.tolist()) <= set((np.arange(60) * 10).tolist())


def test_implicit_split_random_is_seeded():
    data = _ratings(timestamps=False)
    a = implicit_split(data, k_core=3, seed=5)
    b = implicit_split(data, k_core=3, seed=5)
    c = implicit_split(data, k_core=3, seed=6)
    assert a.info["by_time"] is False
    np.testing.assert_array_equal(a.test.items, b.test.items)
    assert not np.array_equal(a.test.items, c.test.items) or not np.array_equal(a.test.users, c.test.users)


def test_implicit_split_errors():
    with pytest.raises(DataError, match="core"):
        implicit_split(_ratings(density=0.05), k_core=5)
    data = _ratings()
    with pytest.raises(ConfigError):
        implicit_split(data, k_core=0)
    with pytest.raises(ConfigError):
        implicit_split(data, fractions=(0.5, 0.5))


def test_negatives_exclude_positives_and_are_uniform():
    data = _ratings(seed=3, m=40, n=30, density=0.4, timestamps=False)
    split = implicit_split(data, k_core=1)
    tr, va = split.train, split.valid
    n = tr.n_items
    users = np.repeat(np.arange(tr.n_users), 400)
    ptr, idx = merged_csr([tr], tr.n_users, n)
    vptr, vidx = va.csr.indptr, va.csr.indices
    out = np.empty(len(users), np.int64)
    sample_negatives(users, ptr, idx, vptr, vidx, n, 11, out)
    seen = set(zip(tr.users.tolist(), tr.items.tolist())) | set(zip(va.users.tolist(), va.items.tolist()))
    assert out.min() >= 0
    assert not any((u, j) in seen for u, j in zip(users.tolist(), out.tolist()))
    # uniform over each user's non-positives: chi-square-like check on user 0
    u0 = out[users == 0]
    allowed = [j for j in range(n) if (0, j) not in seen]
    counts = np.array([np.sum(u0 == j) for j in allowed])
    assert counts.sum() == 400 and set(np.unique(u0)) <= set(allowed)
    expected = 400 / len(allowed)
    assert ((counts - expected) ** 2 / expected).sum() < 3 * len(allowed)
    # deterministic for a seed
    again = np.empty_like(out)
    sample_negatives(users, ptr, idx, vptr, vidx, n, 11, again)
    np.testing.assert_array_equal(out, again)


def test_negatives_for_dense_users():
    # user 0 has every item but 3; user 1 has all items: -1
    n = 6
    users = np.array([0, 0, 0, 1])
    ptr = np.array([0, 5, 11])
    idx = np.array([0, 1, 2, 4, 5, 0, 1, 2, 3, 4, 5], dtype=np.int32)
    out = np.empty(4, np.int64)
    sample_negatives(users, ptr, idx, np.zeros(1, np.int64), np.zeros(0, np.int32), n, 0, out)
    assert out.tolist() == [3, 3, 3, -1]


def test_lastfm_play_counts(shared_dataset):
    import lfopt

    data = lfopt.load_data(shared_dataset("lastfm/user_artist.dat"))  # user artist playcount, no header
    assert data.timestamps is None and data.values.max() > 1000
    split = implicit_split(data, threshold=100, k_core=5, seed=0)
    assert split.info["by_time"] is False and split.info["threshold"] == 100
    assert split.info["n_positives"] < int((data.values >= 100).sum()) + 1
    assert split.train.nnz > split.valid.nnz > 0 and split.test.nnz > 0
