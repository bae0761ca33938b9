"""lfopt: latent factor models for high-dimensional and incomplete data.

Quick start::

    import lfopt
    data = lfopt.load_data("ratings.dat")            # or lfopt.synthetic()
    train, test = lfopt.random_split(data, 0.1, seed=42)
    model = lfopt.LatentFactorModel(rank=50, optimizer="sgd").fit(train)
    print(model.evaluate(test))
"""

__version__ = "0.1.0"

import os as _os

# The kernels are numba parallel loops (OpenMP threading layer); mini-batch methods cross
# thousands of parallel regions per epoch.  GNU OpenMP's default active spin-waiting makes
# every barrier cost a scheduler time slice as soon as another process competes for the
# cores (measured: a mini-batch AdaGO epoch on ML-1M took 0.95 s instead of 0.26 s on 2
# busy cores).  Passive waiting costs microseconds on free cores.  It must be set before
# the OpenMP runtime starts; the user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .data.interactions import Interactions  # noqa: E402
from .data.io import load as load_data  # noqa: E402
from .data.split import (  # noqa: E402
    fixed_split,
    k_core,
    kfold,
    per_user_split,
    random_split,
    train_valid_test_split,
)
from .data.synthetic import synthetic  # noqa: E402
from .errors import ConfigError, DataError, DivergenceError, LfoptError, ModelFileError  # noqa: E402
from .estimators import BPRMF, BiasBaseline, LatentFactorModel, Recommender, load  # noqa: E402
from .ranking import grid_search, implicit_split, to_implicit  # noqa: E402

__all__ = [
    "Interactions", "load_data", "synthetic", "random_split", "train_valid_test_split", "kfold",
    "per_user_split", "fixed_split", "k_core", "LatentFactorModel", "load", "LfoptError", "DataError",
    "ConfigError", "ModelFileError", "DivergenceError", "BPRMF", "BiasBaseline", "Recommender", "implicit_split", "to_implicit", "grid_search",
    "__version__",
]

from .estimators.ials import ImplicitALS, PopularityRanker  # noqa: E402
from .estimators.deep import DeepMF  # noqa: E402

__all__ += ["ImplicitALS", "PopularityRanker", "DeepMF"]

from .data.split import align_test, train_test_files  # noqa: E402

__all__ += ["align_test", "train_test_files"]

from . import dist  # noqa: E402  (training on many processes: lfopt.dist.init(), rank())

__all__ += ["dist"]
