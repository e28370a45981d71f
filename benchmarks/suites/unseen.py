"""Suite ``unseen``: top-1 on held-out grocery items (iconic-only and iconic + 8 photos enrollment)
for the off-the-shelf backbone and any trained models, paired against the first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common import MANIFESTS, SHARED_DATA

QUICK = {"max_queries": 20}


def run(
    models: dict[str, str] | None = None,
    protocols: dict[str, str] | None = None,
    data_root: str | Path = SHARED_DATA / "grocery",
    max_queries: int | None = None,
    score_modes: tuple[str, ...] = ("max", "prototype", "probe"),
) -> dict[str, Any]:
    """Top-1 on held-out grocery items under two enrollment protocols, each model against the first.

    Defaults: the off-the-shelf lite0 as baseline, then any models given (e.g. trained checkpoints);
    protocols: the iconic catalog image alone (``data_manifests/grocery_unseen.csv``), and iconic + 8
    train photos per item (``grocery_unseen_fewshot.csv``); each gallery scored with each of
    ``score_modes`` (nearest photo, prototype, enrollment-time probe). Skipped when ``data_root``
    is absent (real data).
    """
    from recognizer.evaluation.protocols import evaluate_protocols

    if not Path(data_root).is_dir():
        return {"skipped": f"{data_root} not found (real data)"}
    models = models or {"lite0 (off the shelf)": "lite0"}
    protocols = protocols or {
        "iconic only": str(MANIFESTS / "grocery_unseen.csv"),
        "iconic + 8 photos": str(MANIFESTS / "grocery_unseen_fewshot.csv"),
    }
    return evaluate_protocols(
        models, protocols, str(data_root), max_queries=max_queries, score_modes=score_modes
    )
