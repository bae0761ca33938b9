"""``LatentFactorModel``: rating prediction with the LF model and any optimizer."""

from __future__ import annotations

import warnings

import numpy as np

from ..data.interactions import Interactions
from ..errors import ConfigError
from ..eval.metrics import rating_metrics
from .base import RatingRecommender, register_model

_FIXED = ("rank", "optimizer", "epochs", "lam", "lam_b", "lam0", "lam0_b", "use_bias", "init_scale", "seed",
          "patience", "validation", "refit", "standardize", "granularity", "preset", "time_budget", "keep_samples",
          "verbose", "backend", "device", "distributed")

#: ``optimizer="auto"`` samples when the sampler's 200 default sweeps cost at most this many
#: multiply-adds, 200 (|K| g^2 + (m + n) g^3) with g = rank + 1 (the Gram of every row and its
#: Cholesky factor): about 75 s on 2 cores (ML-1M at rank 32, 2.7e11, takes ~20 s).
AUTO_SAMPLING_WORK = 1e12
#: parameters only an optimizer uses: one set away from its default makes ``optimizer="auto"`` ALS
PENALTY_PARAMS = ("lam", "lam_b", "lam0", "lam0_b", "granularity")
#: point-estimate predictions of at least this many pairs go through the parallel kernel (ML-1M's
#: 900K training pairs: 0.036 s against numpy's 0.26 s); fewer use numpy, which starts no thread
#: pool: numba's OpenMP threads in a parent kill a forked child that runs a parallel kernel, and
#: loading a model makes one trial prediction
PARALLEL_PAIRS = 1 << 16
#: sweeps of the sampler when ``epochs`` is None (myFM's and BPMF's usual chain length)
DEFAULT_SWEEPS = 200
#: epochs of an optimizer when ``epochs`` is None
DEFAULT_EPOCHS = 40


def auto_candidate(options: dict) -> str:
    """Which optimizer ``"auto"`` may run with these optimizer options: "gibbs" when the sampler
    takes them all, else "als" when it does; else a ConfigError naming the optimizers that do."""
    from ..optim.base import make_optimizer

    def takes(name):
        try:
            make_optimizer(name, **options)
        except (ConfigError, TypeError):
            return False
        return True

    for name in ("gibbs", "als"):
        if takes(name):
            return name
    takers = [n for n in ("sgd", "adam", "adago", "slf", "sslf") if takes(n)]
    given = sorted(k for k, v in options.items() if v is not None)
    hint = f"choose one that does: {', '.join(takers)}" if takers else "no optimizer takes them all"
    raise ConfigError(f"optimizer='auto' runs the Gibbs sampler or ALS, which do not take option(s) {given}; {hint} "
                      f"(optimizer=..., CLI --optimizer)")


def sampling_work(n_users: int, n_items: int, nnz: int, rank: int, use_bias: bool = True,
                  sweeps: int = DEFAULT_SWEEPS) -> float:
    """Multiply-adds of ``sweeps`` Gibbs sweeps, the rule of ``optimizer="auto"``."""
    g = int(rank) + (1 if use_bias else 0)
    return float(sweeps) * (float(nnz) * g * g + float(n_users + n_items) * g ** 3)


@register_model("latent_factor")
class LatentFactorModel(RatingRecommender):
    """Latent factor model r_ui ~ mu + b_u + b_i + p_u . q_i (METHODS.md section 2).

    Parameters
    ----------
    rank : number of latent dimensions f.
    optimizer : ``"auto"`` (the default), ``"sgd"``, ``"adam"``, ``"als"``, ``"adago"``,
        ``"slf"``, ``"sslf"`` or ``"gibbs"`` (Bayesian averaging by Gibbs sampling, METHODS.md
        section 5c: the model then predicts with the posterior mean over the kept samples,
        see :mod:`lfopt.optim.gibbs` and ``keep_samples``; lam, lam0 and ``validation`` are
        not used by the sampler: its hyper-priors learn the regularization from all the
        training data).  ``"auto"`` is the pipeline of ``preset="accurate"`` (the sampler
        from a small start, its rank at most the mean number of ratings per row, all the
        training data) for ``epochs`` sweeps (default 200) where they cost at most
        ``AUTO_SAMPLING_WORK`` (1e12) multiply-adds, 200 (|K| g^2 + (m + n) g^3) with
        g = rank + 1 (about a minute on 2 cores; ML-1M at rank 32: 20 s) and the sampler can
        run (numba backend, not distributed, ``lam``, ``lam0``, ``lam_b``, ``lam0_b`` and
        ``granularity`` at their defaults: a penalty set by hand asks for the optimizer that
        uses it); else ``"als"``.  An optimizer option neither takes (``lr``, ``cg_iters``...)
        is an error that names the optimizers taking it.  ``optimizer_`` is the one that ran.
        The sampler costs 4-18x ALS's early-stopped fit and gains 0.002-0.015 test RMSE on the
        shared rating sets (benchmarks/results/accuracy.md).
    epochs : maximum number of epochs (for SLF/SSLF an epoch is one Gauss-Newton step; for
        the sampler one sweep).  None: 40 epochs, 200 sweeps for the sampler.
    lam, lam_b : count-weighted L2 strength of the factors and of the biases
        (``lam_b=None`` uses ``lam``): row u's penalty grows as ``lam * n_u``.
        ``lam="learn"`` learns the regularization on the validation part instead
        (lambdaOpt, METHODS.md section 5b; :class:`lfopt.regularizers.LearnedL2` at
        ``granularity`` ``"global"``, ``"D"``, ``"DU"``, ``"DI"`` or ``"DUI"``).
    lam0, lam0_b : the constant part of each row's penalty (``lam0_b=None`` uses
        ``lam0``): row u's factors get ``lam0 + lam * n_u`` (METHODS.md section 2).
        ``lam=0`` gives the uniform form, ``lam0=0`` the count-weighted one.
        The defaults (factors 6 + 0.05 n_u, biases a damping of 3 ratings, in units of
        standardized ratings) are the middle of what validation chose on five rating
        datasets (benchmarks/results/reg_form.md); the mixed form won on all of them.
    use_bias : include the global mean and user/item biases (False gives the
        plain model r_ui ~ p_u . q_i of the papers).
    init_scale : factors start ~ N(0, init_scale^2 / rank).  Small starts help
        generalization (the early epochs fit the strongest directions first); a
        very strong lambda with exact solvers (ALS) may shrink tiny factors to
        the zero saddle, in which case a larger init_scale helps.
    seed : seeds the initialization and the optimizer's randomness.
    patience : early stopping on the validation RMSE (None: no early stopping).
    validation : when ``fit`` gets no ``valid``, this fraction of the training data
        (drawn with ``seed + 1``) is held out to stop early (and to learn the
        regularization); None or 0 trains on everything with no early stopping.
    refit : after stopping early on the held-out ``validation`` part, train again on
        all the training data for the chosen number of epochs (with the learned
        regularization frozen); ``history_`` keeps the first run's validation curve.
    preset : None, or ``"accurate"``: the most accurate pipeline (Bayesian averaging
        by Gibbs sampling, on all the training data; ``optimizer``, ``lam`` and
        ``validation`` are then not used), see ``time_budget``; its rank is at most the
        mean number of ratings per row, 2 |K| / (m + n) (``rank_``: the rank fitted).
    time_budget : stop training before an epoch would end past this many seconds
        (None: no limit); with ``preset="accurate"`` the sampler runs until it.
    keep_samples : after sampling, keep all the kept samples and predict with their exact
        average (memory and model file S (m + n) rank float32: ML-1M rank 32, 200 samples,
        250 MB).  False (the default) keeps the average's best rank-``rank_`` approximation
        (:func:`lfopt.optim.gibbs.low_rank_mean`) as the model's factors, the size of a point
        estimate: ML-1M test RMSE 0.8296 against 0.8293, Amazon and Douban the same to
        4 digits.  ``n_samples_`` is the number of samples averaged either way.
    standardize : fit on ratings divided by their standard deviation, so that
        ``lam``, ``lam0``, ``lr`` and ``init_scale`` mean the same on a 1..5 and a
        1..100 scale (the fitted parameters are returned in rating units).
    verbose : print one progress line per epoch (to stderr).
    backend, device : ``"numba"`` (CPU, the default) or ``"torch"`` with
        ``device="cpu"`` or ``"cuda"``; every optimizer runs on either.
    distributed : train on all the processes of a torch.distributed group (launched by
        torchrun; see :mod:`lfopt.dist`): each process computes the oracles on its block of
        users and items and the parts are all-reduced, so every optimizer but ``gibbs``
        (and learned ``lam``) gives the one-process iterates (``sgd``'s fused epoch runs as
        DSGD across processes).  Every process calls ``fit`` with the same data.
    **optimizer_options : the optimizer's hyper-parameters, e.g. ``lr=0.01``,
        ``batch_size=8192``, ``rho=0.05`` (sharpness-aware, any optimizer),
        ``cg_iters=10``, ``damping=1.0``.

    Examples
    --------
    >>> import lfopt
    >>> data = lfopt.synthetic(n_users=400, n_items=300, nnz=30000, seed=0)
    >>> train, test = lfopt.random_split(data, 0.1, seed=0)
    >>> model = lfopt.LatentFactorModel(rank=5).fit(train)   # "auto": 200 Gibbs sweeps here
    >>> model.optimizer_.name, model.n_samples_
    ('gibbs', 180)
    >>> model.evaluate(test)["rmse"] < 1.15 * data.meta["noise_floor"]  # the generator's noise level
    True
    >>> als = lfopt.LatentFactorModel(rank=5, optimizer="als", epochs=10, lam=0.02, lam0=0.0).fit(train)
    >>> als.evaluate(test)["rmse"] < 1.15 * data.meta["noise_floor"]
    True
    >>> scores = model.predict([0, 1], [0, 1])
    >>> items, _ = model.recommend(0, k=3)
    >>> len(items)
    3
    >>> als
    LatentFactorModel(rank=5, optimizer='als', epochs=10, lam=0.02, lam0=0.0)
    """

    _fallback_words = "predicted from the mean and biases"

    def __init__(self, rank: int = 32, optimizer: str = "auto", epochs: int | None = None, lam: float | str = 0.05,
                 lam_b: float | None = 0.0, lam0: float = 6.0, lam0_b: float | None = 3.0, use_bias: bool = True,
                 init_scale: float = 0.1, seed: int = 0, patience: int | None = 5,
                 validation: float | None = 0.1, refit: bool = True, standardize: bool = True,
                 granularity: str = "global", preset: str | None = None, time_budget: float | None = None,
                 keep_samples: bool = False, verbose: bool = False,
                 backend: str = "numba", device: str | None = None, distributed: bool = False,
                 **optimizer_options):
        self.rank = rank
        self.optimizer = optimizer
        self.epochs = epochs
        self.lam = lam
        self.lam_b = lam_b
        self.lam0 = lam0
        self.lam0_b = lam0_b
        self.use_bias = use_bias
        self.init_scale = init_scale
        self.seed = seed
        self.patience = patience
        self.validation = validation
        self.refit = refit
        self.granularity = granularity
        self.preset = preset
        self.time_budget = time_budget
        self.keep_samples = keep_samples
        self.standardize = standardize
        self.verbose = verbose
        self.backend = backend
        self.device = device
        self.distributed = distributed
        self.optimizer_options = optimizer_options
        self._check_params()

    # ------------------------------------------------------------ parameters
    def _check_params(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, np.integer)) or self.rank <= 0:
            raise ConfigError(f"rank must be a positive integer, got {self.rank!r}")
        for name in ("lam", "lam_b", "lam0", "lam0_b"):
            v = getattr(self, name)
            if name == "lam" and v == "learn":
                continue
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
                                  or not np.isfinite(v) or v < 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.preset not in (None, "accurate"):
            raise ConfigError(f"preset must be None or 'accurate', got {self.preset!r}")
        e = self.epochs
        if e is not None and (isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 1):
            raise ConfigError(f"epochs must be a positive integer or None, got {e!r}")
        if not isinstance(self.keep_samples, (bool, np.bool_)):
            raise ConfigError(f"keep_samples must be True or False, got {self.keep_samples!r}")
        tb = self.time_budget
        if tb is not None and (isinstance(tb, bool) or not isinstance(tb, (int, float, np.floating, np.integer))
                               or not np.isfinite(tb) or tb <= 0):
            raise ConfigError(f"time_budget must be a number of seconds > 0 or None, got {tb!r}")
        v = self.validation
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
                              or not 0.0 <= v < 1.0):
            raise ConfigError(f"validation must be a fraction in [0, 1) or None, got {v!r}")
        if not isinstance(self.init_scale, (int, float, np.floating)) or not np.isfinite(self.init_scale) \
                or self.init_scale <= 0:
            raise ConfigError(f"init_scale must be > 0, got {self.init_scale!r}")

    def get_params(self, deep: bool = True) -> dict:
        params = super().get_params(deep)
        params.update(self.optimizer_options)
        return params

    def set_params(self, **params) -> "LatentFactorModel":
        fixed = {k: v for k, v in params.items() if k in _FIXED}
        super().set_params(**fixed)
        self.optimizer_options = {**self.optimizer_options, **{k: v for k, v in params.items() if k not in _FIXED}}
        return self

    # ------------------------------------------------------------------ fit
    def _fit_rank(self, train: Interactions) -> int:
        """The rank a fit uses: ``rank``; with ``preset="accurate"`` at most the mean number of
        ratings per row, 2 |K| / (m + n) (rounded down): a row's posterior has no more directions
        its ratings can inform, the others stay at the prior while each sweep pays g^3 per row for
        them (Yelp, 11.7 ratings a row, 20 s: rank 32 87 sweeps, test RMSE 1.0111; rank 10 556
        sweeps, 1.0063; myFM rank 10 1.0072).  ``rank_`` is the rank fitted."""
        f = int(self.rank)
        if self._sampling():
            f = _capped_rank(f, train)
        return f

    def _sampling(self) -> bool:
        """Whether a fit runs the sampling pipeline: ``preset="accurate"``, or ``optimizer="auto"``
        resolved to the sampler (``method_``)."""
        return self.preset == "accurate" or (self.optimizer == "auto" and getattr(self, "method_", None) == "gibbs")

    def _resolve_optimizer(self, train: Interactions) -> str:
        """The optimizer a fit runs: ``optimizer``; "auto" is the sampler where it can run and its
        default sweeps cost at most ``AUTO_SAMPLING_WORK`` (see the class docstring), else "als"
        (:func:`auto_candidate` checks the optimizer options)."""
        if self.preset == "accurate":
            return "gibbs"
        if self.optimizer != "auto":
            return self.optimizer
        if self.distributed or self.backend != "numba" or self.lam == "learn":
            return "als"
        import inspect

        defaults = inspect.signature(LatentFactorModel.__init__).parameters
        if any(getattr(self, k) != defaults[k].default for k in PENALTY_PARAMS):
            return "als"  # a penalty was chosen: the optimizer that uses it (the sampler learns its own)
        if auto_candidate(self.optimizer_options) == "als":
            return "als"
        work = sampling_work(train.n_users, train.n_items, train.nnz, _capped_rank(int(self.rank), train),
                             self.use_bias)
        return "gibbs" if work <= AUTO_SAMPLING_WORK else "als"

    def _make_objective(self, train: Interactions, valid: Interactions | None = None, fitted=None,
                        rank: int | None = None):
        """The LF objective on ``train``: fixed L2 from lam/lam0 (or ``fitted``, a regularizer of an
        earlier run, its learned Lambda frozen), or learned Lambda (``lam="learn"``) bound to ``valid``."""
        from ..models.lf import LFObjective
        from ..regularizers import L2

        learned = None
        if fitted is not None and hasattr(fitted, "state") and hasattr(fitted, "bind"):  # learned Lambda: freeze
            reg = type(fitted)(**{**fitted.get_params(), "learn": False})
            learned = {k: np.array(v, copy=True) for k, v in fitted.state().items()}
        elif fitted is not None:
            reg = fitted
        elif self.lam == "learn":
            from ..regularizers.lambda_rating import LearnedL2

            if valid is None:
                raise ConfigError('lam="learn" learns the regularization on validation ratings: pass valid= to '
                                  'fit() or keep validation > 0')
            reg = LearnedL2(granularity=self.granularity, seed=self.seed)
        else:
            reg = L2(self.lam, self.lam_b, lam0=self.lam0, lam0_b=self.lam0_b)
        if self.distributed:
            from ..dist import communicator
            from ..models.lf_dist import DistributedLFObjective

            if self._plan()["optimizer"] == "gibbs":
                raise ConfigError("the Gibbs sampler (optimizer='gibbs', preset='accurate') is not available in "
                                  "distributed training")
            obj = DistributedLFObjective(train, rank or self._fit_rank(train), regularizer=reg,
                                         use_bias=self.use_bias, backend=self.backend, device=self.device,
                                         comm=communicator())
        else:
            obj = LFObjective(train, rank or self._fit_rank(train), regularizer=reg, use_bias=self.use_bias,
                              backend=self.backend, device=self.device)
        self.rank_ = int(obj.f)  # the rank fitted (see _fit_rank)
        if hasattr(reg, "bind"):
            reg.bind(obj, valid if reg.learn else None)
            if learned is not None:
                reg.set_state(learned)
        return obj

    def _fit(self, train: Interactions, valid: Interactions | None, callback):
        from ..data.split import random_split

        self._check_params()
        self.method_ = self._resolve_optimizer(train)
        full = None
        if valid is None and self.validation and self._plan()["validation"]:
            if train.nnz * float(self.validation) < 10:
                warnings.warn(f"{train.nnz} training entries are too few to hold out validation={self.validation} "
                              f"(fewer than 10 entries): training on all of them with no early stopping",
                              UserWarning, stacklevel=3)
            else:
                full = train
                train, valid = random_split(train, float(self.validation), seed=int(self.seed) + 1)
        self._fit_once(train, valid, callback)
        if full is not None and self.refit and self.stopped_ != "diverged" and not self.n_samples_:
            first = (self.history_, self.train_result_, self.best_epoch_)
            regularizer = self.objective_.regularizer
            self._fit_once(full, None, callback, epochs=self.best_epoch_, regularizer=regularizer)
            self.history_, self.train_result_ = first[0], first[1]
            self.refit_history_ = self.history_
            self.best_epoch_ = first[2]
            self.n_valid_ = valid.nnz

    def _fit_once(self, train: Interactions, valid: Interactions | None, callback, epochs: int | None = None,
                  regularizer=None):
        """One training run on ``train`` (early stopping on ``valid``); ``epochs`` and a fitted
        ``regularizer`` (whose learned state is kept fixed) are given by the refit."""
        from ..dist import leads
        from ..optim.base import make_optimizer
        from ..train.trainer import Trainer

        scale = self._data_scale(train)
        self.scale_ = scale
        fit_train = train if scale == 1.0 else train.with_values(train.values / scale)
        fit_valid = valid if (valid is None or scale == 1.0) else valid.with_values(valid.values / scale)
        obj = self._make_objective(fit_train, fit_valid, regularizer)
        plan = self._plan()
        opt = make_optimizer(plan["optimizer"], seed=self.seed, **self.optimizer_options)
        if self._sampling() and "burn_in" not in self.optimizer_options:
            # a short chain (or time budget) averages its second half: burning half of 20, 40 sweeps rather
            # than a tenth gave ML-100K 0.9184 / 0.8919 against 0.9253 / 0.8986 (Douban, Amazon alike)
            opt.burn_in = min(opt.burn_in, int(epochs or plan["epochs"]) // 2)
            opt.budget = plan["time_budget"]
        bk = obj.backend
        y = obj.init_params(self.init_scale, self.seed)
        self.objective_ = obj
        # the rescaled copy has the same index space and its views are built already (by the
        # objective): reading the original's would build a second CSR (1.2 GB at 100M ratings)
        self._set_index_state(fit_train, fit_valid)
        self.layout_ = obj.layout
        self.mu_ = float(obj.mu) * scale
        self.global_mean_ = float(train.values.mean())
        self.rating_range_ = (float(train.values.min()), float(train.values.max()))
        self.params_ = self._to_raw(bk.to_numpy(y))
        self.n_train_ = train.nnz
        self.n_valid_ = 0 if valid is None else valid.nnz
        self.posterior_ = None
        self.fold_in_prior_ = None
        self.n_averaged_ = 0
        sampler = bool(getattr(opt, "is_sampler", False))
        evaluate = None
        if valid is not None:
            rows, cols, truth = valid.users, valid.items, valid.values

            def evaluate(params):
                self.params_ = self._to_raw(bk.to_numpy(params))
                return self._score_indices(rows, cols, truth)

            if sampler:  # the running posterior mean over the kept samples
                evaluate = _running_mean_evaluate(self, opt, evaluate, rows, cols, truth)

        hook = None
        if callback is not None or sampler:

            def hook(params, row):
                if sampler:  # no early stop before the first kept sample (the end of burn-in)
                    trainer.patience = patience if row.get("kept") else None
                if callback is not None:
                    self.params_ = self._to_raw(bk.to_numpy(params))
                    callback(self, row)

        patience = self.patience if valid is not None else None
        trainer = Trainer(epochs or plan["epochs"], patience, verbose=self.verbose and leads(obj),
                          time_budget=plan["time_budget"], callback=hook, metric="rmse",
                          label=f"latent factor model (rank {obj.f})")
        result = trainer.run(obj, opt, y, evaluate)
        self.params_ = self._to_raw(bk.to_numpy(y))
        if sampler:
            self._keep_posterior(opt, _posterior_from(opt, result, scale), train)
        self.history_ = result.history
        self.train_result_ = result
        self.optimizer_ = opt
        self.stopped_ = result.stopped
        self.best_epoch_ = result.best_epoch or len(result.history)
        if result.stopped == "diverged":
            warnings.warn(result.message, RuntimeWarning, stacklevel=3)

    def _keep_posterior(self, opt, post, train: Interactions) -> None:
        """The sampler's average as the model: all the samples (``keep_samples``) or the rank-``rank_``
        summary of their mean as the factors of ``params_`` (the store is then let go)."""
        f = int(self.rank_)
        self.n_averaged_ = 0 if post is None else post[2].shape[1] // f
        if post is not None and not self.keep_samples:
            from ..optim.gibbs import low_rank_mean

            bu, bi, U, V = post
            P, Q = low_rank_mean(U, V, f, seed=int(self.seed))
            for target, value in zip(self.layout_.unpack(self.params_), (bu, bi, P, Q)):
                target[...] = value
            post = None
            opt.drop_samples()
        self.posterior_ = post
        self.fold_in_prior_ = self._population_prior(train) if (post is None and self.n_averaged_) else None

    def _population_prior(self, train: Interactions) -> dict:
        """The prior a new user's row gets after sampling (empirical Bayes): the mean and precision of
        the trained users' rows (p_u, b_u) of the summary, and the noise variance of its training
        residuals, in rating units.  Fold-in is then the row's posterior mean under it, so it needs
        no lam (the sampler used none): ML-100K, 50 users folded in from half their ratings, test
        RMSE 0.8650 on the other half against 0.8753 with the ALS ridge and 0.8631 refit with them."""
        bu, _, P, _ = self.layout_.unpack(self.params_)
        prior = _row_population(P, bu, self.user_counts_ > 0, self.use_bias)
        pred, _ = self._predict_indices(train.users, train.items, clip=False)
        noise = float(np.mean((pred - train.values) ** 2)) if train.nnz else 1.0
        return {**prior, "noise": max(noise, 1e-12)}

    def _plan(self) -> dict:
        """What one fit runs: the sampling pipeline (``preset="accurate"``, or ``optimizer="auto"``
        resolved to the sampler) is Bayesian averaging (the Gibbs sampler from a small start) on
        all the training data, for ``epochs`` sweeps (200 when None), or with the preset and a
        ``time_budget`` until the budget is spent."""
        if self._sampling():
            sweeps = 100_000 if (self.preset == "accurate" and self.time_budget) else (self.epochs or DEFAULT_SWEEPS)
            return {"optimizer": "gibbs", "epochs": sweeps, "time_budget": self.time_budget, "validation": False}
        name = self.optimizer if self.optimizer != "auto" else "als"
        epochs = self.epochs or (DEFAULT_SWEEPS if name == "gibbs" else DEFAULT_EPOCHS)
        return {"optimizer": name, "epochs": epochs, "time_budget": self.time_budget, "validation": True}

    def _data_scale(self, train: Interactions) -> float:
        """The unit the objective sees ratings in: their standard deviation (``standardize``), else 1."""
        if not self.standardize:
            return 1.0
        sd = float(np.std(train.values, dtype=np.float64))
        return sd if np.isfinite(sd) and sd > 1e-8 else 1.0

    def _to_raw(self, params) -> np.ndarray:
        """Parameters fitted on ratings / scale, in rating units: biases x scale, factors x sqrt(scale)
        (so p . q scales by ``scale``).  Always a float32 copy."""
        out = np.array(params, dtype=np.float32, copy=True)
        scale = getattr(self, "scale_", 1.0)
        if scale != 1.0:
            bu, bi, P, Q = self.layout_.unpack(out)
            bu *= scale
            bi *= scale
            P *= np.float32(np.sqrt(scale))
            Q *= np.float32(np.sqrt(scale))
        return out

    # --------------------------------------------------------------- factors
    def factors(self):
        """``(b_u, b_i, P, Q)`` as arrays (biases are empty without ``use_bias``).

        After Gibbs sampling (``n_samples_`` > 0) this is the posterior mean: the mean
        biases and the S kept samples side by side, P = [P_1 ... P_S] / sqrt(S)
        (m x S rank) and Q likewise, so that P Q^T is the mean of the P_s Q_s^T.
        """
        self._check_fitted()
        post = getattr(self, "posterior_", None)
        if post is not None:
            return post
        return self.layout_.unpack(self.params_)

    @property
    def n_samples_(self) -> int:
        """Number of posterior samples the predictions average (0: a point estimate)."""
        post = getattr(self, "posterior_", None)
        if post is not None:
            return post[2].shape[1] // int(self.rank_)
        return int(getattr(self, "n_averaged_", 0))

    def _factors(self):
        bu, bi, P, Q = self.factors()
        if self.use_bias:
            return P, Q, bu, bi, self.mu_
        return P, Q, None, None, 0.0

    def _fallback_scores(self) -> np.ndarray:
        bu, bi, P, Q = self.factors()
        return (bi.astype(np.float64) + self.mu_) if self.use_bias else np.full(self.n_items_, self.global_mean_)

    # ------------------------------------------------------------ prediction
    def _predict_indices(self, rows, cols, clip: bool = True, biases=None, dots=None):
        """Predictions for index pairs; -1 marks an unknown user/item. Returns (pred, fallback mask).

        ``biases = (b_u, b_i)`` and ``dots(both)`` (p_u . q_i on the pairs marked in
        ``both``) replace the model's own (the running posterior mean while sampling).
        """
        bu, bi, P, Q = self.factors()
        if biases is not None:
            bu, bi = biases
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        known_u = rows >= 0
        known_i = cols >= 0
        ru = np.where(known_u, rows, 0)
        ci = np.where(known_i, cols, 0)
        seen_u = known_u & (self.user_counts_[ru] > 0)
        seen_i = known_i & (self.item_counts_[ci] > 0)
        both = seen_u & seen_i
        if self.use_bias:
            pred = self.mu_ + np.where(seen_u, bu[ru], 0.0) + np.where(seen_i, bi[ci], 0.0)
        else:  # the plain model p.q has no mean: fall back to the training mean
            pred = np.full(len(rows), self.global_mean_, dtype=np.float64)
            pred[both] = 0.0
        n_pairs = int(both.sum())
        if dots is not None:
            pred[both] += dots(both)
        elif n_pairs >= PARALLEL_PAIRS or getattr(self, "posterior_", None) is not None:
            from ..kernels.gibbs import pair_dots  # one parallel pass, no gathered copies of the pairs' rows

            out = np.empty(n_pairs, dtype=np.float64)
            pair_dots(ru[both], ci[both], np.ascontiguousarray(P), np.ascontiguousarray(Q), P.shape[1], out)
            pred[both] += out
        else:  # few pairs: numpy, which starts no thread pool (a process may fork after loading a model)
            pred[both] += np.einsum("ij,ij->i", P[ru[both]], Q[ci[both]], dtype=np.float64)
        if clip:
            np.clip(pred, *self.rating_range_, out=pred)
        return pred, ~both

    # ----------------------------------------------------------------- files
    def _state_arrays(self) -> dict:
        out = {"params": np.asarray(self.params_)}
        post = getattr(self, "posterior_", None)
        if post is not None:  # the posterior mean, concatenated-factor form (see factors())
            out.update(zip(("posterior_bu", "posterior_bi", "posterior_P", "posterior_Q"), post))
        return out

    def _state_meta(self) -> dict:
        meta = {"mu": self.mu_, "global_mean": self.global_mean_, "rating_range": list(self.rating_range_),
                "layout": self.layout_.to_meta(),
                "n_samples": 0 if getattr(self, "posterior_", None) is None else self.n_samples_,
                "n_averaged": self.n_samples_, "method": getattr(self, "method_", None)}
        meta["scale"] = float(getattr(self, "scale_", 1.0))  # the standardization unit (fold_in, partial_fit)
        prior = getattr(self, "fold_in_prior_", None)
        if prior is not None:  # a sampled model's fold-in prior (see _population_prior)
            meta["fold_in_prior"] = {"mean": prior["mean"].tolist(), "precision": prior["precision"].tolist(),
                                     "noise": prior["noise"]}
        if self.lam == "learn" and hasattr(self, "objective_"):  # the learned penalty a new row gets
            meta["fold_in_penalty"] = [np.asarray(c, dtype=np.float64).tolist() for c in self._fold_in_penalty()]
        return meta

    def _set_state(self, arrays: dict, meta: dict) -> None:
        from ..errors import ModelFileError
        from ..models.base import ParamLayout

        from ..optim.base import make_optimizer

        self.params_ = arrays["params"]
        method = meta.get("method")  # absent in older files: the named optimizer (or the preset's sampler)
        if method is not None:
            try:
                make_optimizer(str(method))
            except ConfigError:
                raise ModelFileError(f"damaged lfopt model file (state 'method' must name an optimizer, found "
                                     f"{method!r})") from None
        self.method_ = method or self._plan()["optimizer"]
        self.mu_ = float(meta["mu"])
        self.global_mean_ = float(meta["global_mean"])
        self.rating_range_ = tuple(meta["rating_range"])
        m, n = self.n_users_, self.n_items_
        nb = (m, n) if self.use_bias else (0, 0)
        # the fitted rank (the preset may fit less than ``rank``), from the parameter vector's size
        extra = self.params_.shape[0] - nb[0] - nb[1] if self.params_.ndim == 1 else -1
        f = extra // (m + n) if (m + n and extra > 0 and extra % (m + n) == 0) else int(self.rank)
        if f != int(self.rank) and not (self._sampling() and f < int(self.rank)):
            f = int(self.rank)  # not a rank the fit can have made: the size check below says so
        self.rank_ = int(f)
        self.layout_ = ParamLayout((("b_u", (nb[0],)), ("b_i", (nb[1],)), ("P", (m, f)), ("Q", (n, f))))
        if self.params_.shape != (self.layout_.size,):
            raise ModelFileError("damaged lfopt model file (parameter vector has the wrong size)")
        self.posterior_ = _posterior_from_file(arrays, meta, m, n, f, self.use_bias)
        averaged = meta.get("n_averaged", self.n_samples_)
        if isinstance(averaged, bool) or not isinstance(averaged, int) or averaged < 0:
            raise ModelFileError(f"damaged lfopt model file (state 'n_averaged' must be an integer >= 0, "
                                 f"found {averaged!r})")
        self.n_averaged_ = averaged
        scale = meta.get("scale", 1.0)  # absent in older files (then 1: fold_in's penalty in rating units)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            raise ModelFileError(f"damaged lfopt model file (state 'scale' must be a number > 0, found {scale!r})")
        self.scale_ = float(scale)
        self.fold_in_prior_ = _prior_from_meta(meta.get("fold_in_prior"), f + (1 if self.use_bias else 0))
        if meta.get("fold_in_penalty") is not None:
            try:
                pen = tuple(np.asarray(c, dtype=np.float64) for c in meta["fold_in_penalty"])
                ok = len(pen) == 4 and all(np.isfinite(c).all() and (c >= 0).all() for c in pen)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ModelFileError("damaged lfopt model file (state 'fold_in_penalty' is not 4 lists of numbers >= 0)")
            self.fold_in_penalty_ = pen

    # -------------------------------------------------- fold-in / partial_fit
    def _fold_in_penalty(self):
        """``(cx0, cx1, cb0, cb1)``: a row with n entries gets the factor weights cx0 + cx1 n (scalars
        or (rank,) arrays) and the bias weight cb0 + cb1 n, in standardized units, as in training.

        Fixed L2: lam0 + lam n and lam0_b + lam_b n (the model's own parameters).  Learned
        Lambda (``lam="learn"``): the median over the trained users of their learned weight
        per unit of row scale, times the regularizer's row scale (a0 + a1 n); saved in the
        model file, so a reloaded model folds in with the same penalty.
        """
        pen = getattr(self, "fold_in_penalty_", None)
        if pen is not None:
            return pen
        if self.lam != "learn":
            from ..regularizers import L2

            reg = L2(self.lam, self.lam_b, lam0=self.lam0, lam0_b=self.lam0_b)
            return reg.lam0, reg.lam, reg.lam0_b, reg.lam_b
        obj = getattr(self, "objective_", None)
        reg = getattr(obj, "regularizer", None)
        try:
            cu = np.asarray(obj._counts[0], dtype=np.float64)
            has = cu > 0
            wu, _, wbu, _ = (np.asarray(w, dtype=np.float64) for w in obj.row_weights)
            su = reg._row_scale(reg.scale, cu)
            sb = reg._row_scale(reg.bias_scale, cu)
            per = wu[has] / (su[has][:, None] if wu.ndim == 2 else su[has])
            per = np.median(per, axis=0)
            per_b = float(np.median(wbu[has] / sb[has])) if wbu.size else 0.0
            pen = (per * reg.scale[0], per * reg.scale[1], per_b * reg.bias_scale[0], per_b * reg.bias_scale[1])
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"fold_in: this model's learned regularization (lam='learn') is not available "
                              f"({type(exc).__name__}: {exc}); refit it") from None
        self.fold_in_penalty_ = pen
        return pen

    def _fold_in_weights(self, n: int):
        """(factor weights (rank,), bias weight) of a row with ``n`` entries, float64, standardized units;
        float32 products like :class:`~lfopt.regularizers.L2`, and a zero factor weight replaced by
        1e-6 n as ALS does."""
        cx0, cx1, cb0, cb1 = self._fold_in_penalty()
        f32 = np.float32
        wx = np.broadcast_to(np.asarray(f32(cx1) * f32(n) + f32(cx0), dtype=np.float64), (int(self.rank_),)).copy()
        wx[wx == 0.0] = 1e-6 * n
        wb = float(np.float32(f32(cb1) * f32(n) + f32(cb0)))
        return wx, wb

    def _ridge_row(self, Q, bi, cols, target, wx, wb):
        """argmin_{x, b} sum_k (target_k - bi[c_k] - b - x . Q[c_k])^2 + sum_d wx_d x_d^2 + wb b^2
        (no b without ``use_bias``); all in standardized units, float64."""
        Y = np.asarray(Q[cols], dtype=np.float64)
        t = np.asarray(target, dtype=np.float64)
        if self.use_bias:
            t = t - np.asarray(bi[cols], dtype=np.float64)
            Y = np.hstack([Y, np.ones((len(cols), 1))])
            D = np.append(wx, wb)
        else:
            D = wx
        A = Y.T @ Y + np.diag(D)
        rhs = Y.T @ t
        try:
            z = np.linalg.solve(A, rhs)
        except np.linalg.LinAlgError:
            z = np.linalg.lstsq(A, rhs, rcond=None)[0]
        return (z[:-1], float(z[-1])) if self.use_bias else (z, 0.0)

    def _fold_in_row(self, cols, values):
        """After sampling (the summary kept), the row's posterior mean under the trained users'
        population (:meth:`_population_row`).  Else the ALS ridge solve of one user's row with the
        items fixed: the same penalty as training (``_fold_in_weights(len(cols))``) in the
        standardized units the model was trained in.

        After Gibbs sampling the row is solved against each kept sample's item factors (with the
        posterior-mean item biases) and the solutions side by side form its posterior-mean row
        (bias: their mean); the point parameters ``params_`` get the solve against the last sample.
        Returns ``(b_u, p_u, posterior (b_u, P row) or None)`` in rating units.
        """
        prior = getattr(self, "fold_in_prior_", None)
        if prior is not None and getattr(self, "posterior_", None) is None:
            return (*self._population_row(prior, cols, values), None)
        s = float(getattr(self, "scale_", 1.0))
        rs = np.float64(np.sqrt(s))
        wx, wb = self._fold_in_weights(len(cols))
        target = np.asarray(values, dtype=np.float64) / s - (self.mu_ / s if self.use_bias else 0.0)
        bu, bi, P, Q = self.layout_.unpack(self.params_)
        x, b = self._ridge_row(Q / rs, bi / s, cols, target, wx, wb)
        post = None
        if getattr(self, "posterior_", None) is not None:
            pbu, pbi, PP, PQ = self.posterior_
            f = int(self.rank_)
            S = PQ.shape[1] // f
            xs, bs = [], []
            for k in range(S):  # PQ = [Q_1 ... Q_S] / sqrt(S)
                Qk = PQ[:, k * f:(k + 1) * f] * np.float64(np.sqrt(S))
                xk, bk = self._ridge_row(Qk / rs, pbi / s, cols, target, wx, wb)
                xs.append(xk)
                bs.append(bk)
            post = (float(np.mean(bs)) * s, np.concatenate(xs) * rs / np.sqrt(S))
        return b * s, x * rs, post

    def _population_row(self, prior: dict, cols, values):
        """``(b_u, p_u)``: the posterior mean of a new row under the population prior
        (:meth:`_population_prior`), the item side fixed; rating units, float64."""
        _, bi, _, Q = self.layout_.unpack(self.params_)
        z = _row_posterior_mean(prior["precision"], prior["mean"], _design(Q, cols, self.use_bias),
                                self._targets(values, bi, cols), prior["noise"])
        return (float(z[-1]), z[:-1]) if self.use_bias else (0.0, z)

    def _targets(self, values, b_other, cols) -> np.ndarray:
        """What a row's factors fit of its ratings: r - mu - b_other (r without biases), float64."""
        t = np.asarray(values, dtype=np.float64)
        return t - self.mu_ - np.asarray(b_other[cols], dtype=np.float64) if self.use_bias else t

    def _bayes_update(self, train: Interactions) -> None:
        """partial_fit of a sampled model: every user row with entries in ``train`` becomes its
        posterior mean given them, the items fixed, its prior the row it had with the precision of
        the ratings it was fitted on (population precision + Z_old^T Z_old / noise; a new user: the
        population, as fold-in); then every item row likewise against the updated users, its prior
        from the trained items' rows.  A pair fitted before is already in its rows' priors and is not
        counted again (pass old and new ratings or the new ones alone: the same update).  One exact
        pass, no epochs."""
        seen = self._seen()  # the pairs fitted so far (this call's are added after)
        bu, bi, P, Q = self.layout_.unpack(self.params_)
        noise = float(self.fold_in_prior_["noise"])
        item_prior = _row_population(Q, bi, self.item_counts_ > 0, self.use_bias)
        rows_updated = {}
        for side, prior in (("u", self.fold_in_prior_), ("i", item_prior)):
            if side == "u":
                new, old, X, bx, Y, by = train.csr, seen.csr, P, bu, Q, bi
            else:
                new, old, X, bx, Y, by = train.csc, seen.csc, Q, bi, P, bu
            prec, mean = prior["precision"], prior["mean"]
            updated = 0
            for r in np.flatnonzero(np.diff(new.indptr)):
                cols = new.indices[new.indptr[r]:new.indptr[r + 1]]
                vals = new.data[new.indptr[r]:new.indptr[r + 1]]
                had = old.indices[old.indptr[r]:old.indptr[r + 1]] if r < len(old.indptr) - 1 else cols[:0]
                fresh = ~np.isin(cols, had)  # a pair fitted before is in the row already: not counted twice
                if not fresh.any():
                    continue
                cols, t = cols[fresh], self._targets(vals[fresh], by, cols[fresh])
                updated += 1
                if len(had):  # the row's current value, as precise as the ratings it was fitted on
                    Zo = _design(Y, had, self.use_bias)
                    p0 = prec + Zo.T @ Zo / noise
                    m0 = np.append(X[r], bx[r]) if self.use_bias else np.asarray(X[r], np.float64)
                else:
                    p0, m0 = prec, mean
                z = _row_posterior_mean(p0, m0, _design(Y, cols, self.use_bias), t, noise)
                X[r] = z[:X.shape[1]]
                if self.use_bias:
                    bx[r] = z[-1]
            rows_updated[side] = updated
        row = {"epoch": 1, "phase": "partial_fit", "users_updated": rows_updated["u"],
               "items_updated": rows_updated["i"]}
        self.history_ = list(self.history_) + [row]
        lo, hi = self.rating_range_
        self.rating_range_ = (min(lo, float(train.values.min())), max(hi, float(train.values.max())))

    def _set_user_row(self, row: int, state) -> None:
        b, x, post = state
        bu, _, P, _ = self.layout_.unpack(self.params_)
        P[row] = x
        if self.use_bias:
            bu[row] = b
        if post is not None and getattr(self, "posterior_", None) is not None:
            pbu, _, PP, _ = self.posterior_
            PP[row] = post[1]
            if self.use_bias:
                pbu[row] = post[0]

    def _grow(self, n_users: int, n_items: int, init: bool) -> None:
        """Extend b_u, b_i, P, Q (and the posterior mean) from n_users/n_items rows to the model's
        current ``n_users_``/``n_items_``: zeros, or with ``init`` factors drawn as ``fit`` draws them
        (N(0, init_scale^2 / rank) in standardized units, seeded by ``seed`` and the sizes)."""
        from ..models.base import ParamLayout

        m, n, f = self.n_users_, self.n_items_, int(self.rank_)
        bu, bi, P, Q = self.layout_.unpack(self.params_)
        s = float(getattr(self, "scale_", 1.0))
        rng = np.random.default_rng([int(self.seed), n_users, n_items, m, n])

        def rows(k):
            if not init or k == 0:
                return np.zeros((k, f), np.float32)
            out = rng.normal(0.0, self.init_scale / np.sqrt(f), (k, f))
            if not self.use_bias:
                out += np.sqrt(max(self.global_mean_ / s, 0.0) / f)
            return (out * np.sqrt(s)).astype(np.float32)

        nb = (m, n) if self.use_bias else (0, 0)
        layout = ParamLayout((("b_u", (nb[0],)), ("b_i", (nb[1],)), ("P", (m, f)), ("Q", (n, f))))
        parts = {"b_u": np.concatenate([bu, np.zeros(nb[0] - len(bu), np.float32)]),
                 "b_i": np.concatenate([bi, np.zeros(nb[1] - len(bi), np.float32)]),
                 "P": np.vstack([P, rows(m - n_users)]), "Q": np.vstack([Q, rows(n - n_items)])}
        self.params_ = np.concatenate([parts[k].ravel() for k in ("b_u", "b_i", "P", "Q")]).astype(np.float32)
        self.layout_ = layout
        post = getattr(self, "posterior_", None)
        if post is not None:
            pbu, pbi, PP, PQ = post
            self.posterior_ = (np.concatenate([pbu, np.zeros(nb[0] - len(pbu), pbu.dtype)]),
                               np.concatenate([pbi, np.zeros(nb[1] - len(pbi), pbi.dtype)]),
                               np.vstack([PP, np.zeros((m - n_users, PP.shape[1]), PP.dtype)]),
                               np.vstack([PQ, np.zeros((n - n_items, PQ.shape[1]), PQ.dtype)]))

    def _from_raw(self, params) -> np.ndarray:
        """The inverse of :meth:`_to_raw`: rating-unit parameters back in standardized units (float32)."""
        out = np.array(params, dtype=np.float32, copy=True)
        scale = float(getattr(self, "scale_", 1.0))
        if scale != 1.0:
            bu, bi, P, Q = self.layout_.unpack(out)
            bu /= scale
            bi /= scale
            P /= np.float32(np.sqrt(scale))
            Q /= np.float32(np.sqrt(scale))
        return out

    def _partial_fit(self, train: Interactions, epochs: int | None) -> None:
        """``epochs`` epochs of the model's optimizer on ``train`` (in the grown index space) from the
        current parameters, with the training mean and standardization of the original fit and the
        same penalty form (counts of ``train``); rows absent from ``train`` keep their parameters."""
        from ..optim.base import make_optimizer
        from ..regularizers import L2
        from ..train.trainer import Trainer

        if getattr(self, "posterior_", None) is not None:
            raise ConfigError("partial_fit is not available for a Gibbs-sampled model that keeps its samples "
                              "(keep_samples=True): use fold_in for new users, or fit again")
        name = self._plan()["optimizer"]
        if name == "gibbs":
            if getattr(self, "fold_in_prior_", None) is not None:
                self._bayes_update(train)
                return
            name, options, default_epochs = "sgd", {}, 1  # no prior (no sample kept): small SGD steps
        else:
            options, default_epochs = self.optimizer_options, self._plan()["epochs"]
        scale = float(getattr(self, "scale_", 1.0))
        fit_train = train if scale == 1.0 else train.with_values(train.values / scale)
        if self.lam == "learn":
            cx0, cx1, cb0, cb1 = self._fold_in_penalty()
            if np.ndim(cx0) or np.ndim(cx1):
                raise ConfigError(f"partial_fit: a learned per-dimension Lambda (granularity="
                                  f"{self.granularity!r}) cannot be carried to new rows; fit again")
            reg = L2(float(cx1), float(cb1), lam0=float(cx0), lam0_b=float(cb0))
        else:
            reg = None
        obj = self._make_objective(fit_train, None, reg, rank=int(self.rank_))
        if self.use_bias:
            obj.mu = float(np.float32(self.mu_ / scale))  # the biases are relative to the original mean
        old = self.params_.copy()
        bk = obj.backend
        y = bk.asarray(self._from_raw(self.params_))
        opt = make_optimizer(name, seed=self.seed, **options)
        trainer = Trainer(int(epochs or default_epochs), None, verbose=self.verbose, metric="rmse",
                          label=f"latent factor model (rank {self.rank_}), partial_fit")
        result = trainer.run(obj, opt, y, None)
        new = self._to_raw(bk.to_numpy(y))
        for which, counts in (("b_u", train.user_counts()), ("b_i", train.item_counts()),
                              ("P", train.user_counts()), ("Q", train.item_counts())):
            a_new, a_old = self.layout_.unpack(new, which)[0], self.layout_.unpack(old, which)[0]
            if len(a_new):
                a_new[counts == 0] = a_old[counts == 0]
        self.params_ = new
        self.history_ = list(self.history_) + [{**row, "phase": "partial_fit"} for row in result.history]
        lo, hi = self.rating_range_
        self.rating_range_ = (min(lo, float(train.values.min())), max(hi, float(train.values.max())))
        if result.stopped == "diverged":
            warnings.warn(result.message, RuntimeWarning, stacklevel=3)


# --------------------------------------------------- samplers (lfopt.optim.gibbs)
def _capped_rank(rank: int, train: Interactions) -> int:
    """The sampling pipeline's rank: at most the mean number of ratings per row, 2 |K| / (m + n)."""
    per_row = 2.0 * train.nnz / max(train.n_users + train.n_items, 1)
    return max(1, min(int(rank), int(per_row)))


def _running_mean_evaluate(model, opt, score_sample, rows, cols, truth):
    """The validation function while sampling: RMSE/MAE of the running posterior mean over the
    kept samples (NaN before the first one), and ``sample_rmse`` of the current sample."""
    state = {"samples": None}

    def evaluate(params):
        current = score_sample(params)
        samples = opt.samples
        if samples is None or samples.count == 0:
            return {"rmse": float("nan"), "mae": float("nan"), "sample_rmse": current["rmse"]}
        if state["samples"] is not samples:
            samples.track(rows, cols)
            state["samples"] = samples
        scale = getattr(model, "scale_", 1.0)
        mean_dots = samples.tracked_dot_mean() * scale
        bu, bi = (b.astype(np.float64) * scale for b in samples.mean_biases())
        pred, unseen = model._predict_indices(rows, cols, biases=(bu, bi), dots=lambda both: mean_dots[both])
        out = rating_metrics(pred, truth, unseen, "bias")
        out["sample_rmse"] = current["rmse"]
        return out

    return evaluate


#: a sampler stopped by its time budget with fewer samples than this warns (the average is noisy)
FEW_SAMPLES = 100


def _posterior_from(opt, result, scale: float):
    """The posterior mean (b_u, b_i, P, Q) in concatenated-factor form, in rating units, from a
    finished sampler; after early stopping only the samples kept up to the best epoch count."""
    samples = opt.samples
    if samples is None:
        return None
    if result.stopped in ("early_stop", "diverged") and result.best_epoch:
        samples.truncate(result.best_epoch)
    if result.stopped == "time_budget" and 0 < samples.offered < FEW_SAMPLES:
        warnings.warn(f"the time budget left {samples.offered} posterior samples (fewer than {FEW_SAMPLES}): their "
                      f"average is noisy and the chain may not have settled: raise time_budget (or lower the rank)",
                      RuntimeWarning, stacklevel=4)
    post = samples.finalize()
    if post is None:
        warnings.warn(f"optimizer {opt.name!r} kept no sample (epochs <= warm_start + burn_in): the model "
                      f"predicts with the last sample", RuntimeWarning, stacklevel=4)
        return None
    bu, bi, P, Q = post
    if scale != 1.0:  # in place: P and Q are views of the sampler's store, no copy
        bu *= np.float32(scale)
        bi *= np.float32(scale)
        P *= np.float32(np.sqrt(scale))
        Q *= np.float32(np.sqrt(scale))
    return bu, bi, P, Q


def _design(Y, cols, use_bias: bool) -> np.ndarray:
    """Rows Y[cols] (float64), with a column of ones for the bias."""
    Z = np.asarray(Y[cols], dtype=np.float64)
    return np.hstack([Z, np.ones((len(cols), 1))]) if use_bias else Z


def _row_posterior_mean(prec, mean, Z, t, noise: float) -> np.ndarray:
    """argmax of N(z; mean, prec^-1) N(t; Z z, noise I): (prec + Z^T Z / noise)^-1 (prec mean + Z^T t / noise)."""
    return np.linalg.solve(prec + Z.T @ Z / noise, prec @ mean + Z.T @ t / noise)


def _row_population(X, b, seen, use_bias: bool) -> dict:
    """Mean and precision of the rows (x, b) of ``X`` (and ``b``) marked ``seen``."""
    Z = X[seen].astype(np.float64)
    if use_bias:
        Z = np.hstack([Z, b[seen, None].astype(np.float64)])
    g = Z.shape[1]
    mean = Z.mean(axis=0) if len(Z) else np.zeros(g)
    cov = np.cov(Z.T).reshape(g, g) if len(Z) > 1 else np.eye(g)
    cov = cov + (1e-6 * max(float(np.trace(cov)) / g, 1e-12)) * np.eye(g)  # a ridge for degenerate rows
    return {"mean": mean, "precision": np.linalg.inv(cov)}


def _prior_from_meta(value, g: int):
    """The fold-in prior saved with a sampled model (None when absent), checked."""
    from ..errors import ModelFileError

    if value is None:
        return None
    try:
        mean = np.asarray(value["mean"], dtype=np.float64)
        prec = np.asarray(value["precision"], dtype=np.float64)
        noise = float(value["noise"])
        ok = (mean.shape == (g,) and prec.shape == (g, g) and np.isfinite(mean).all() and np.isfinite(prec).all()
              and np.isfinite(noise) and noise > 0)
    except (TypeError, ValueError, KeyError):
        ok = False
    if not ok:
        raise ModelFileError(f"damaged lfopt model file (state 'fold_in_prior' must hold a mean of {g} numbers, a "
                             f"{g} x {g} precision and a noise variance > 0)")
    return {"mean": mean, "precision": prec, "noise": noise}


def _posterior_from_file(arrays, meta, m, n, f, use_bias):
    from ..errors import ModelFileError

    S = int(meta.get("n_samples", 0) or 0)
    if S == 0:
        return None
    try:
        post = tuple(arrays[k] for k in ("posterior_bu", "posterior_bi", "posterior_P", "posterior_Q"))
    except KeyError:
        raise ModelFileError("damaged lfopt model file (posterior samples missing)") from None
    nb = (m, n) if use_bias else (0, 0)
    if (post[0].shape != (nb[0],) or post[1].shape != (nb[1],) or post[2].shape != (m, S * f)
            or post[3].shape != (n, S * f)):
        raise ModelFileError("damaged lfopt model file (posterior samples have the wrong shape)")
    return post
