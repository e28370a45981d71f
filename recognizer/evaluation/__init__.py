"""Evaluation: how well a gallery recognises held-out items, with honest uncertainty.

``metrics`` holds numpy-in, numpy-out measures (one top-1 and top-k, CMC, mAP@R, open-set
curves, bootstrap CIs, McNemar), a leaf that every stage may use; ``report`` evaluates a
gallery on a manifest and renders the HTML report; ``protocols`` compares models under
several enrollment protocols. Only ``metrics`` is re-exported here: ``report`` and
``protocols`` sit above matching (import them from their modules), so that importing a
metric never pulls in the matching code that itself counts accuracy with these metrics.
"""

from .metrics import (
    bootstrap_ci,
    cmc_curve,
    mcnemar_exact,
    open_set_curves,
    recall_at_k,
    recommend_threshold,
    top1_accuracy,
    topk_accuracy,
    truth_ranks,
)

__all__ = [
    "bootstrap_ci", "cmc_curve", "mcnemar_exact", "open_set_curves", "recall_at_k", "recommend_threshold",
    "top1_accuracy", "topk_accuracy", "truth_ranks",
]  # fmt: skip
