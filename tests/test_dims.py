"""The learned-dimensions study (lfopt.experiments.dims): frequency blocks, the selection gradient
against autodiff, pruning masks pinned by the fine-tuning, the search on planted structure, and
the quick study end-to-end through ``run(args)``."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from lfopt.data.split import random_split
from lfopt.errors import ConfigError
from lfopt.experiments import dims as D


def _counts(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    c = np.floor(rng.lognormal(2.0, 1.3, n)).astype(np.int64)
    c[:25] = 0  # rows without training entries
    return c


# ------------------------------------------------------------------ blocks
@pytest.mark.parametrize("scheme", D.BLOCK_SCHEMES)
@pytest.mark.parametrize("n_blocks", [1, 3, 6])
def test_frequency_blocks_partition_rows_monotonically(scheme, n_blocks):
    counts = _counts()
    block, edges = D.frequency_blocks(counts, n_blocks, scheme)
    assert block.shape == counts.shape and len(edges) == max(n_blocks - 1, 0)
    assert block.min() >= 0 and block.max() < n_blocks  # every row in exactly one block
    assert (block[counts == 0] == 0).all()
    order = np.argsort(counts, kind="stable")
    assert (np.diff(block[order]) >= 0).all()  # the block never decreases with the count
    nonempty = [b for b in range(n_blocks) if (block == b).any()]
    for b0, b1 in zip(nonempty, nonempty[1:]):  # counts of consecutive blocks do not overlap
        assert counts[block == b0].max() < counts[block == b1].min()
    for c in np.unique(counts):  # ties share a block
        assert np.unique(block[counts == c]).size == 1
    summ = D.block_summary(block, counts, n_blocks)
    assert sum(s["rows"] for s in summ) == counts.size and sum(s["entries"] for s in summ) == counts.sum()
    if n_blocks > 1 and scheme == "log":
        # log-spaced: every block spans about the same ratio of counts
        pos = counts[counts > 0]
        ratio = np.diff(np.log(np.concatenate([[pos.min()], edges, [pos.max() + 1]])))
        assert np.allclose(ratio, ratio[0])
    if n_blocks > 1 and scheme == "entries":
        # equal entries: no block holds more than its share plus the rows that tie with its ends
        share = counts.sum() / n_blocks
        for s in summ:
            if s["rows"]:
                ties = counts[counts == s["max_count"]].sum() + counts[counts == s["min_count"]].sum()
                assert s["entries"] <= share + ties
        assert max(s["entries"] for s in summ) < 2.5 * share


def test_frequency_blocks_example_and_errors():
    block, _ = D.frequency_blocks([1, 2, 4, 8, 16, 32], 3)
    assert block.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="n_blocks"):
        D.frequency_blocks([1, 2], 0)
    with pytest.raises(ConfigError, match="scheme"):
        D.frequency_blocks([1, 2], 2, "quantile")
    with pytest.raises(ConfigError, match="counts"):
        D.frequency_blocks([-1, 2], 2)


# ------------------------------------------------------------------ model pieces
@pytest.fixture(scope="module")
def planted():
    data = D.planted_blocks(300, 200, 30000, rank=8, rare_rank=2, noise_std=0.3, signal=2.5, tail_scale=0.5, seed=0)
    inner, valid = random_split(data, 0.15, seed=1)
    return data, inner, valid


def _objective(inner, rank, lam=0.02):
    cfg = D.StudyConfig(datasets=("synthetic",), rank=rank, ranks=(rank,), lam0=0.0, lam0_b=0.0)
    return D.make_objective(inner, rank, lam, cfg)


def test_principal_basis_keeps_predictions_and_orders_dimensions(planted):
    _, inner, valid = planted
    obj = _objective(inner, 6)
    y = obj.init_params(0.3, seed=2)
    obj.als_sweep(y)
    before = np.asarray(obj.predict(y, valid.users, valid.items))
    D.principal_basis(obj, y)
    after = np.asarray(obj.predict(y, valid.users, valid.items))
    np.testing.assert_allclose(after, before, atol=2e-4)
    _, _, P, Q = obj.unpack(y)
    energy = (P.astype(np.float64) ** 2).sum(0) * (Q.astype(np.float64) ** 2).sum(0)
    assert (np.diff(energy) <= 1e-6 * energy[0]).all()  # sqrt(S) on both sides: energy = s_k^2, decreasing


def test_selection_weights_and_gradient_match_autodiff(planted):
    torch = pytest.importorskip("torch")
    _, inner, valid = planted
    f = 5
    obj = _objective(inner, f)
    y = obj.init_params(0.5, seed=3)
    obj.als_sweep(y)
    bu, _ = D.frequency_blocks(inner.user_counts(), 3)
    bi, _ = D.frequency_blocks(inner.item_counts(), 2)
    rng = np.random.default_rng(0)
    a_u = rng.uniform(0.3, 1.5, (3, f))
    a_i = rng.uniform(0.3, 1.5, (2, f))
    a_u[1, 2] = 0.0  # a dead weight: pinned, zero gradient
    # weights of the scaled factors
    w = np.array([2.0, 3.0, 5.0])
    blk = np.array([0, 1, 2])
    W = D.selection_weights(w, a_u, blk, 1e-3)
    np.testing.assert_allclose(W[0], 2.0 / a_u[0] ** 2, rtol=1e-6)
    assert W[1, 2] == np.float32(D.PIN_WEIGHT)
    # y holds p~ = a * p; the gradient of the validation MSE in a, with p fixed, against torch
    bu_, bi_, P, Q = obj.unpack(y)
    P[:] *= a_u[bu].astype(np.float32)
    Q[:] *= a_i[bi].astype(np.float32)
    vu, vi, vr = valid.users, valid.items, valid.values.astype(np.float64)
    gu, gi, mse = D.selection_gradient(obj, y, a_u, a_i, bu, bi, vu, vi, vr)
    p = torch.tensor(np.where(a_u[bu] > 0, P / np.where(a_u[bu] > 0, a_u[bu], 1.0), 0.0), dtype=torch.float64)
    q = torch.tensor(Q / a_i[bi], dtype=torch.float64)
    au = torch.tensor(a_u, requires_grad=True)
    ai = torch.tensor(a_i, requires_grad=True)
    pt = au[torch.tensor(bu, dtype=torch.long)] * p
    qt = ai[torch.tensor(bi, dtype=torch.long)] * q
    ut, it = torch.tensor(vu, dtype=torch.long), torch.tensor(vi, dtype=torch.long)
    pred = obj.mu + torch.tensor(bu_, dtype=torch.float64)[ut] + torch.tensor(bi_, dtype=torch.float64)[it] + \
        (pt[ut] * qt[it]).sum(1)
    loss = ((pred - torch.tensor(vr)) ** 2).mean()
    loss.backward()
    assert mse == pytest.approx(loss.item(), rel=1e-4)
    gref_u = au.grad.numpy().copy()
    gref_u[1, 2] = 0.0
    np.testing.assert_allclose(gu, gref_u, rtol=2e-3, atol=1e-6 * np.abs(gref_u).max())
    np.testing.assert_allclose(gi, ai.grad.numpy(), rtol=2e-3, atol=1e-6 * np.abs(gi).max())


def test_pruned_dims_pinned_and_kept_dims_solve_the_smaller_model(planted):
    """A mask keeping dims 0..k-1 for every row makes ALS the rank-k model's ALS (same init), with the
    pruned entries at ~0 by the weight alone, and exactly 0 with the projection."""
    _, inner, valid = planted
    f, k = 6, 3
    obj = _objective(inner, f)
    base = D.base_weights(obj)
    y0 = obj.init_params(0.3, seed=4)
    mask_u = np.zeros((inner.n_users, f), bool)
    mask_u[:, :k] = True
    mask_i = np.zeros((inner.n_items, f), bool)
    mask_i[:, :k] = True
    # (1) the weight alone pins the pruned entries near 0
    y = y0.copy()
    info = D.finetune(obj, y, mask_u, mask_i, base, valid, (1.0, 5.0), max_sweeps=4, patience=4, zero_pruned=False)
    assert info["max_abs_pruned"] < 1e-6
    # (2) with the projection: exactly 0, and the kept part equals the rank-k model's ALS sweeps
    y = y0.copy()
    obj.set_row_weights(np.where(mask_u, base[0][:, None], D.PIN_WEIGHT), np.where(mask_i, base[1][:, None],
                        D.PIN_WEIGHT), base[2], base[3])
    _, _, P, Q = obj.unpack(y)
    P[~mask_u] = 0.0
    Q[~mask_i] = 0.0
    small = _objective(inner, k)
    ys = small.init_params(0.3, seed=4)
    bs_u, bs_i, Ps, Qs = small.unpack(ys)
    Ps[:] = P[:, :k]
    Qs[:] = Q[:, :k]
    opt = D.masked_als(mask_u, mask_i)
    for sweep in range(1, 5):
        opt.epoch(obj, y, sweep)
        small.als_sweep(ys)
    b_u, b_i, P, Q = obj.unpack(y)
    assert (P[:, k:] == 0).all() and (Q[:, k:] == 0).all()
    np.testing.assert_allclose(P[:, :k], Ps, atol=2e-4)
    np.testing.assert_allclose(Q[:, :k], Qs, atol=2e-4)
    np.testing.assert_allclose(b_u, bs_u, atol=2e-4)
    assert D.embedding_params(mask_u, mask_i) == (inner.n_users + inner.n_items) * k


def test_mixed_masks_count_kept_entries_and_stay_zero(planted):
    _, inner, valid = planted
    f = 6
    obj = _objective(inner, f)
    base = D.base_weights(obj)
    y = obj.init_params(0.3, seed=5)
    obj.als_sweep(y)
    bu, _ = D.frequency_blocks(inner.user_counts(), 3)
    bi, _ = D.frequency_blocks(inner.item_counts(), 3)
    a_u = np.array([[1, 1, 0.1, 0.0, 0.05, 0.0], [1, 1, 1, 0.5, 0.0, 0.0], [1, 1, 1, 1, 1, 0.9]])
    a_i = np.array([[1, 0.2, 0.0, 0.0, 0.0, 0.0], [1, 1, 1, 0.0, 0.0, 0.0], [1, 1, 1, 1, 1, 1.0]])
    keep_u, keep_i, mask_u, mask_i = D.prune_masks(a_u, a_i, bu, bi, 0.3)
    assert keep_u.sum(1).tolist() == [2, 4, 6] and keep_i.sum(1).tolist() == [1, 3, 6]
    want = sum(int((bu == b).sum()) * int(keep_u[b].sum()) for b in range(3)) + \
        sum(int((bi == b).sum()) * int(keep_i[b].sum()) for b in range(3))
    assert D.embedding_params(mask_u, mask_i) == want
    info = D.finetune(obj, y, mask_u, mask_i, base, valid, (1.0, 5.0), max_sweeps=3, patience=3)
    _, _, P, Q = obj.unpack(y)
    assert (P[~mask_u] == 0).all() and (Q[~mask_i] == 0).all()
    assert np.abs(P[mask_u]).max() > 1e-2  # the kept entries are trained
    assert math.isfinite(info["valid_rmse"]) and info["max_abs_pruned"] == 0.0


# ------------------------------------------------------------------ the search
def test_search_lowers_validation_error_and_finds_the_planted_rare_rank(planted):
    """Rare users and items carry only the first 2 of 8 dimensions: the search (no L1) keeps their 2
    leading dimensions above all others, and gives their tail dimensions smaller weights than the
    frequent block's; an L1 pull shrinks the weights and kills some."""
    data, inner, valid = planted
    obj = _objective(inner, 8)
    y = obj.init_params(0.1, seed=0)
    for _ in range(10):
        obj.als_sweep(y)
    bu, _ = D.frequency_blocks(inner.user_counts(), 2, "entries")
    bi, _ = D.frequency_blocks(inner.item_counts(), 2, "entries")
    pl = data.meta["planted"]
    assert pl["rare_users"][bu == 0].mean() > 0.6 and not pl["rare_users"][bu == 1].any()
    base = D.base_weights(obj)
    D.principal_basis(obj, y)
    v0 = D.rmse_on(obj, y, valid, (1.0, 5.0))
    res = {}
    for rho in (0.0, 3e-3):
        y2 = y.copy()
        st = D.search_dims(obj, y2, valid, bu, bi, 2, 2, base, (1.0, 5.0), rho=rho, rounds=15, val_batches=2, lr=0.1)
        res[rho] = (st, D.rmse_on(obj, y2, valid, (1.0, 5.0)))
    st, v1 = res[0.0]
    assert v1 < v0 - 0.005
    assert st.history[-1]["valid_rmse"] == pytest.approx(v1)
    for a in (st.a_u, st.a_i):
        assert a[0, :2].min() > a[0, 2:].max()  # the rare block: its planted dims lead
        assert a[0, 2:].mean() < 0.8 * a[1, 2:].mean()  # ... its tail dims weigh less than the frequent block's
    st1, _ = res[3e-3]
    assert st1.a_u.mean() < st.a_u.mean() and st1.a_i.mean() < st.a_i.mean()
    assert (st1.a_u == 0).any() and (st.a_u == 0).sum() <= (st1.a_u == 0).sum()


def test_search_rejects_bad_options(planted):
    _, inner, valid = planted
    obj = _objective(inner, 2)
    y = obj.init_params(0.1, seed=0)
    b = np.zeros(inner.n_users, np.int32), np.zeros(inner.n_items, np.int32)
    with pytest.raises(ConfigError, match="rho"):
        D.search_dims(obj, y, valid, *b, 1, 1, D.base_weights(obj), (1, 5), rho=-1.0)
    with pytest.raises(ConfigError, match="masks"):
        D.finetune(obj, y, np.ones((3, 2), bool), np.ones((3, 2), bool), D.base_weights(obj), valid, (1, 5))


# ------------------------------------------------------------------ the study
def _args(argv):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    D.add_parser(sub)
    return ap.parse_args(["dims"] + argv)


def _finite(obj):
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def test_quick_study_end_to_end(tmp_path):
    out = tmp_path / "dims"
    assert D.run(_args(["--outdir", str(out), "--quick", "--quiet"])) == 0
    files = {p.name for p in out.iterdir()}
    assert {"results.json", "table.md", "pareto_synthetic.png"} <= files
    assert (out / "pareto_synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    ds = res["datasets"]["synthetic"]
    assert _finite(ds["uniform"]) and _finite(ds["learned"])
    assert [u["rank"] for u in ds["uniform"]] == [1, 2, 4, 8]
    assert ds["learned"], "no pruned model"
    m, n = ds["info"]["n_users"], ds["info"]["n_items"]
    info = ds["info"]
    assert info["n_select"] + info["n_search"] == info["n_valid"] and min(info["n_select"], info["n_search"]) > 0
    for p in ds["learned"]:
        users = [b["rows"] for b in ds["blocks"]["users"]]
        items = [b["rows"] for b in ds["blocks"]["items"]]
        assert p["params"] == sum(r * d for r, d in zip(users, p["dims_users"])) + \
            sum(r * d for r, d in zip(items, p["dims_items"]))
        assert p["bias_params"] == m + n and p["max_abs_pruned"] == 0.0
        assert 0.0 < p["test_rmse"] < 2.0
    cl = ds["claim"]
    assert cl["reference"]["rank"] == 8 and cl["reference"]["params"] == (m + n) * 8
    table = (out / "table.md").read_text()
    assert "| uniform | 8 |" in table and "learned-merged" in table and "**Claim**" in table
    # the outputs are not replaced unasked
    with pytest.raises(ConfigError, match="exists"):
        D.run(_args(["--outdir", str(out), "--quick", "--quiet"]))


def test_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="datasets"):
        D.config_from_args(_args(["--outdir", str(tmp_path), "--datasets", "ml-1m,nope"]))
    with pytest.raises(ConfigError, match="--rank"):
        D.config_from_args(_args(["--outdir", str(tmp_path), "--rank", "0"]))
    cfg = D.config_from_args(_args(["--outdir", str(tmp_path)]))
    assert cfg.datasets == ("ml-1m", "yelp") and cfg.rank == 64 and 64 in cfg.ranks
    cfg = D.config_from_args(_args(["--outdir", str(tmp_path), "--quick", "--rank", "4", "--datasets", "ml-100k"]))
    assert cfg.rank == 4 and cfg.ranks == (1, 2, 4) and cfg.datasets == ("ml-100k",)
    with pytest.raises(ConfigError, match="not found"):
        D.run_study(D.config_from_args(_args(["--outdir", str(tmp_path), "--quick", "--datasets", "ml-1m",
                                              "--data-root", str(tmp_path)])), tmp_path / "o")
