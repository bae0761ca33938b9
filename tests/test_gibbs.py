"""Gibbs sampling of the Bayesian LF model (METHODS.md section 5c): kernels against dense numpy,
hyper-parameter draws, determinism, the posterior-mean model, save/load and the CLI."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import lfopt
from lfopt.errors import ConfigError
from lfopt.kernels import gibbs as KG
from lfopt.models.lf import LFObjective
from lfopt.optim.base import make_optimizer
from lfopt.optim.gibbs import (GibbsSampler, PosteriorSamples, noise_shape, sample_normal_gamma,
                               sample_normal_wishart, sample_wishart)

NONE2 = np.empty((0, 3), np.float32)
NONE1 = np.empty(0, np.float32)
NOCHOL, NODF = np.empty((0, 0)), np.empty((0, 2))  # no degrees-of-freedom count


# ---------------------------------------------------------------- small problem
@pytest.fixture(scope="module")
def tiny():
    """A tiny rating matrix, fixed item factors/biases and a random SPD prior."""
    data = lfopt.synthetic(n_users=30, n_items=20, nnz=300, seed=0)
    rng = np.random.default_rng(0)
    f = 3
    Q = rng.standard_normal((20, f)).astype(np.float32)
    bi = rng.standard_normal(20).astype(np.float32)
    mu = np.float32(data.values.mean())
    return data, Q, bi, mu, rng


def _prior(rng, g):
    B = rng.standard_normal((g, g))
    return B @ B.T + np.eye(g), rng.standard_normal(g)


def _dense_posterior(data, Q, bi, mu, use_bias, alpha, prec, lin, u, ridge=0.0):
    csr = data.csr
    s, e = csr.indptr[u], csr.indptr[u + 1]
    items = csr.indices[s:e]
    Z = Q[items].astype(np.float64)
    t = csr.data[s:e].astype(np.float64) - mu
    if use_bias:
        Z = np.column_stack([Z, np.ones(len(items))])
        t = t - bi[items]
    A = alpha * Z.T @ Z + prec + ridge * len(items) * np.eye(Z.shape[1])
    return np.linalg.solve(A, alpha * Z.T @ t + lin), A


@pytest.mark.parametrize("use_bias", [True, False])
def test_row_conditional_matches_dense_numpy(tiny, use_bias):
    data, Q, bi, mu, rng = tiny
    g = 4 if use_bias else 3
    prec, lin = _prior(rng, g)
    csr = data.csr
    for u in (0, 7, 29):
        mean, L = KG.row_posterior(csr.indptr, csr.indices, csr.data, mu, bi, Q, use_bias, 1.7, prec, lin, u)
        ref_mean, A = _dense_posterior(data, Q, bi, mu, use_bias, 1.7, prec, lin, u)
        assert np.allclose(L, np.tril(L))
        np.testing.assert_allclose(L @ L.T, A, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)


def test_sample_side_means_are_the_dense_ridge_and_posterior_solutions(tiny):
    data, Q, bi, mu, rng = tiny
    csr, m = data.csr, data.n_users
    prec, lin = _prior(rng, 4)
    X, bu, sse = np.zeros((m, 3), np.float32), np.zeros(m, np.float32), np.zeros(4)
    Xm, bm = np.zeros((m, 3), np.float32), np.zeros(m, np.float32)
    df = np.full((4, 2), np.nan)
    KG.sample_side(csr.indptr, csr.indices, csr.data, mu, bi, Q, True, 1.7, prec, lin, 0.0, 0.0, np.uint64(3), True,
                   4, X, bu, sse, Xm, bm, np.linalg.cholesky(prec), df)
    hat_trace = hat_trace2 = 0.0
    for u in range(m):
        ref, A = _dense_posterior(data, Q, bi, mu, True, 1.7, prec, lin, u)
        np.testing.assert_allclose(np.r_[Xm[u], bm[u]], ref, rtol=1e-4, atol=1e-5)
        # tr(H_u) = tr(alpha Z^T Z A_u^-1), Z the row's design (item factors, 1)
        Hm = np.linalg.solve(A, A - prec)  # similar to H_u: the same trace and trace of the square
        hat_trace += np.trace(Hm)
        hat_trace2 += np.trace(Hm @ Hm)
    # the effective number of parameters, summed per chunk
    assert df[:, 0].sum() == pytest.approx(hat_trace, rel=1e-6)
    assert df[:, 1].sum() == pytest.approx(hat_trace2, rel=1e-6)
    assert 0 < df[:, 1].sum() < df[:, 0].sum() < min(4 * m, data.nnz)
    # the residuals of the new values, summed per chunk
    pred = mu + bu[data.users] + bi[data.items] + np.einsum("ij,ij->i", X[data.users], Q[data.items])
    assert sse.sum() == pytest.approx(float(((data.values - pred) ** 2).sum()), rel=1e-4)
    # draw=False with alpha 1, no prior and a count-weighted ridge: ALS's exact update
    KG.sample_side(csr.indptr, csr.indices, csr.data, mu, bi, Q, True, 1.0, np.zeros((4, 4)), np.zeros(4), 0.3, 0.3,
                   np.uint64(0), False, 4, X, bu, sse, NONE2, NONE1, NOCHOL, NODF)
    for u in range(m):
        ref, _ = _dense_posterior(data, Q, bi, mu, True, 1.0, np.zeros((4, 4)), np.zeros(4), u, ridge=0.3)
        np.testing.assert_allclose(np.r_[X[u], bu[u]], ref, rtol=1e-4, atol=1e-5)


def test_draws_have_the_conditional_mean_and_covariance(tiny):
    data, Q, bi, mu, rng = tiny
    csr, m = data.csr, data.n_users
    prec, lin = _prior(rng, 4)
    X, bu, sse = np.zeros((m, 3), np.float32), np.zeros(m, np.float32), np.zeros(4)
    u, n = 5, 6000
    draws = np.empty((n, 4))
    for s in range(n):
        KG.sample_side(csr.indptr, csr.indices, csr.data, mu, bi, Q, True, 1.7, prec, lin, 0.0, 0.0, np.uint64(s),
                       True, 4, X, bu, sse, NONE2, NONE1, NOCHOL, NODF)
        draws[s] = np.r_[X[u], bu[u]]
    mean, A = _dense_posterior(data, Q, bi, mu, True, 1.7, prec, lin, u)
    C = np.linalg.inv(A)
    sd = np.sqrt(np.diag(C))
    assert np.all(np.abs(draws.mean(0) - mean) < 4.5 * sd / math.sqrt(n))  # 4.5 standard errors
    emp = np.cov(draws.T)
    # covariance entries: standard error about sqrt((C_ii C_jj + C_ij^2) / n)
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C ** 2) / n)
    assert np.all(np.abs(emp - C) < 5 * se)


def test_row_normals_are_standard_normal_and_per_row():
    out = np.empty(200001)
    KG.row_normals(np.uint64(3), 7, out, len(out))
    assert abs(out.mean()) < 0.01 and abs(out.var() - 1) < 0.01
    assert abs(np.mean(out ** 4) - 3) < 0.05  # Gaussian kurtosis
    other = np.empty(10)
    KG.row_normals(np.uint64(3), 8, other, 10)
    again = np.empty(10)
    KG.row_normals(np.uint64(3), 7, again, 10)
    assert np.array_equal(again, out[:10]) and not np.allclose(other, out[:10])


def test_sample_side_does_not_depend_on_the_work_partition(tiny):
    data, Q, bi, mu, rng = tiny
    csr, m = data.csr, data.n_users
    prec, lin = _prior(rng, 4)
    outs = []
    for chunks in (1, 3, 64):
        X, bu, sse = np.zeros((m, 3), np.float32), np.zeros(m, np.float32), np.zeros(chunks)
        KG.sample_side(csr.indptr, csr.indices, csr.data, mu, bi, Q, True, 1.7, prec, lin, 0.0, 0.0, np.uint64(9),
                       True, chunks, X, bu, sse, NONE2, NONE1, NOCHOL, NODF)
        outs.append((X, bu))
    for X, bu in outs[1:]:
        assert np.array_equal(X, outs[0][0]) and np.array_equal(bu, outs[0][1])


def test_batched_cholesky_matches_numpy():
    rng = np.random.default_rng(1)
    g = 7
    mats = [(lambda B: B @ B.T + np.eye(g))(rng.standard_normal((g, g))) for _ in range(KG.LANES)]
    A = np.stack(mats, axis=-1)
    h = rng.standard_normal((g, KG.LANES))
    inv = np.empty((g, KG.LANES))
    x = h.copy()
    KG.batched_cholesky(A, g, inv)
    KG.batched_solve_lower(A, inv, x, g)
    KG.batched_solve_lower_t(A, inv, x, g)
    for ln in range(KG.LANES):
        L = np.tril(A[:, :, ln])
        np.testing.assert_allclose(L, np.linalg.cholesky(mats[ln]), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(x[:, ln], np.linalg.solve(mats[ln], h[:, ln]), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------- hyper-parameters
def test_wishart_draws_have_mean_nu_w():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((3, 3))
    W = B @ B.T / 3 + 0.5 * np.eye(3)
    draws = np.array([sample_wishart(rng, W, 7.0) for _ in range(4000)])
    np.testing.assert_allclose(draws.mean(0), 7.0 * W, atol=0.15 * np.abs(7 * W).max())


def test_hyper_posteriors_concentrate_on_the_truth():
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.5], [0.5, 2.0]])
    X = rng.multivariate_normal([1.0, -2.0], cov, size=20000)
    Lam, mu = sample_normal_wishart(rng, X)
    np.testing.assert_allclose(Lam, np.linalg.inv(cov), rtol=0.05, atol=0.02)
    np.testing.assert_allclose(mu, [1.0, -2.0], atol=0.05)
    lam, mu = sample_normal_gamma(rng, X, np.zeros(2))
    lam, mu = sample_normal_gamma(rng, X, mu)
    np.testing.assert_allclose(lam, 1 / np.diag(cov), rtol=0.05)
    np.testing.assert_allclose(mu, [1.0, -2.0], atol=0.05)


# ---------------------------------------------------------------- kept samples
def test_posterior_store_thins_evenly_and_keeps_exact_means():
    rng = np.random.default_rng(0)
    m, n, f = 6, 5, 2
    store = PosteriorSamples(m, n, f, True, max_samples=4)
    rows, cols = np.array([0, 1, 5, 3]), np.array([4, 0, 2, 2])
    store.track(rows, cols)
    samples = []
    for epoch in range(1, 11):
        s = [rng.standard_normal(k).astype(np.float32) for k in (m, n)] + \
            [rng.standard_normal(shape).astype(np.float32) for shape in ((m, f), (n, f))]
        samples.append(s)
        store.offer(*s, epoch)
    assert store.epochs == [1, 5, 9] and store.stride == 4 and store.count == 3
    kept = [samples[e - 1] for e in store.epochs]
    ref_dots = np.mean([np.einsum("ij,ij->i", s[2][rows], s[3][cols]) for s in kept], axis=0)
    np.testing.assert_allclose(store.tracked_dot_mean(), ref_dots, rtol=1e-6)
    bu, bi, U, V = store.finalize()
    np.testing.assert_allclose(U @ V.T, np.mean([s[2] @ s[3].T for s in kept], axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bu, np.mean([s[0] for s in kept], axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bi, np.mean([s[1] for s in kept], axis=0), rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError):
        store.offer(*samples[0], 11)


def test_posterior_store_truncates_to_an_epoch():
    store = PosteriorSamples(3, 2, 1, False, max_samples=10)
    for epoch in range(1, 7):
        store.offer(None, None, np.full((3, 1), epoch, np.float32), np.ones((2, 1), np.float32), epoch)
    store.truncate(4)
    assert store.count == 4 and store.epochs == [1, 2, 3, 4]
    _, _, U, V = store.finalize()
    np.testing.assert_allclose(U @ V.T, np.full((3, 2), 2.5), rtol=1e-6)


# ------------------------------------------------------------------ the sampler
def test_options_are_checked_and_named():
    for bad in (dict(prior="laplace"), dict(burn_in=-1), dict(thin=0), dict(max_samples=0),
                dict(warm_start=1.5), dict(rao_blackwell="yes"), dict(warm_lambda=-1.0), dict(noise="student")):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            make_optimizer("gibbs", **bad)
    with pytest.raises(ConfigError, match="lr"):
        make_optimizer("gibbs", lr=0.1)
    with pytest.raises(ConfigError, match="rho"):
        make_optimizer("gibbs", rho=0.05)
    assert isinstance(make_optimizer("GIBBS"), GibbsSampler) and GibbsSampler.is_sampler


def _hat_traces(data, X, b_other_unused, prec, alpha, by_items):
    """(sum tr H, sum tr H^2) over the rows of one side, directly: A = alpha Z^T Z + prec,
    Z = (the other side's factors of the row's entries, 1), H ~ alpha A^-1 Z^T Z."""
    view = data.csc if by_items else data.csr
    tr1 = tr2 = 0.0
    for r in range(len(view.indptr) - 1):
        idx = view.indices[view.indptr[r]:view.indptr[r + 1]]
        Z = np.column_stack([X[idx].astype(np.float64), np.ones(len(idx))])
        A = alpha * Z.T @ Z + prec
        H = np.linalg.solve(A, alpha * Z.T @ Z)
        tr1 += np.trace(H)
        tr2 += np.trace(H @ H)
    return tr1, tr2


@pytest.mark.parametrize("noise", ["dof", "dof-sample"])
def test_noise_dof_subtracts_the_hat_traces_of_the_sweep(noise):
    """After a sweep, df is sum tr(H) (or tr(H) - tr(H^2)) of both sides' conditionals, computed
    here directly; the next alpha is Gamma((1 + |K| - df)/2, rate (1 + SSE)/2)."""
    data = lfopt.synthetic(n_users=40, n_items=30, nnz=500, seed=3)
    obj = LFObjective(data, 4, lam=0.05)
    y = obj.init_params(0.1, 0)
    opt = GibbsSampler(burn_in=0, noise=noise, df_every=1, seed=1)
    for e in range(1, 4):
        info = opt.epoch(obj, y, e)
    st = opt._st
    # the item side was drawn given the final P and the sweep's alpha and prior
    ti1, ti2 = _hat_traces(data, st["P"], None, st["prec_i"], st["alpha"], True)
    assert st["df_i"][:, 0].sum() == pytest.approx(ti1, rel=1e-5)
    assert st["df_i"].shape[1] == (1 if noise == "dof" else 2)
    if noise == "dof-sample":
        assert st["df_i"][:, 1].sum() == pytest.approx(ti2, rel=1e-5)
    tr = st["df_u"].sum(axis=0) + st["df_i"].sum(axis=0)
    df = tr[0] if noise == "dof" else tr[0] - tr[1]
    assert info["df"] == pytest.approx(df) and 0 < df < data.nnz
    # the next draw uses that df
    a = opt._draw_alpha(np.random.default_rng(5), st)
    b = np.random.default_rng(5).gamma((1 + data.nnz - df) / 2, 2 / (1 + st["sse"]))
    assert a == pytest.approx(b, rel=1e-12)
    assert noise_shape(100, 30.0) == 35.5 and noise_shape(100, 500.0) == 0.5


def test_df_every_holds_df_between_its_sweeps():
    """With df_every=k the df of sweep 0, k, 2k... is the one the draws use until the next; those
    sweeps compute exactly what df_every=1 computes from the same state."""
    data = lfopt.synthetic(n_users=40, n_items=30, nnz=500, seed=3)
    obj = LFObjective(data, 4, lam=0.05)
    y = obj.init_params(0.1, 0)
    opt = GibbsSampler(burn_in=0, noise="dof-sample", df_every=3, seed=1)
    dfs = [opt.epoch(obj, y, e)["df"] for e in range(1, 8)]
    assert dfs[0] == dfs[1] == dfs[2] and dfs[3] == dfs[4] == dfs[5]
    assert dfs[3] != dfs[0] and dfs[6] != dfs[3]
    # sweep 6 recomputed df from its own conditionals
    st = opt._st
    ti1, ti2 = _hat_traces(data, st["P"], None, st["prec_i"], st["alpha"], True)
    assert st["df_i"][:, 0].sum() == pytest.approx(ti1, rel=1e-5)
    assert st["df_i"][:, 1].sum() == pytest.approx(ti2, rel=1e-5)
    with pytest.raises(ConfigError, match="df_every"):
        GibbsSampler(df_every=0)


@pytest.mark.parametrize("shape, rank, expect", [((60, 50, 600), 4, "dof-sample"),
                                                  ((60, 50, 1100), 4, "dof-sample"),
                                                  ((60, 50, 1101), 4, "gibbs"),
                                                  ((60, 50, 1500), 4, "gibbs")])
def test_auto_noise_follows_the_parameter_count(shape, rank, expect):
    """noise="auto" (the default) corrects the draw when (m + n)(f + 1) >= |K| / 2: 110 rows x 5 =
    550 parameters: up to 1100 ratings."""
    from lfopt.optim.gibbs import resolve_noise

    m, n, nnz = shape
    assert resolve_noise("auto", m, n, rank, nnz) == expect
    assert resolve_noise("gibbs", m, n, rank, nnz) == "gibbs"
    data = lfopt.synthetic(n_users=m, n_items=n, nnz=nnz, seed=3)
    obj = LFObjective(data, rank, lam=0.05)
    y = obj.init_params(0.1, 0)
    opt = GibbsSampler(burn_in=0, seed=1)
    assert opt.noise == "auto" and opt.noise_ is None
    info = opt.epoch(obj, y, 1)
    assert opt.noise_ == expect and (("df" in info) == (expect != "gibbs"))


def test_noise_dof_lowers_alpha_where_parameters_abound():
    """A sparse set with about as many factor parameters as ratings: the plain conditional
    believes the noise is smaller than the fit leaves; subtracting df gives a smaller alpha."""
    data = lfopt.synthetic(n_users=120, n_items=90, nnz=1500, rank=2, noise_std=1.0, seed=4)
    alphas = {}
    for noise in ("gibbs", "dof"):
        obj = LFObjective(data, 6, lam=0.05)
        y = obj.init_params(0.1, 0)
        opt = GibbsSampler(burn_in=0, noise=noise, seed=2)
        alphas[noise] = np.mean([opt.epoch(obj, y, e)["alpha"] for e in range(1, 61)][20:])
    assert alphas["dof"] < 0.9 * alphas["gibbs"]


def test_objective_without_the_lf_layout_is_refused(small_synthetic):
    from lfopt.models.base import Objective, ParamLayout

    class Other(Objective):
        name = "other"
        capabilities = frozenset({"als_sweep", "row_blocks"})
        layout = ParamLayout((("W", (3, 3)),))

    with pytest.raises(ConfigError, match="gibbs"):
        make_optimizer("gibbs").check(Other())


def test_an_epoch_writes_the_sample_and_reports(small_synthetic):
    obj = LFObjective(small_synthetic, 3, lam=0.05)
    opt = make_optimizer("gibbs", warm_start=2, burn_in=1, seed=4)
    y = obj.init_params(0.1, seed=0)
    infos = [opt.epoch(obj, y, e) for e in range(1, 6)]
    assert [i["sampling"] for i in infos] == [0, 0, 1, 1, 1]
    assert [i["kept"] for i in infos] == [0, 0, 0, 1, 2]
    assert all(i["alpha"] > 0 for i in infos[2:])
    bu, bi, P, Q = obj.layout.unpack(y)
    st = opt._st
    assert np.array_equal(P, st["P"]) and np.array_equal(Q, st["Q"]) and np.array_equal(bu, st["bu"])


def test_a_time_budget_too_short_for_the_burn_in_averages_its_second_half(small_synthetic):
    opt = make_optimizer("gibbs", burn_in=20, budget=1.0)
    st = {"sweep_seconds": []}
    assert opt._burn_in_now(st) == 20  # no sweep timed yet
    st["sweep_seconds"] = [0.1, 0.1]  # the budget holds about 10 sweeps: discard 5
    assert opt._burn_in_now(st) == 5
    st["sweep_seconds"] = [0.001] * 3  # 1000 sweeps: burn_in
    assert opt._burn_in_now(st) == 20
    st["burn_in"] = 5  # fixed once the burn-in is over, whatever the later sweeps take
    assert opt._burn_in_now(st) == 5
    assert make_optimizer("gibbs", burn_in=20)._burn_in_now({"sweep_seconds": [10.0]}) == 20  # no budget
    for bad in (0, -1.0, float("nan"), True, "5"):
        with pytest.raises(ConfigError, match="budget"):
            make_optimizer("gibbs", budget=bad)


class HalfSecondSweeps:
    """A clock under which every Gibbs sweep takes 0.5 s (each reading 0.5 s after the last)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 0.5
        return self.now


def test_a_run_whose_budget_holds_fewer_sweeps_than_the_burn_in_keeps_samples(small_synthetic, monkeypatch):
    from lfopt.optim import gibbs as G

    monkeypatch.setattr(G, "time", HalfSecondSweeps())
    obj = LFObjective(small_synthetic, 3, lam=0.05)
    opt = make_optimizer("gibbs", burn_in=20, budget=6.0)  # 12 sweeps: the first 6 discarded
    y = obj.init_params(0.1, seed=0)
    infos = [opt.epoch(obj, y, e) for e in range(1, 13)]
    assert opt._st["burn_in"] == 6 and [i["kept"] for i in infos] == [0] * 6 + list(range(1, 7))


def test_progress_of_a_sampler_shows_its_noise_level(small_synthetic, capsys):
    """A sampler's lines show the sampled noise level 1/sqrt(alpha), not the penalized loss of a draw
    (which rises as the factors leave their small start); other optimizers keep train_loss."""
    model = lfopt.LatentFactorModel(optimizer="gibbs", rank=3, epochs=4, burn_in=1, seed=0,
                                    verbose=True).fit(small_synthetic)
    lines = capsys.readouterr().err.splitlines()
    header = next(line.split() for line in lines if line.split()[:1] == ["epoch"])
    assert header[:3] == ["epoch", "noise_std", "train_rmse"] and "samples" in header
    rows = [line.split() for line in lines if line.split()[:1] in (["1"], ["2"], ["3"], ["4"])]
    assert len(rows) == 4
    for row, hist in zip(rows, model.history_):
        assert hist["noise_std"] == pytest.approx(hist["alpha"] ** -0.5)
        assert float(row[1]) == pytest.approx(hist["noise_std"], abs=1e-4)
    lfopt.LatentFactorModel(optimizer="als", rank=3, epochs=2, seed=0, verbose=True).fit(small_synthetic)
    header = next(line.split() for line in capsys.readouterr().err.splitlines() if line.split()[:1] == ["epoch"])
    assert header[:2] == ["epoch", "train_loss"] and "noise_std" not in header


def _fit(data, **kw):
    params = dict(rank=4, optimizer="gibbs", epochs=40, seed=3, validation=0, keep_samples=True)  # 20 samples
    params.update(kw)
    return lfopt.LatentFactorModel(**params).fit(data)


def test_fit_is_deterministic_given_the_seed(small_split):
    train, test = small_split
    a, b = _fit(train), _fit(train)
    c = _fit(train, seed=4)
    pa, pb, pc = (m.predict(test.user_ids[test.users], test.item_ids[test.items]) for m in (a, b, c))
    assert np.array_equal(pa, pb)
    assert not np.allclose(pa, pc)
    assert a.n_samples_ == 20 and a.factors()[2].shape == (train.n_users, 20 * 4)


def test_deterministic_whatever_the_thread_count(small_split):
    import numba

    train, test = small_split
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _fit(train, epochs=12).predict(test.user_ids[test.users], test.item_ids[test.items])
    finally:
        numba.set_num_threads(before)
    many = _fit(train, epochs=12).predict(test.user_ids[test.users], test.item_ids[test.items])
    assert np.array_equal(one, many)


def test_posterior_mean_reaches_the_noise_floor_and_beats_als_at_a_poor_lambda():
    data = lfopt.synthetic(n_users=400, n_items=300, nnz=45000, rank=5, noise_std=0.5, seed=0)
    train, test = lfopt.random_split(data, 0.1, seed=0)
    floor = data.meta["noise_floor"]
    # rank 12 > the true rank 5: a Bayesian average does not need lambda, ALS does
    gibbs = lfopt.LatentFactorModel(rank=12, optimizer="gibbs", epochs=60, seed=0, validation=0).fit(train)
    als = lfopt.LatentFactorModel(rank=12, optimizer="als", epochs=15, lam=0.001, lam0=0.0, lam_b=None,
                                  lam0_b=None, seed=0, validation=0, init_scale=1.0).fit(train)
    g_rmse, a_rmse = gibbs.evaluate(test)["rmse"], als.evaluate(test)["rmse"]
    assert g_rmse < 1.10 * floor  # measured 1.053
    assert g_rmse < a_rmse - 0.05  # ALS: 1.22 x the floor


def test_running_mean_is_the_validation_metric_and_burn_in_is_never_cut(small_split):
    train, valid = small_split
    model = lfopt.LatentFactorModel(rank=3, optimizer="gibbs", keep_samples=True, epochs=40, patience=1, seed=1, warm_start=3,
                                    burn_in=6).fit(train, valid)
    hist = model.history_
    first_kept = 3 + 6 + 1
    assert len(hist) >= first_kept  # patience 1 cannot stop during warm start or burn-in
    for row in hist[:first_kept - 1]:
        assert row["kept"] == 0 and math.isnan(row["valid_rmse"]) and math.isfinite(row["valid_sample_rmse"])
    assert hist[first_kept - 1]["kept"] == 1 and math.isfinite(hist[first_kept - 1]["valid_rmse"])
    best = model.train_result_.best_epoch
    assert model.n_samples_ == best - first_kept + 1  # samples kept up to the best epoch
    assert model.evaluate(valid)["rmse"] == pytest.approx(hist[best - 1]["valid_rmse"], abs=2e-6)


def test_without_patience_the_last_row_is_the_final_model(small_split):
    train, valid = small_split
    model = lfopt.LatentFactorModel(rank=3, optimizer="gibbs", keep_samples=True, epochs=15, patience=None, seed=2,
                                    burn_in=5).fit(train, valid)
    assert model.n_samples_ == 15 - 5
    assert model.evaluate(valid)["rmse"] == pytest.approx(model.history_[-1]["valid_rmse"], abs=2e-6)
    # the running mean beats the single last sample
    assert model.history_[-1]["valid_rmse"] < model.history_[-1]["valid_sample_rmse"]


def test_too_few_epochs_keep_no_sample_and_warn(small_split):
    train, _ = small_split
    with pytest.warns(RuntimeWarning, match="kept no sample"):
        model = _fit(train, epochs=3)
    assert model.n_samples_ == 0 and model.factors()[2].shape == (train.n_users, 4)


@pytest.mark.parametrize("prior,rb,bias", [("normal-gamma", True, True), ("normal-wishart", False, True),
                                           ("normal-wishart", True, False)])
def test_priors_and_options_fit(small_split, prior, rb, bias):
    train, test = small_split
    model = _fit(train, prior=prior, rao_blackwell=rb, use_bias=bias, thin=2, max_samples=4)
    assert model.n_samples_ <= 4
    assert model.evaluate(test)["rmse"] < 1.3 * lfopt.LatentFactorModel(rank=1, optimizer="als", epochs=1,
                                                                        validation=0).fit(train).evaluate(test)["rmse"]


def test_posterior_model_save_load_round_trip(small_split, tmp_path):
    train, test = small_split
    model = _fit(train)
    path = model.save(tmp_path / "gibbs.npz")
    back = lfopt.load(path)
    users, items = test.user_ids[test.users], test.item_ids[test.items]
    assert back.n_samples_ == model.n_samples_ == 20
    np.testing.assert_array_equal(back.predict(users, items), model.predict(users, items))
    assert back.evaluate(test) == model.evaluate(test)
    ids, scores = model.recommend(users[:5], k=4)
    ids2, scores2 = back.recommend(users[:5], k=4)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_allclose(scores, scores2)


def test_damaged_posterior_is_reported(small_split, tmp_path):
    train, _ = small_split
    path = _fit(train, epochs=8, burn_in=3).save(tmp_path / "m.npz")
    with np.load(path) as z:
        files = dict(z)
    files["posterior_P"] = files["posterior_P"][:, :-1]
    np.savez(tmp_path / "bad.npz", **files)
    with pytest.raises(lfopt.ModelFileError, match="posterior"):
        lfopt.load(tmp_path / "bad.npz")


def test_posterior_predictions_are_the_mean_over_samples(small_split):
    train, test = small_split
    model = _fit(train, epochs=9, rao_blackwell=False, burn_in=4)
    bu, bi, P, Q = model.factors()
    S = model.n_samples_
    r, c = test.users[:50], test.items[:50]
    seen = (model.user_counts_[r] > 0) & (model.item_counts_[c] > 0)
    per_sample = [np.einsum("ij,ij->i", P[r, s * 4:(s + 1) * 4], Q[c, s * 4:(s + 1) * 4]) * S for s in range(S)]
    ref = model.mu_ + bu[r] + bi[c] + np.mean(per_sample, axis=0)
    pred, _ = model._predict_indices(r, c, clip=False)
    np.testing.assert_allclose(pred[seen], ref[seen], rtol=1e-5)


def test_torch_backend_samples_the_same_chain(small_split):
    pytest.importorskip("torch")
    train, test = small_split
    a = _fit(train, epochs=10)
    b = _fit(train, epochs=10, backend="torch")
    users, items = test.user_ids[test.users], test.item_ids[test.items]
    np.testing.assert_allclose(a.predict(users, items), b.predict(users, items), rtol=1e-5, atol=1e-5)


def test_cli_trains_with_gibbs(tmp_path, small_ratings_file):
    from lfopt.commands import train as train_cmd

    if "gibbs" not in train_cmd.OPTIMIZERS:
        pytest.skip("lfopt train does not offer --optimizer gibbs yet (lfopt/commands/train.py OPTIMIZERS)")
    from lfopt.cli import main

    out = tmp_path / "r.json"
    assert main(["train", "--data", str(small_ratings_file), "--optimizer", "gibbs", "--rank", "3", "--epochs", "30",
                 "--output", str(out), "--quiet"]) == 0
    import json

    summary = json.loads(out.read_text())
    assert math.isfinite(summary["test_rmse"])


def test_few_samples_in_the_time_budget_warn():
    """A sampler stopped by its time budget with fewer than FEW_SAMPLES samples says so; the same
    samples after a planned number of sweeps (or enough of them) do not."""
    from types import SimpleNamespace

    from lfopt.estimators.lf import _posterior_from

    data = lfopt.synthetic(n_users=40, n_items=30, nnz=500, seed=3)
    obj = LFObjective(data, 3, lam=0.05)
    y = obj.init_params(0.1, 0)
    opt = GibbsSampler(burn_in=0, seed=1)
    for e in range(1, 6):
        opt.epoch(obj, y, e)
    with pytest.warns(RuntimeWarning, match="time budget left 5 posterior samples"):
        assert _posterior_from(opt, SimpleNamespace(stopped="time_budget", best_epoch=None), 1.0) is not None
    opt2 = GibbsSampler(burn_in=0, seed=1)
    for e in range(1, 6):
        opt2.epoch(obj, y, e)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _posterior_from(opt2, SimpleNamespace(stopped="max_epochs", best_epoch=None), 1.0)


def test_preset_rank_is_capped_at_the_mean_ratings_per_row(tmp_path):
    """preset="accurate" fits at most 2 |K| / (m + n) dimensions (rank_); the model file, the
    posterior's sample count and fold-in follow the fitted rank; other fits keep ``rank``."""
    data = lfopt.synthetic(n_users=300, n_items=200, nnz=2000, seed=2)  # 8 ratings a row
    model = lfopt.LatentFactorModel(rank=32, preset="accurate", epochs=30, keep_samples=True).fit(data)
    assert model.rank == 32 and model.rank_ == 8
    assert model.factors()[2].shape[1] == 8 * model.n_samples_ and model.n_samples_ == 15  # 30 sweeps - 15
    model.save(tmp_path / "m.npz")
    back = lfopt.load(tmp_path / "m.npz")
    assert back.rank_ == 8 and back.n_samples_ == 15
    np.testing.assert_allclose(back.predict([0, 1], [0, 1]), model.predict([0, 1], [0, 1]), rtol=1e-6)
    items, _ = back.recommend(0, k=3)
    assert len(items) == 3
    back.fold_in(10**6, [0, 1, 2], [4.0, 3.0, 5.0])
    assert np.all(np.isfinite(back.predict([10**6] * 3, [3, 4, 5])))
    plain = lfopt.LatentFactorModel(rank=32, optimizer="als", epochs=2, validation=None).fit(data)
    assert plain.rank_ == 32
    dense = lfopt.synthetic(n_users=60, n_items=50, nnz=1500, seed=2)  # 27 a row: rank 5 stays
    assert lfopt.LatentFactorModel(rank=5, preset="accurate", epochs=25).fit(dense).rank_ == 5


def test_cli_reports_the_capped_rank(tmp_path, capsys):
    import json

    from lfopt.cli import main

    out = tmp_path / "r.json"
    assert main(["train", "--preset", "accurate", "--rank", "32", "--n-users", "300", "--n-items", "200", "--nnz",
                 "2000", "--epochs", "25", "--output", str(out)]) == 0
    assert "rank 7 (capped from 32 at the mean ratings per row)" in capsys.readouterr().out
    assert json.loads(out.read_text())["rank_fitted"] == 7
