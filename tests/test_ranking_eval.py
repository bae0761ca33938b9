"""Full-ranking metrics and chunked top-k against brute-force references on tiny data."""

import math

import numpy as np
import pytest

from lfopt.data.interactions import Interactions
from lfopt.errors import ConfigError
from lfopt.eval.ranking import full_ranking_metrics, iter_topk, parse_metric, per_user_metrics, topk


def _random_sets(rng, m, n, density):
    mask = rng.random((m, n)) < density
    u, i = np.nonzero(mask)
    return Interactions(u, i, np.ones(len(u)), n_users=m, n_items=n)


def _tiny(seed=0, m=25, n=40, f=3, ties=True):
    rng = np.random.default_rng(seed)
    P = rng.normal(size=(m, f)).astype(np.float32)
    Q = rng.normal(size=(n, f)).astype(np.float32)
    if ties:
        Q[5] = Q[9]  # items 5 and 9 always tie
        Q[12] = Q[30]
        Q[13] = Q[2]
    # disjoint train / valid / test by drawing one part per cell
    part = rng.choice(4, size=(m, n), p=[0.2, 0.1, 0.15, 0.55])
    sets = []
    for k in range(3):
        u, i = np.nonzero(part == k)
        sets.append(Interactions(u, i, np.ones(len(u)), n_users=m, n_items=n))
    bias = rng.normal(size=n).astype(np.float32)
    bias[9] = bias[5]
    bias[30] = bias[12]
    bias[2] = bias[13]
    return P, Q, bias, sets


def _brute(P, Q, bias, target, exclude, ks):
    S = P.astype(np.float64) @ Q.T.astype(np.float64)
    S = (P @ Q.T).astype(np.float32) + (bias if bias is not None else 0)
    ex = set()
    for e in exclude:
        ex |= set(zip(e.users.tolist(), e.items.tolist()))
    per = {"auc": [], **{f"{name}@{k}": [] for k in ks for name in ("hr", "ndcg", "recall", "precision")}}
    for u in range(target.n_users):
        T = [i for (uu, i) in zip(target.users.tolist(), target.items.tolist()) if uu == u and (u, i) not in ex]
        if not T:
            continue
        cand = [j for j in range(target.n_items) if (u, j) not in ex]
        order = sorted(cand, key=lambda j: (-S[u, j], j))  # stable: ties by index
        pos = {j: r for r, j in enumerate(order)}
        neg = [j for j in cand if j not in T]
        aucs = []
        for i in T:
            if neg:
                wins = sum(1.0 if S[u, i] > S[u, j] else 0.5 if S[u, i] == S[u, j] else 0.0 for j in neg)
                aucs.append(wins / len(neg))
        per["auc"].append(np.mean(aucs) if aucs else np.nan)
        for k in ks:
            top = order[:k]
            hits = [r for r, j in enumerate(top) if j in T]
            per[f"hr@{k}"].append(1.0 if hits else 0.0)
            per[f"recall@{k}"].append(len(hits) / len(T))
            per[f"precision@{k}"].append(len(hits) / k)
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(T), k)))
            per[f"ndcg@{k}"].append(sum(1 / math.log2(r + 2) for r in hits) / idcg)
    return {k: float(np.nanmean(v)) for k, v in per.items()}


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("chunk", [None, 4])
def test_metrics_match_brute_force(use_bias, chunk):
    P, Q, bias, (train, valid, test) = _tiny(1)
    b = bias if use_bias else None
    ks = (1, 3, 10)
    got = full_ranking_metrics(P, Q, test, (train, valid), b, ks, chunk_size=chunk)
    ref = _brute(P, Q, b, test, (train, valid), ks)
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    assert got["n_users"] == len(np.unique(test.users))


def test_ties_are_ranked_by_item_index_and_half_counted_in_auc():
    # one user, every item scores the same: target 3 has rank 3 among 6 items, AUC 1/2
    P = np.ones((1, 1), np.float32)
    Q = np.ones((6, 1), np.float32)
    test = Interactions(np.array([0]), np.array([3]), np.ones(1), n_users=1, n_items=6)
    pu = per_user_metrics(P, Q, test, ks=(3, 4))
    assert pu["auc"][0] == 0.5
    assert pu["hr@3"][0] == 0.0 and pu["hr@4"][0] == 1.0
    assert pu["ndcg@4"][0] == pytest.approx(1 / math.log2(5))


def test_excluded_targets_are_skipped_and_activity_buckets():
    P, Q, bias, (train, valid, test) = _tiny(2, ties=False)
    # a target that is also excluded is not evaluated
    both = Interactions(np.concatenate([test.users, train.users[:3]]), np.concatenate([test.items, train.items[:3]]),
                        np.ones(test.nnz + 3), n_users=test.n_users, n_items=test.n_items)
    a = full_ranking_metrics(P, Q, both, (train, valid), ks=(5,))
    b = full_ranking_metrics(P, Q, test, (train, valid), ks=(5,))
    assert a["ndcg@5"] == pytest.approx(b["ndcg@5"]) and a["n_targets"] == b["n_targets"]
    act = train.user_counts()
    c = full_ranking_metrics(P, Q, test, (train, valid), ks=(5,), activity=act, n_buckets=3)
    buckets = c["by_activity"]
    assert sum(x["n_users"] for x in buckets) == c["n_users"]
    assert all(x["count_range"][0] <= x["count_range"][1] for x in buckets)
    weighted = sum(x["n_users"] * x["ndcg@5"] for x in buckets) / c["n_users"]
    assert weighted == pytest.approx(c["ndcg@5"])


def test_perfect_and_reversed_models():
    # scores = item index: a user whose targets are the highest items gets AUC 1
    n = 20
    P = np.ones((2, 1), np.float32)
    Q = np.arange(n, dtype=np.float32)[:, None]
    test = Interactions(np.array([0, 0, 1, 1]), np.array([19, 18, 0, 1]), np.ones(4), n_users=2, n_items=n)
    pu = per_user_metrics(P, Q, test, ks=(2,))
    assert pu["auc"].tolist() == [1.0, 0.0]
    assert pu["ndcg@2"].tolist() == [1.0, 0.0]
    assert pu["recall@2"].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("chunk", [None, 3])
def test_topk_equals_brute_force(chunk):
    P, Q, bias, (train, valid, test) = _tiny(3)
    k = 7
    items, scores = topk(P, Q, None, k, (train,), bias, chunk_size=chunk)
    S = (P @ Q.T).astype(np.float32) + bias
    seen = set(zip(train.users.tolist(), train.items.tolist()))
    for u in range(P.shape[0]):
        cand = [j for j in range(Q.shape[0]) if (u, j) not in seen]
        ref = sorted(cand, key=lambda j: (-S[u, j], j))[:k]
        assert items[u].tolist() == ref
        np.testing.assert_allclose(scores[u], S[u, ref], rtol=1e-6)
    # a subset of users, in the order given, and streaming blocks
    sub = np.array([7, 2, 19])
    items2, _ = topk(P, Q, sub, k, (train,), bias, chunk_size=chunk)
    np.testing.assert_array_equal(items2, items[sub])
    blocks = list(iter_topk(P, Q, None, k, (train,), bias, chunk_size=4))
    assert all(len(b[0]) <= 4 for b in blocks)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), items)


def test_topk_pads_users_with_few_candidates():
    P = np.ones((2, 1), np.float32)
    Q = np.arange(4, dtype=np.float32)[:, None]
    seen = Interactions(np.array([0, 0, 0]), np.array([0, 1, 3]), np.ones(3), n_users=2, n_items=4)
    items, scores = topk(P, Q, None, 3, (seen,))
    assert items[0].tolist() == [2, -1, -1] and np.isneginf(scores[0, 1:]).all()
    assert items[1].tolist() == [3, 2, 1]


def test_bad_arguments():
    P, Q, bias, (train, valid, test) = _tiny(4)
    with pytest.raises(ConfigError):
        topk(P, Q, None, 0)
    with pytest.raises(ConfigError):
        topk(P, Q, [P.shape[0]], 3)
    with pytest.raises(ConfigError):
        parse_metric("ndcg@x")
    assert parse_metric("NDCG@50") == ("ndcg", 50) and parse_metric("auc") == ("auc", None)
    with pytest.raises(ConfigError):
        full_ranking_metrics(P, Q, test, ks=(0,))
