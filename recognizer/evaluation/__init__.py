"""Evaluation: how well a gallery recognises held-out items, with honest uncertainty.

``metrics`` holds numpy-in, numpy-out measures (top-k, CMC, mAP@R, open-set curves, bootstrap
CIs, McNemar); ``report`` evaluates a gallery on a manifest and renders the HTML report;
``protocols`` compares models under several enrollment protocols.
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
from .report import Evaluation, compute_metrics, evaluate_gallery, render_html, run_report

__all__ = [
    "Evaluation", "bootstrap_ci", "cmc_curve", "compute_metrics", "evaluate_gallery", "mcnemar_exact",
    "open_set_curves", "recall_at_k", "recommend_threshold", "render_html", "run_report", "top1_accuracy",
    "topk_accuracy", "truth_ranks",
]  # fmt: skip
