"""The estimators: one :class:`Recommender` base and the models built on it."""

from .base import MODEL_CLASSES, Recommender, as_interactions
from .baseline import BiasBaseline
from .bpr import BPRMF
from .io import load_model as load
from .lf import LatentFactorModel

__all__ = ["Recommender", "LatentFactorModel", "BPRMF", "BiasBaseline", "load", "as_interactions", "MODEL_CLASSES"]

from .ials import ImplicitALS, PopularityRanker  # noqa: E402

__all__ += ["ImplicitALS", "PopularityRanker"]

from .deep import DeepMF  # noqa: E402  (registers the "deep_mf" model files)

__all__ += ["DeepMF"]
