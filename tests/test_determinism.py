"""Deterministic mode: the same seed gives bit-identical models with 1 and with 2 threads.

Every numba kernel either owns disjoint rows (ALS, GN products, the sampler: fixed
chunks whatever the thread count), runs serially (mini-batch gradients), or uses a
partition fixed in advance (SGD's 8 x 8 DSGD grid up to 4 threads); the element-wise
Adam step runs without fastmath so its vector body and scalar remainder agree.
"""

import numba
import numpy as np
import pytest

import lfopt

pytestmark = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")

OPTIMIZERS = ("sgd", "adam", "als", "adago", "slf", "sslf", "gibbs")


@pytest.fixture(scope="module")
def data():
    return lfopt.synthetic(n_users=150, n_items=100, nnz=6000, seed=1)


def _with_threads(n, fn):
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        return fn()
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_rating_model_is_the_same_with_1_and_2_threads(data, optimizer):
    def fit():
        model = lfopt.LatentFactorModel(rank=4, optimizer=optimizer, epochs=30, seed=3).fit(data)
        return model.predict(data.user_ids[data.users[:400]], data.item_ids[data.items[:400]], clip=False)

    one, two = _with_threads(1, fit), _with_threads(2, fit)
    assert np.isfinite(one).all()
    assert np.array_equal(one, two), f"{optimizer}: max difference {np.abs(one - two).max():.3g}"


@pytest.mark.parametrize("optimizer", ("adam", "sgd"))
def test_bpr_is_the_same_with_1_and_2_threads(data, optimizer):
    def fit():
        return lfopt.BPRMF(rank=4, epochs=3, seed=3, optimizer=optimizer, patience=None).fit(data, data)._factors()[0]

    one, two = _with_threads(1, fit), _with_threads(2, fit)
    assert np.array_equal(one, two)


def test_a_different_seed_gives_a_different_model(data):
    """The check above could pass with a model that ignores its randomness: it does not."""
    a = lfopt.LatentFactorModel(rank=4, optimizer="sgd", epochs=5, seed=3).fit(data)
    b = lfopt.LatentFactorModel(rank=4, optimizer="sgd", epochs=5, seed=4).fit(data)
    assert not np.array_equal(a.params_, b.params_)
