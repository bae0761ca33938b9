"""BPR-MF (METHODS.md section 4) as an objective of the protocol.

x_ui = p_u . q_i (+ b_i); a triple (u, i, j) of a positive i and a sampled
non-interacted j costs softplus(-(x_ui - x_uj)) plus the regularizer's penalty
Lambda_r * theta_r^2 for every occurrence of a row r in the batch.  Parameters
are one flat vector laid out as ``P (m f), Q (n f), b_i (n or 0)``.

Capabilities: ``loss`` (the mean BPR loss over a fixed sample of triples, one
negative per training positive: deterministic, so the trainer can compare
epochs) and ``bpr_epoch``: one epoch of mini-batch SGD or lazy Adam over
freshly sampled triples, with lambdaOpt's Lambda step after each training step
when the regularizer learns Lambda.  The epoch runs in the backend's fused
kernel (numba: :func:`lfopt.kernels.bpr.bpr_train`).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_backend
from ..data.interactions import Interactions
from ..errors import ConfigError, DataError
from ..regularizers.lambda_opt import LambdaOpt
from .base import Objective, ParamLayout

_EMPTY_PTR = np.zeros(1, dtype=np.int64)
_EMPTY_IDX = np.zeros(0, dtype=np.int32)


class BPRObjective(Objective):
    """BPR loss over the positives of ``train``; ``lam_valid`` feeds lambdaOpt's Lambda steps."""

    name = "BPR"
    capabilities = frozenset({"loss", "bpr_epoch"})

    def __init__(self, train: Interactions, rank: int, regularizer: LambdaOpt | None = None, item_bias: bool = False,
                 lam_bias: float = 0.0, lam_valid: Interactions | None = None, seed: int = 0, backend="numba",
                 device=None):
        if train.nnz == 0:
            raise DataError("no training positives")
        self.backend = get_backend(backend, device)
        if self.backend.name != "numba" and not hasattr(self.backend, "bpr_train"):
            raise ConfigError(f"the {self.backend.name} backend has no BPR kernel")
        self.train = train
        self.m, self.n = train.shape
        self.f = int(rank)
        self.item_bias = bool(item_bias)
        self.lam_bias = float(lam_bias)
        self.regularizer = regularizer or LambdaOpt("global", 0.0, learn=False)
        self.regularizer.bind(self.m, self.n, self.f)
        if self.regularizer.learn and (lam_valid is None or lam_valid.nnz == 0):
            raise DataError("lambdaOpt learns Lambda on validation positives: pass a non-empty valid set")
        self.lam_valid = lam_valid
        self.layout = ParamLayout((("P", (self.m, self.f)), ("Q", (self.n, self.f)),
                                   ("b_i", (self.n if self.item_bias else 0,))))
        csr = train.csr
        self.pos_u = np.repeat(np.arange(self.m, dtype=np.int32), np.diff(csr.indptr))
        self.pos_i = csr.indices
        self.nnz = len(self.pos_u)
        # a fixed sample of triples for loss(): one negative per positive
        self._loss_j = np.empty(self.nnz, dtype=np.int64)
        self.backend.sample_negatives(self.pos_u, csr.indptr, csr.indices, _EMPTY_PTR, _EMPTY_IDX, self.n,
                                      int(seed) + 7919, self._loss_j)

    # --------------------------------------------------------------- params
    def init_params(self, scale: float = 0.1, seed=0):
        """Factors ~ N(0, scale^2) per coordinate, biases 0 (the same numbers on every backend).

        ``seed`` may be a numpy Generator, which is then advanced."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        y = np.zeros(self.size, dtype=np.float32)
        v = self.layout.views(y)
        v["P"][:] = rng.standard_normal((self.m, self.f)) * scale
        v["Q"][:] = rng.standard_normal((self.n, self.f)) * scale
        return self.backend.asarray(y)

    def loss(self, y) -> float:
        P, Q, b = self.unpack(y)
        return self.backend.bpr_loss(P, Q, b, self.item_bias, self.pos_u, self.pos_i, self._loss_j)

    def extra_state(self) -> dict:
        return {"lambda": self.regularizer.lam}

    def set_extra_state(self, state: dict) -> None:
        self.regularizer.set_state(state)

    # ------------------------------------------------------------ the epoch
    def bpr_epoch(self, y, state: dict, kind: str, lr: float, batch_size: int, valid_batch_size: int,
                  beta1: float, beta2: float, eps: float, rng: np.random.Generator) -> dict:
        """One epoch (in place): a triple per training positive, shuffled, in batches.

        ``state`` holds the optimizer's arrays across epochs (lazy Adam's moments
        and per-row step counts; created here on first use).  Returns the epoch's
        mean training BPR loss (before each step) and, with lambdaOpt, the mean
        validation loss (after each step).
        """
        P, Q, b = self.unpack(y)
        m, n, f = self.m, self.n, self.f
        adam = kind == "adam"
        if not state:
            z = (lambda *s: np.zeros(s, dtype=np.float32)) if adam else (lambda *s: np.zeros((0,) * len(s), np.float32))
            state.update(mP=z(m, f), vP=z(m, f), mQ=z(n, f), vQ=z(n, f),
                         mb=z(n) if self.item_bias else z(0), vb=z(n) if self.item_bias else z(0),
                         cnt_u=np.zeros(m, dtype=np.int64), cnt_i=np.zeros(n, dtype=np.int64))
            if self.backend.name != "numba":
                for key in list(state):
                    state[key] = self.backend.asarray(state[key], dtype=state[key].dtype)
        reg = self.regularizer
        learn = reg.learn
        tv = self.train.csr
        N = self.nnz
        B = int(min(batch_size, N))
        Bv = int(valid_batch_size)
        n_steps = (N + B - 1) // B
        seed_e = int(rng.integers(0, 2**62))
        perm = rng.permutation(N)
        tu = np.ascontiguousarray(self.pos_u[perm])
        ti = np.ascontiguousarray(self.pos_i[perm])
        tj = np.empty(N, dtype=np.int64)
        bk = self.backend
        bk.sample_negatives(tu, tv.indptr, tv.indices, _EMPTY_PTR, _EMPTY_IDX, n, seed_e, tj)
        if learn:
            lv = self.lam_valid
            vidx = rng.integers(0, lv.nnz, n_steps * Bv)
            vu = np.ascontiguousarray(lv.users[vidx])
            vi = np.ascontiguousarray(lv.items[vidx])
            vj = np.empty(len(vidx), dtype=np.int64)
            vv = lv.csr
            bk.sample_negatives(vu, tv.indptr, tv.indices, vv.indptr, vv.indices, n, seed_e + 1, vj)
        else:
            vu = vi = np.zeros(0, dtype=np.int32)
            vj = np.zeros(0, dtype=np.int64)
        stats = np.zeros(4, dtype=np.float64)
        f32 = np.float32
        s = state
        bk.bpr_train(tu, ti, tj, B, vu, vi, vj, Bv, P, Q, b, self.item_bias, f32(self.lam_bias),
                     1 if adam else 0, f32(lr), f32(beta1), f32(beta2), f32(eps),
                     s["mP"], s["vP"], s["mQ"], s["vQ"], s["mb"], s["vb"], s["cnt_u"], s["cnt_i"],
                     reg.lam, reg.layout.lam_map(), learn, f32(reg.lr), reg.m, reg.v, reg.count,
                     np.zeros(0, np.float32), stats)
        out = {"train_loss": stats[0] / max(stats[1], 1.0)}
        if learn:
            out["valid_loss"] = stats[2] / max(stats[3], 1.0)
        return out


def composed_sgd_step(obj: BPRObjective, y, tu, ti, tj, vu, vi, vj, lr: float) -> float:
    """One mini-batch SGD step of BPR (and lambdaOpt's Lambda step) composed from plain
    array operations and the regularizer's :meth:`~lfopt.regularizers.LambdaOpt.hyper_step`.

    The reference for the fused kernel (:func:`lfopt.kernels.bpr.bpr_train`), which must
    give the same result (tests/test_bpr_composed.py): the gradient of the batch's summed
    loss with the penalty 2 n_r Lambda_r theta_r of the rows present, the step, then the
    validation gradient at the new parameters and the hyper-gradient through the step.
    numpy arrays, numba backend.  Returns the batch's summed training loss.
    """
    P, Q, b = obj.unpack(y)
    reg = obj.regularizer
    f32 = np.float32
    lr = f32(lr)
    ok = tj >= 0
    tu, ti, tj = tu[ok].astype(np.int64), ti[ok].astype(np.int64), tj[ok].astype(np.int64)
    x = np.einsum("td,td->t", P[tu], Q[ti] - Q[tj]) + ((b[ti] - b[tj]) if obj.item_bias else 0)
    c = (-1.0 / (1.0 + np.exp(x))).astype(f32)
    loss = float(np.logaddexp(0.0, -x.astype(np.float64)).sum())
    users, uinv, ucnt = np.unique(tu, return_inverse=True, return_counts=True)
    items, iinv = np.unique(np.concatenate([ti, tj]), return_inverse=True)
    icnt = np.bincount(iinv, minlength=len(items))
    sign = np.concatenate([np.ones(len(ti), f32), -np.ones(len(tj), f32)])
    lu, li = reg.layout.expand(reg.lam)
    gU = np.zeros((len(users), obj.f), f32)
    np.add.at(gU, uinv, c[:, None] * (Q[ti] - Q[tj]))
    gU += 2 * ucnt[:, None].astype(f32) * lu[users] * P[users]
    gI = np.zeros((len(items), obj.f), f32)
    np.add.at(gI, iinv, (np.concatenate([c, c]) * sign)[:, None] * P[np.concatenate([tu, tu])])
    gI += 2 * icnt[:, None].astype(f32) * li[items] * Q[items]
    old_U, old_I = P[users].copy(), Q[items].copy()
    if obj.item_bias:
        gb = np.zeros(len(items), f32)
        np.add.at(gb, iinv, np.concatenate([c, c]) * sign)
        b[items] -= lr * (gb + 2 * icnt.astype(f32) * f32(obj.lam_bias) * b[items])
    P[users] -= lr * gU
    Q[items] -= lr * gI
    if reg.learn and len(vu):
        okv = vj >= 0
        vu, vi, vj = vu[okv].astype(np.int64), vi[okv].astype(np.int64), vj[okv].astype(np.int64)
        xv = np.einsum("td,td->t", P[vu], Q[vi] - Q[vj]) + ((b[vi] - b[vj]) if obj.item_bias else 0)
        cv = (-1.0 / (1.0 + np.exp(xv))).astype(f32) / f32(len(vu))
        upos = np.full(obj.m, -1)
        upos[users] = np.arange(len(users))
        ipos = np.full(obj.n, -1)
        ipos[items] = np.arange(len(items))
        aU = np.zeros_like(gU)
        aI = np.zeros_like(gI)
        hasU = np.zeros(len(users), bool)
        hasI = np.zeros(len(items), bool)
        for q in range(len(vu)):  # scattered rows; small batches in tests
            u, i, j = vu[q], vi[q], vj[q]
            if upos[u] >= 0:
                aU[upos[u]] += cv[q] * (Q[i] - Q[j])
                hasU[upos[u]] = True
            if ipos[i] >= 0:
                aI[ipos[i]] += cv[q] * P[u]
                hasI[ipos[i]] = True
            if ipos[j] >= 0:
                aI[ipos[j]] -= cv[q] * P[u]
                hasI[ipos[j]] = True
        reg.hyper_step([("user", users[hasU], aU[hasU], -lr, ucnt[hasU], old_U[hasU]),
                        ("item", items[hasI], aI[hasI], -lr, icnt[hasI], old_I[hasI])])
    return loss
