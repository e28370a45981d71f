"""Suite ``enrol_views``: top-1 on held-out grocery items when each photo is enrolled under different views.

Queries are framed as the photo tools frame them (``crop:0.6``); the gallery photos are enrolled
whole, as that crop, or both (one vector per view), through ``recognizer.enroll`` itself, so the
figures are what ``tools/enroll.py --views ...`` gives. Protocols: the iconic catalog image alone
and iconic + 8 shelf photos per item; top-1 over the whole gallery and within each query's own
candidates. Skipped when the real data is absent.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..common import MANIFESTS, SHARED_DATA

QUICK = {"max_queries": 20, "enrolments": (("whole",), ("whole", "crop:0.6"))}


def run(
    model: str = "lite0",
    query_view: str = "crop:0.6",
    enrolments: tuple[tuple[str, ...], ...] = (("whole",), ("crop:0.6",), ("whole", "crop:0.6")),
    protocols: dict[str, str] | None = None,
    data_root: str | Path = SHARED_DATA / "grocery",
    max_queries: int | None = None,
    score_mode: str = "max",
) -> dict[str, Any]:
    from recognizer.data.manifest import load_manifest
    from recognizer.enroll import enroll_manifest
    from recognizer.evaluation.metrics import top1_accuracy
    from recognizer.gallery import Gallery
    from recognizer.matching.options import parse_view
    from recognizer.matching.pipeline import Recognizer
    from recognizer.models.model import load_model

    if not Path(data_root).is_dir():
        return {"skipped": f"{data_root} not found (real data)"}
    protocols = protocols or {
        "iconic only": str(MANIFESTS / "grocery_unseen.csv"),
        "iconic + 8 photos": str(MANIFESTS / "grocery_unseen_fewshot.csv"),
    }
    net = load_model(model)
    out: dict[str, Any] = {"model": model, "query_view": query_view, "score_mode": score_mode, "rows": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench_views_"))
    try:
        for pname, path in protocols.items():
            m = load_manifest(path, data_root)
            queries = m.select(role="query")[:max_queries]
            views = None
            for k, ev in enumerate(enrolments):
                g = Gallery.create(tmp / f"{pname}-{k}".replace(" ", "_"), net.describe(), score_mode=score_mode)
                rep = enroll_manifest(g, net, m, m.select(role="gallery"), progress=False, views=list(ev))
                rec = Recognizer(g, net, parse_view(query_view))
                paths = [m.resolve(r) for r in queries]
                views = views or rec.embed_paths(paths, [r.bbox for r in queries])  # the same queries every time
                load = lambda i: None  # noqa: E731  (no re-ranking here)
                ok = [queries[i] for i in views.indices]
                full = rec.match(views, None, load)
                within = rec.match(views, [r.candidates for r in ok], load)
                truth = [r.item_id for r in ok]
                out["rows"].append({
                    "protocol": pname, "enrolled_as": "+".join(ev), "vectors": len(g), "queries": len(ok),
                    "enrol_seconds": round(rep.seconds, 1),
                    "top1": round(top1_accuracy(truth, [x.item_id for x in full]), 3),
                    "top1_within_candidates": round(top1_accuracy(truth, [x.item_id for x in within]), 3),
                })  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
