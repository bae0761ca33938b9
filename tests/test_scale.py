"""Large-data layout at small sizes: the chunked synthetic generator and compact Interactions views."""

import numpy as np
import pytest

import lfopt
from lfopt.data.interactions import _compress
from lfopt.errors import ConfigError


def _cells(data):
    return data.users.astype(np.int64) * data.n_items + data.items


@pytest.mark.parametrize(
    "m, n, nnz, chunk",
    [(300, 200, 12_000, 1000),      # many chunks
     (50, 40, 1000, 4_000_000),     # half the cells: heavy users take the Efraimidis-Spirakis path
     (20, 500, 600, 77),            # more items than users: the cover step must fill empty items
     (400, 30, 400, 50)],           # nnz == n_users: one entry per user
)
def test_chunked_generation_is_complete_distinct_and_compact(m, n, nnz, chunk):
    data, info = lfopt.synthetic(n_users=m, n_items=n, nnz=nnz, method="chunked", chunk_size=chunk,
                                 return_info=True, seed=5)
    assert data.nnz == nnz and data.shape == (m, n)
    assert data.user_counts().min() >= 1 and data.item_counts().min() >= 1
    assert len(np.unique(_cells(data))) == nnz  # no repeated (user, item)
    assert data.users.dtype == np.int32 and data.items.dtype == np.int32
    assert data.values.dtype == np.float32 and info.clean_values.dtype == np.float32
    assert info.clean_values.shape == (nnz,)
    # Rows come grouped by user with items sorted, so the CSR view needs no permutation.
    assert np.all(np.diff(_cells(data)) > 0)


def test_chunked_values_follow_the_model_and_chunking_does_not_matter():
    kw = dict(n_users=800, n_items=500, nnz=40_000, seed=3, method="chunked", return_info=True)
    a, info = lfopt.synthetic(chunk_size=1234, **kw)
    b, _ = lfopt.synthetic(chunk_size=10**7, **kw)
    np.testing.assert_array_equal(a.users, b.users)
    np.testing.assert_array_equal(a.items, b.items)
    # The noise is drawn chunk by chunk from one stream: the same numbers whatever the chunk size.
    np.testing.assert_array_equal(a.values, b.values)
    resid = a.values.astype(np.float64) - info.clean_values
    assert np.sqrt(np.mean(resid**2)) == pytest.approx(0.5, rel=0.03)
    assert a.meta["noise_floor"] == 0.5
    assert abs(float(np.mean(a.values)) - 3.5) < 0.2


def test_chunked_degrees_are_long_tailed_like_exact():
    kw = dict(n_users=2000, n_items=1000, nnz=100_000, seed=1)
    c = lfopt.synthetic(method="chunked", **kw)
    e = lfopt.synthetic(method="exact", **kw)
    for counts in ("user_counts", "item_counts"):
        dc, de = getattr(c, counts)(), getattr(e, counts)()
        # Same kind of spread: max / mean degree within a factor 1.5 of the exact sampler's.
        ratio = (dc.max() / dc.mean()) / (de.max() / de.mean())
        assert 1 / 1.5 < ratio < 1.5, (counts, ratio)
        assert dc.max() > 3 * dc.mean()


def test_chunked_rounded_noise_floor_is_measured():
    data, info = lfopt.synthetic(n_users=200, n_items=100, nnz=4000, round_to_scale=True, method="chunked",
                                 chunk_size=999, return_info=True)
    assert set(np.unique(data.values).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    measured = float(np.sqrt(np.mean((data.values.astype(np.float64) - info.clean_values) ** 2)))
    assert data.meta["noise_floor"] == pytest.approx(measured, rel=1e-5)


def test_method_and_chunk_size_are_checked():
    with pytest.raises(ConfigError, match="method"):
        lfopt.synthetic(n_users=50, n_items=40, nnz=500, method="fast")
    with pytest.raises(ConfigError, match="chunk_size"):
        lfopt.synthetic(n_users=50, n_items=40, nnz=500, method="chunked", chunk_size=0)


def test_auto_keeps_small_datasets_unchanged():
    a = lfopt.synthetic(n_users=100, n_items=80, nnz=1500, seed=9)
    b = lfopt.synthetic(n_users=100, n_items=80, nnz=1500, seed=9, method="exact")
    np.testing.assert_array_equal(a.values, b.values)


def test_views_cost_at_most_40_bytes_per_rating():
    data = lfopt.synthetic(n_users=20_000, n_items=5000, nnz=1_000_000, method="chunked", seed=0)
    arrays = [data.users, data.items, data.values]
    for view in (data.csr, data.csc):
        arrays += [view.indptr, view.indices, view.data, view.order]
    per_rating = sum(a.nbytes for a in arrays) / data.nnz
    assert per_rating <= 40, per_rating
    assert data.csr.order.dtype == np.int32 and data.csc.order.dtype == np.int32


@pytest.mark.parametrize("seed", [0, 1])
def test_counting_sort_matches_lexsort_with_ties(seed):
    rng = np.random.default_rng(seed)
    m, n, nnz = 37, 23, 5000  # many repeated cells: the sort must be stable
    major = rng.integers(0, m, nnz).astype(np.int32)
    minor = rng.integers(0, n, nnz).astype(np.int32)
    values = rng.random(nnz).astype(np.float32)
    view = _compress(major, minor, values, m, n)
    order = np.lexsort((minor, major))
    np.testing.assert_array_equal(view.order, order)
    np.testing.assert_array_equal(view.indices, minor[order])
    np.testing.assert_array_equal(view.data, values[order])
    np.testing.assert_array_equal(view.indptr, np.r_[0, np.cumsum(np.bincount(major, minlength=m))])
    assert view.indptr.dtype == np.int64
    # Already sorted input: the identity permutation.
    sorted_view = _compress(major[order], minor[order], values[order], m, n)
    np.testing.assert_array_equal(sorted_view.order, np.arange(nnz))
