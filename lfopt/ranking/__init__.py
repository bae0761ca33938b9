"""Ranking from implicit feedback (METHODS.md section 4): BPR-MF, lambdaOpt, full-ranking metrics.

Quick start::

    import lfopt
    from lfopt.ranking import BPRMF, implicit_split, grid_search

    data = lfopt.load_data("ml-1m/ratings.dat")
    split = implicit_split(data, threshold=4, k_core=20)         # 60/20/20 per user
    model = BPRMF(rank=64, regularizer="lambdaopt", granularity="DUI", verbose=True).fit(split)
    print(model.evaluate(split.test))                           # AUC, HR/NDCG/Recall/Precision@K
    items, scores = model.recommend([0, 1, 2], k=10)            # seen items excluded
"""

from ..eval.ranking import full_ranking_metrics, iter_topk, per_user_metrics, topk
from .data import ImplicitSplit, implicit_split, to_implicit
from ..estimators.bpr import BPRMF
from ..regularizers.lambda_opt import GRANULARITIES, LambdaLayout
from .search import grid_search

__all__ = [
    "BPRMF", "ImplicitSplit", "implicit_split", "to_implicit", "grid_search", "GRANULARITIES", "LambdaLayout",
    "full_ranking_metrics", "per_user_metrics", "topk", "iter_topk",
]
