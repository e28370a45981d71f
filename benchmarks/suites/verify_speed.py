"""Suite ``verify_speed``: what geometric verification costs per query, and what each saving costs in accuracy.

Per protocol (unseen items, real data), one gallery enrolled with the enrolment defaults (whole
+ crop:0.6 views, SIFT keypoints) and off-the-shelf ``lite0``; the same queries (embedded once)
are matched through the one recognition path (``Recognizer.match_files``) with the photo
tools' default framing (crop:0.6, max) and each verification variant: items verified (top K), photos per item, keypoints
extracted from the query, the query's size for extraction. Rows: top-1 over the whole gallery
and within the candidates, verification ms per query (extraction + matching), all variants
measured in turns on the same queries.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..common import MANIFESTS, SHARED_DATA, protocol_queries, protocols_markdown

PROTOCOLS = {"grocery_packages": "grocery", "grocery_unseen_fewshot": "grocery"}
VARIANTS: dict[str, dict[str, Any] | None] = {  # name -> RerankConfig keyword arguments (None: off)
    "off": None,
    "top10 x3 (the former default)": {"top_k": 10, "per_item": 3},
    "top10 x1": {"top_k": 10, "per_item": 1},
    "top3 x3": {"top_k": 3, "per_item": 3},
    "top3 x1": {"top_k": 3, "per_item": 1},
    "top3 x1, 500 query keypoints": {"top_k": 3, "per_item": 1, "nfeatures": 500},
    "top3 x1, query at 400 px": {"top_k": 3, "per_item": 1, "max_side": 400},
}
QUICK = {"protocols": ("grocery_packages",), "query_stride": 6}


def run(protocols: tuple[str, ...] = tuple(PROTOCOLS), query_stride: int = 3, max_queries: int = 200,
        model: str = "lite0", workdir: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Rows per protocol and variant: top-1, top-1 within candidates, verification ms per query."""
    from recognizer.enroll import enroll_manifest
    from recognizer.evaluation.metrics import top1_accuracy
    from recognizer.gallery import Gallery
    from recognizer.matching.pipeline import Recognizer
    from recognizer.matching.rerank import RerankConfig
    from recognizer.matching.settings import PHOTO_DEFAULTS, resolve_query
    from recognizer.models.model import load_model

    tmp = Path(tempfile.mkdtemp(dir=workdir, prefix="bench_verify_"))
    net = load_model(model)
    res: dict[str, Any] = {"model": model, "by_protocol": {}}
    try:
        for name in protocols:
            got, why = protocol_queries(MANIFESTS / f"{name}.csv", SHARED_DATA / PROTOCOLS[name], query_stride, max_queries)
            if got is None:
                res["by_protocol"][name] = {"skipped": why}
                continue
            m, queries = got
            g = Gallery.create(tmp / name, net.describe(), model_spec=model)
            enroll_manifest(g, net, m, progress=False, views=["whole", "crop:0.6"], local_features="sift")
            rows: dict[str, dict[str, Any]] = {}
            base = {k: v for k, v in PHOTO_DEFAULTS.items() if k != "scope"}
            opts, _ = resolve_query(None, "photo", {**base, "rerank": "none"})  # the photo tools' framing (crop:0.6)
            for vname, kw in VARIANTS.items():
                rec = Recognizer(g, net, opts, None if kw is None else RerankConfig(**kw), exhaustive=True)
                r = rec.match_files([m.resolve(q) for q in queries], [q.bbox for q in queries],
                                    [q.candidates for q in queries], num_workers=0)  # fmt: skip
                truth = [queries[i].item_id for i in r.indices]
                rows[vname] = {
                    "top1": round(top1_accuracy(truth, [x.item_id for x in r.full]), 4),
                    "top1_candidates": round(top1_accuracy(truth, [x.item_id for x in r.within]), 4),
                    "ms_verify": round(r.ms_verify, 1),
                    "ms_embed": round(r.ms_embed, 1),
                }
            res["by_protocol"][name] = {"items": len(g.item_ids), "queries": len(queries), "rows": rows}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def markdown(res: dict[str, Any]) -> str:
    """One table per protocol: variant, top-1, top-1 within candidates, verification and embedding ms."""

    def table(_: str, cell: dict[str, Any]) -> list[str]:
        return ["| verification | top-1 | top-1 within candidates | verification ms/query | embedding ms/query |",
                "|---|---|---|---|---|"] + [
            f"| {v} | {r['top1']:.3f} | {r['top1_candidates']:.3f} | {r['ms_verify']:.1f} | {r['ms_embed']:.1f} |"
            for v, r in cell["rows"].items()
        ]  # fmt: skip

    return protocols_markdown(res, table)
