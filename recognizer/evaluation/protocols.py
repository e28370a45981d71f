"""Unseen-item accuracy of several models under the enrollment protocols, measured in one run.

For each model and each protocol manifest (e.g. the iconic catalog image alone, and the
iconic image plus 8 photos per item) a fresh gallery is enrolled with the real enrollment
code and every query is scored against every item with the report's evaluation code. The
first model is the baseline (normally the off-the-shelf backbone): every other model gets
its paired difference in top-1 with a bootstrap CI and an exact McNemar p-value. Several
gallery score modes (e.g. ``max`` and the enrollment-time ``probe``) can be compared on the
same galleries and query embeddings; the baseline is the first model in the first mode.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.manifest import load_manifest
from ..matching.options import QueryOptions


def evaluate_protocols(
    models: dict[str, str],
    protocols: dict[str, str],
    data_root: str | Path | None,
    *,
    query_options: QueryOptions | None = None,
    max_queries: int | None = None,
    progress: bool = False,
    score_modes: Sequence[str] = ("max",),
) -> dict[str, Any]:
    """``{protocol: {model: metrics}}`` for ``models`` (label -> spec) x ``protocols`` (label -> manifest).

    With more than one of ``score_modes`` each model's cells are labelled ``"model [mode]"``.

    Metrics per cell: top-1, top-5, top-1 within the query's own candidates, seconds; and, for
    every model after the first, ``vs_baseline`` (difference, CI, McNemar p).
    """
    from ..enroll import enroll_manifest
    from ..gallery import Gallery
    from ..models.model import load_model
    from .report import compare, compute_metrics, evaluate_gallery

    opts = query_options or QueryOptions(aspect="crop", zoom=0.6)
    out: dict[str, Any] = {"query_options": opts.__dict__, "score_modes": list(score_modes), "protocols": {}}
    tmp = Path(tempfile.mkdtemp(prefix="protocols-"))
    try:
        loaded = {label: load_model(spec) for label, spec in models.items()}
        embedded: dict[tuple, Any] = {}  # (model, query rows) -> embeddings, reused across protocols
        for pname, path in protocols.items():
            man = load_manifest(path, data_root, strict=True)
            queries = [r for r in man.rows if r.role == "query"]
            if max_queries:
                queries = queries[:: max(1, len(queries) // max_queries)][:max_queries]
            cells: dict[str, Any] = {}
            base = None
            for label, model in loaded.items():
                t0 = time.perf_counter()
                g = Gallery.create(tmp / f"{pname}-{len(cells)}", model.describe())
                enroll_manifest(g, model, man, progress=progress)
                t_enroll = time.perf_counter() - t0
                key = (
                    label,
                    Path(man.data_root).resolve(),
                    tuple((r.path, r.item_id, r.candidates) for r in queries),
                )
                for mode in score_modes:
                    t0 = time.perf_counter()
                    g.set_score_mode(mode)
                    ev = evaluate_gallery(
                        g,
                        man,
                        queries,
                        progress=progress,
                        query_options=opts,
                        model=model,
                        embedded=embedded.get(key),
                    )
                    embedded[key] = ev.embedded
                    m = compute_metrics(ev, n_boot=500)
                    cell = {
                        "model": models[label],
                        "score_mode": mode,
                        "gallery_vectors": len(g),
                        "queries": m["known_queries"],
                        "top1": m["top1"],
                        "top1_ci95": m["top1_ci95"],
                        "top5": m.get("top5"),
                        "top1_within_candidates": _own_candidates(m),
                        "seconds": t_enroll + time.perf_counter() - t0,
                    }
                    t_enroll = 0.0
                    if base is None:
                        base = (m, ev.rows)
                    else:
                        c = compare(base[0], m, base[1], ev.rows)
                        cell["vs_baseline"] = {
                            "diff": c["top1_diff_b_minus_a"],
                            "diff_ci95": c["diff_ci95"],
                            "mcnemar_p": c["mcnemar_p"],
                        }
                    cells[label if len(score_modes) == 1 else f"{label} [{mode}]"] = cell
            out["protocols"][pname] = cells
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _own_candidates(m: dict[str, Any]) -> float | None:
    own = (m.get("candidates") or {}).get("rows")
    return None if own is None else own["accuracy"]


def protocols_markdown(res: dict[str, Any]) -> str:
    """One table: protocol x model, top-1 [CI], difference vs the baseline model [CI], p."""
    lines = [
        "| protocol | model | gallery vectors | queries | top-1 [95% CI] | top-5 | within own candidates | vs baseline [95% CI] | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pname, cells in res["protocols"].items():
        for label, c in cells.items():
            lo, hi = c["top1_ci95"]
            vs = c.get("vs_baseline")
            lines.append(
                f"| {pname} | {label} | {c['gallery_vectors']} | {c['queries']} | {c['top1']:.3f} [{lo:.3f}, {hi:.3f}] "
                f"| {c['top5']:.3f} | {c['top1_within_candidates'] if c['top1_within_candidates'] is None else round(c['top1_within_candidates'], 3)} "
                + (
                    f"| {vs['diff']:+.3f} [{vs['diff_ci95'][0]:+.3f}, {vs['diff_ci95'][1]:+.3f}] | {vs['mcnemar_p']:.2g} |"
                    if vs
                    else "| baseline | |"
                )
            )
    return "\n".join(lines) + "\n"
