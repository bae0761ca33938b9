"""Regularizers as objects: each turns the data's row counts into per-row L2 weights.

An objective asks its regularizer once for ``row_weights(user_counts, item_counts)
-> (wu, wi, wbu, wbi)`` and hands them to its kernels, which only ever see weights:
the penalty is 1/2 sum_u wu[u] |p_u|^2 + 1/2 sum_i wi[i] |q_i|^2 + 1/2 sum_u wbu[u] b_u^2
+ 1/2 sum_i wbi[i] b_i^2.  A new form of L2 (a constant part, learned per-row
coefficients) is a new regularizer, never a new kernel.

:class:`LearnedL2` learns its coefficients on a validation set during training
(``bind(objective, valid)``, then the trainer's per-epoch ``after_epoch`` hook);
its factor weights may be (m, f) / (n, f), one per (row, dimension).
"""

from .l2 import L2
from .lambda_rating import LearnedL2

__all__ = ["L2", "LearnedL2"]
