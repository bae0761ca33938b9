"""Adapters that train peer libraries' matrix-factorization models for lfopt benchmarks.

Every adapter takes the same arguments::

    run_xxx(train_u, train_i, train_r, test_u, test_i, test_r,
            rank=100, epochs=40, lr=0.01, lam=0.02, use_bias=True, seed=42,
            rating_range=(1, 5), threads=None)

where ``*_u`` / ``*_i`` are 0-based integer index arrays and ``*_r`` float ratings.
It trains on the training triples, predicts the test pairs, clips the predictions to
``rating_range`` and returns a dict::

    rmse, mae            test accuracy of the clipped predictions
    seconds              wall time of the library's training call only
    seconds_per_epoch    seconds / epochs
    epochs, peer, version, use_bias (as actually trained), threads,
    n_unknown            test pairs whose user or item has no training rating;
                         they are predicted with the training mean (as LIBMF does)

The peers are optional.  Install them with::

    pip install -r benchmarks/requirements-peers.txt

(``libmf`` is an sdist and is compiled with the local C++ compiler.)  An adapter whose
library cannot be imported raises :class:`PeerUnavailable`, so benchmark scripts can
report the peer as skipped::

    try:
        res = run_libmf(*split)
    except PeerUnavailable as exc:
        print("libmf: skipped:", exc)

Caveats, from reading the peers' sources:

* cornac ``MF``: plain SGD with biases, regularization applied at every visit
  (``p -= lr * (-e q + lam p)``), init N(0, 0.01).  Its SGD visits the ratings in input
  order with no reshuffling, so the training triples are shuffled once (``seed``) before
  they are handed over, as cornac's own ``RatioSplit`` does.  Giving a ``seed`` makes
  cornac train on ONE thread (its rule); pass ``seed=None`` to use ``threads`` cores.
* LIBMF (``libmf`` package, LIBMF 2.x): squared loss (``fun=P_L2_MFR``) with
  ``lambda_p2 = lambda_q2 = lam`` (L2; ``lambda_p1/q1`` are L1 and are set to 0 -- the
  Python wrapper's own defaults are L1 = 0.04, L2 = 0!), ``k = rank``,
  ``nr_iters = epochs``, ``eta = lr``, ``nr_threads = threads`` (default: all cores).
  LIBMF's SGD is per-row AdaGrad with ``eta`` as the initial rate (LIBMF's default
  0.1), regularizes at every visit, divides the ratings by their standard deviation
  while training, has NO bias terms (``use_bias`` is ignored) and no seed (fixed
  shuffles and init; thread scheduling still varies).  The wrapper's ``predict`` reads
  its (n, 2) input column-major, so predictions here are computed from the factors.
  pip builds it without SIMD; see requirements-peers.txt for the faster AVX build.
  LIBMF's scheduler can deadlock after the last iteration (rarely, mostly on tiny
  data), so it trains in a forked child that is restarted if it stalls.
* Surprise ``SVD``: plain SGD with biases, per-visit regularization, init N(0, 0.1),
  visits ratings grouped by user each epoch, single-threaded.  Its defaults are
  ``n_epochs=20, lr_all=0.005, reg_all=0.02``.

``run_myfm(train, test, rank, n_iter, seed)`` has its own signature (a Bayesian model
has no learning rate, epochs or lambda to pass): ``train``/``test`` are lfopt
``Interactions`` in one index space (e.g. the parts of ``lfopt.random_split``) or
``(users, items, ratings)`` triples of 0-based indices.  It returns the same dict.

* myFM ``MyFMGibbsRegressor``: Bayesian factorization machine by Gibbs sampling
  (METHODS.md section 5c) on the one-hot (user, item) design, with one hyper-prior
  group for the user columns and one for the item columns (``grouping``), as myFM's
  MovieLens example does; ``n_iter`` sweeps, the prediction is the mean over the last
  ``n_kept`` samples (myFM's default: ``n_iter - 5``).  ``seconds`` is the sampling
  (``fit``) time; the prediction sums over the kept samples and is timed apart
  (``predict_seconds``).  myFM 0.4.0 imports ``pkg_resources`` (gone from setuptools
  >= 81) without using it; a stub is put in its place when it is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import multiprocessing
import os
import time
import warnings

import numpy as np

__all__ = ["PeerUnavailable", "PEERS", "run_cornac_mf", "run_libmf", "run_surprise_svd", "run_myfm"]


class PeerUnavailable(ImportError):
    """A peer library is not installed or cannot be loaded."""


def _require(module, package):
    """Import ``module`` or raise PeerUnavailable naming the pip ``package``."""
    try:
        # libmf prints the path of its shared library on import; keep stdout clean.
        with contextlib.redirect_stdout(io.StringIO()):
            return importlib.import_module(module)
    except (ImportError, OSError) as exc:  # libmf raises OSError when its .so is missing
        raise PeerUnavailable(
            f"{package} is not usable ({exc}); "
            "pip install -r benchmarks/requirements-peers.txt"
        ) from exc


def _version(package):
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return "unknown"


def _arrays(train_u, train_i, train_r, test_u, test_i, test_r):
    idx = [np.asarray(a, dtype=np.int64) for a in (train_u, train_i, test_u, test_i)]
    val = [np.asarray(a, dtype=np.float32) for a in (train_r, test_r)]
    return idx[0], idx[1], val[0], idx[2], idx[3], val[1]


def _lookup(mapping, ids):
    """Internal index of each raw id through ``mapping`` (dict raw -> internal), -1 if absent."""
    size = max(int(ids.max(initial=0)), max(mapping, default=0)) + 1
    table = np.full(size, -1, dtype=np.int64)
    table[np.fromiter(mapping.keys(), np.int64)] = np.fromiter(mapping.values(), np.int64)
    return table[ids]


def _predict(u, i, P, Q, mu, bu=None, bi=None, fallback=0.0):
    """mu + bu[u] + bi[i] + P[u].Q[i] for pairs with u, i >= 0; ``fallback`` elsewhere.

    Returns the predictions and the number of pairs that got the fallback.
    """
    known = (u >= 0) & (i >= 0)
    uk, ik = u[known], i[known]
    pred = np.full(len(u), fallback, dtype=np.float64)
    est = np.einsum("ij,ij->i", P[uk].astype(np.float64), Q[ik].astype(np.float64)) + mu
    if bu is not None:
        est += bu[uk] + bi[ik]
    pred[known] = est
    return pred, int(len(u) - known.sum())


def _result(peer, package, pred, test_r, rating_range, seconds, epochs, n_unknown, **extra):
    err = np.clip(pred, *rating_range) - test_r
    return dict(
        rmse=float(np.sqrt(np.mean(err**2))),
        mae=float(np.mean(np.abs(err))),
        seconds=seconds,
        seconds_per_epoch=seconds / epochs,
        epochs=epochs,
        n_unknown=n_unknown,
        peer=peer,
        version=_version(package),
        **extra,
    )


def run_cornac_mf(train_u, train_i, train_r, test_u, test_i, test_r, rank=100, epochs=40,
                  lr=0.01, lam=0.02, use_bias=True, seed=42, rating_range=(1, 5),
                  threads=None):
    """Train ``cornac.models.MF`` (CPU backend, SGD) and evaluate on the test pairs."""
    _require("cornac", "cornac")
    from cornac.data import Dataset
    from cornac.models import MF

    tu, ti, tr, su, si, sr = _arrays(train_u, train_i, train_r, test_u, test_i, test_r)
    order = np.random.default_rng(seed).permutation(len(tr))
    train_set = Dataset.from_uir(
        zip(tu[order].tolist(), ti[order].tolist(), tr[order].tolist()), seed=seed)
    model = MF(k=rank, max_iter=epochs, learning_rate=lr, lambda_reg=lam, use_bias=use_bias,
               num_threads=threads or 0, seed=seed, verbose=False)
    t0 = time.perf_counter()
    model.fit(train_set)
    seconds = time.perf_counter() - t0

    u, i = _lookup(train_set.uid_map, su), _lookup(train_set.iid_map, si)
    pred, n_unknown = _predict(u, i, model.u_factors, model.i_factors, float(model.global_mean),
                               model.u_biases, model.i_biases, fallback=float(tr.mean()))
    return _result("cornac MF", "cornac", pred, sr, rating_range, seconds, epochs, n_unknown,
                   use_bias=use_bias, threads=model.num_threads)


class _Stalled(RuntimeError):
    """The child process stopped using CPU before returning (a deadlock)."""


def _cpu_ticks(pid):
    """User + system CPU ticks of process ``pid`` (all threads), or None without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _call_in_child(fn, stall_seconds=5.0):
    """Return ``fn()`` computed in a forked child process.

    Raises _Stalled if the child burns no CPU for ``stall_seconds`` before answering:
    LIBMF's scheduler can deadlock after its last iteration (``Scheduler::terminate``
    wakes no worker), rarely, mostly on small data.  Linux only; elsewhere ``fn()`` runs
    in-process.
    """
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:
        return fn()
    recv, send = ctx.Pipe(duplex=False)

    def child():
        try:
            send.send(("ok", fn()))
        except BaseException as exc:  # report, do not hang the parent
            send.send(("error", f"{type(exc).__name__}: {exc}"))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    send.close()
    ticks, since = None, time.monotonic()
    try:
        while not recv.poll(0.5):
            if not proc.is_alive():
                raise RuntimeError(f"child process died (exit code {proc.exitcode})")
            now = _cpu_ticks(proc.pid)
            if now is None or now != ticks:
                ticks, since = now, time.monotonic()
            elif time.monotonic() - since > stall_seconds:
                raise _Stalled()
        status, value = recv.recv()
    finally:
        proc.kill()
        proc.join()
    if status != "ok":
        raise RuntimeError(f"child process failed: {value}")
    return value


def run_libmf(train_u, train_i, train_r, test_u, test_i, test_r, rank=100, epochs=40,
              lr=0.01, lam=0.02, use_bias=True, seed=42, rating_range=(1, 5), threads=None,
              attempts=3):
    """Train LIBMF (``libmf`` package) with squared loss and L2 on P and Q.

    ``use_bias`` and ``seed`` are ignored: LIBMF has no bias terms and no seed option.
    ``lr`` is LIBMF's initial AdaGrad rate ``eta`` (LIBMF's default 0.1).
    Training runs in a forked child (which also reclaims the memory the wrapper
    leaks); a run that deadlocks is restarted, up to ``attempts`` runs in all.
    """
    lm = _require("libmf.mf", "libmf")
    tu, ti, tr, su, si, sr = _arrays(train_u, train_i, train_r, test_u, test_i, test_r)
    if max(tu.max(), ti.max()) >= 2**24:
        raise ValueError("the libmf wrapper passes indices as float32: ids must be < 2**24")
    threads = threads or os.cpu_count() or 1
    engine = lm.MF(fun=lm.P_L2_MFR, k=rank, nr_iters=epochs, eta=lr,
                   lambda_p1=0.0, lambda_q1=0.0, lambda_p2=lam, lambda_q2=lam,
                   nr_threads=threads, nr_bins=max(26, 2 * threads + 1), quiet=True)
    data = np.column_stack([tu, ti, tr]).astype(np.float32)

    def fit():
        t0 = time.perf_counter()
        try:
            engine.fit(data)
        except ValueError:  # the wrapper dereferences the NULL model LIBMF returned
            raise RuntimeError("LIBMF rejected the parameters (message on stderr)") from None
        seconds = time.perf_counter() - t0
        return seconds, engine.p_factors(), engine.q_factors()

    for restarts in range(attempts):
        try:
            seconds, P, Q = _call_in_child(fit)
            break
        except _Stalled:
            warnings.warn("LIBMF deadlocked at the end of training; restarting it")
    else:
        raise RuntimeError(f"LIBMF deadlocked in all {attempts} attempts")

    # Users/items with no training rating have NaN factor rows (or lie beyond m, n).
    u = np.where((su < len(P)) & ~np.isnan(P[np.minimum(su, len(P) - 1), 0]), su, -1)
    i = np.where((si < len(Q)) & ~np.isnan(Q[np.minimum(si, len(Q) - 1), 0]), si, -1)
    pred, n_unknown = _predict(u, i, P, Q, 0.0, fallback=float(tr.mean()))
    return _result("LIBMF", "libmf", pred, sr, rating_range, seconds, epochs, n_unknown,
                   use_bias=False, threads=threads, restarts=restarts)


def run_surprise_svd(train_u, train_i, train_r, test_u, test_i, test_r, rank=100, epochs=40,
                     lr=0.01, lam=0.02, use_bias=True, seed=42, rating_range=(1, 5),
                     threads=None):
    """Train ``surprise.SVD`` (single-threaded SGD; ``threads`` is ignored)."""
    surprise = _require("surprise", "scikit-surprise")
    tu, ti, tr, su, si, sr = _arrays(train_u, train_i, train_r, test_u, test_i, test_r)
    reader = surprise.Reader(rating_scale=tuple(rating_range))
    trainset = surprise.Dataset(reader).construct_trainset(
        list(zip(tu.tolist(), ti.tolist(), tr.tolist(), [None] * len(tr))))
    algo = surprise.SVD(n_factors=rank, n_epochs=epochs, lr_all=lr, reg_all=lam,
                        biased=use_bias, random_state=seed)
    t0 = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - t0

    users = {trainset.to_raw_uid(x): x for x in trainset.all_users()}
    items = {trainset.to_raw_iid(x): x for x in trainset.all_items()}
    u, i = _lookup(users, su), _lookup(items, si)
    mu = trainset.global_mean if use_bias else 0.0
    pred, n_unknown = _predict(u, i, algo.pu, algo.qi, mu, algo.bu, algo.bi,
                               fallback=float(tr.mean()))
    return _result("Surprise SVD", "scikit-surprise", pred, sr, rating_range, seconds, epochs,
                   n_unknown, use_bias=use_bias, threads=1)


def _stub_pkg_resources():
    """myFM 0.4.0 imports pkg_resources (removed from setuptools 81) and never uses it."""
    import sys
    import types

    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        stub = types.ModuleType("pkg_resources")

        class DistributionNotFound(Exception):
            pass

        def get_distribution(name):
            raise DistributionNotFound(name)

        stub.DistributionNotFound, stub.get_distribution = DistributionNotFound, get_distribution
        sys.modules["pkg_resources"] = stub


def _triples(data):
    """(users, items, ratings) of an lfopt Interactions or of a triple of arrays."""
    if hasattr(data, "users") and hasattr(data, "values"):
        return (np.asarray(data.users, np.int64), np.asarray(data.items, np.int64),
                np.asarray(data.values, np.float64))
    u, i, r = data
    return np.asarray(u, np.int64), np.asarray(i, np.int64), np.asarray(r, np.float64)


def run_myfm(train, test, rank=10, n_iter=200, seed=42, rating_range=None, n_kept=None, threads=None,
             grouping=True):
    """Bayesian MF by Gibbs sampling with myFM; ``train``/``test``: Interactions or index triples.

    ``rating_range`` (default: the training ratings' min and max) clips the
    predictions; ``n_kept`` samples are averaged (None: myFM's ``n_iter - 5``);
    ``threads`` is the number of prediction workers (sampling is myFM's own);
    ``grouping`` gives the user and the item columns separate hyper-priors (False:
    one shared group).
    """
    _stub_pkg_resources()
    myfm = _require("myfm", "myfm")
    import scipy.sparse as sp

    tu, ti, tr = _triples(train)
    su, si, sr = _triples(test)
    m = int(max(tu.max(), su.max())) + 1
    n = int(max(ti.max(), si.max())) + 1
    if hasattr(train, "shape"):
        m, n = max(m, train.shape[0]), max(n, train.shape[1])
    seen_u = np.bincount(tu, minlength=m) > 0
    seen_i = np.bincount(ti, minlength=n) > 0

    def design(u, i):
        rows = np.repeat(np.arange(len(u)), 2)
        cols = np.column_stack([u, m + i]).ravel()
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(u), m + n))

    rating_range = tuple(rating_range) if rating_range is not None else (float(tr.min()), float(tr.max()))
    model = myfm.MyFMGibbsRegressor(rank=rank, random_seed=seed)
    X = design(tu, ti)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # myFM always draws a tqdm progress bar
        model.fit(X, tr, n_iter=n_iter, n_kept_samples=n_kept, grouping=[0] * m + [1] * n if grouping else None,
                  callback=lambda *args: (False, None))
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = model.predict(design(su, si), n_workers=threads)
    predict_seconds = time.perf_counter() - t0
    n_unknown = int((~(seen_u[su] & seen_i[si])).sum())
    return _result("myFM", "myfm", pred, sr.astype(np.float32), rating_range, seconds, n_iter, n_unknown,
                   rank=rank, n_kept=n_kept if n_kept is not None else n_iter - 5,
                   predict_seconds=predict_seconds, threads=threads)


PEERS = {"cornac": run_cornac_mf, "libmf": run_libmf, "surprise": run_surprise_svd}
