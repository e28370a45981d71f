"""Batch accuracy report: is this model and gallery good enough to deploy, and at what threshold?

Embeds a query manifest with the gallery's own model, scores every query against every
enrolled item (exactly), and computes: top-1/top-5 and the CMC curve; accuracy within
candidate sets (the rows' own, else seeded random sets of K that include the truth);
mAP@R and Recall@K over gallery vectors; per-item accuracy and confused pairs; the
open-set view (genuine vs. impostor scores, FNMR at FMR 1% and 0.1%, precision/recall
against the threshold, a recommended threshold); bootstrap confidence intervals; and,
with a second gallery, a paired comparison (McNemar and paired bootstrap) on the same
queries. Writes ``report.html`` (self-contained), ``metrics.json`` and
``predictions.csv``; returns a Markdown summary.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.candidates import random_candidate_sets
from ..data.imageio import ImageLoadError, load_image
from ..data.manifest import Manifest, ManifestRow
from ..fileio import write_json_atomic, write_text_atomic
from ..gallery import Gallery, UnknownItemError, decide
from ..matching.batch import MatchReport, write_predictions
from ..matching.options import QueryOptions
from ..matching.pipeline import Recognizer, file_loader
from ..matching.rerank import RerankConfig
from ..session import load_gallery_model
from .metrics import (
    average_precision_at_r,
    bootstrap_ci,
    candidate_hits,
    cmc_curve,
    confused_pairs,
    fnmr_at_fmr,
    mcnemar_exact,
    open_set_curves,
    paired_bootstrap_diff,
    per_item_accuracy,
    recall_at_k,
    recommend_threshold,
    truth_ranks,
)

K_VALUES = (2, 5, 10, 20, 50)


@dataclass
class Evaluation:
    """One gallery's scores on the query set (rows aligned with ``scores``)."""

    gallery: Gallery
    rows: list[ManifestRow]
    items: list[str]
    scores: np.ndarray  # Q x I exact item scores
    embeddings: np.ndarray
    failures: list[tuple[str, str]]
    embed_ms_per_image: float
    match_ms_per_query: float
    embedded: tuple | None = None  # (Views, rows): lets another gallery reuse these query embeddings


def evaluate_gallery(
    gallery: Gallery,
    manifest: Manifest,
    rows: list[ManifestRow],
    *,
    model_spec: str | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
    query_options: QueryOptions | None = None,
    rerank: RerankConfig | None = None,
    model=None,
    embedded: tuple | None = None,
) -> Evaluation:
    """Embed ``rows`` with the gallery's model (or ``model``: any backend with the gallery's fingerprint)
    and score them against every item.

    Goes through the one recognition path (:class:`~recognizer.matching.pipeline.Recognizer`), scoring
    every item exactly. ``embedded``: ``(Views, rows)`` from an earlier call with the same model, rows
    and query options (the same queries against another gallery), not embedded again.
    """
    gallery.require_items()
    if model is None:
        model = load_gallery_model(gallery, model_spec)
    else:
        gallery.check_model(model.fingerprint, "the evaluating model")
    rec = Recognizer(gallery, model, query_options or QueryOptions(), rerank, exhaustive=True)
    paths, bboxes = [manifest.resolve(r) for r in rows], [r.bbox for r in rows]
    views, rows = embedded or (
        rec.embed_paths(paths, bboxes, batch_size=batch_size, num_workers=num_workers, progress=progress,
                        desc=f"embedding queries ({gallery.root.name})"),
        list(rows),
    )  # fmt: skip
    failures = [(f"line {rows[i].line} ({rows[i].path})", msg) for i, msg in views.failures]
    ok_rows = [rows[i] for i in views.indices]
    emb = views.pooled()
    t0 = time.perf_counter()
    gallery.search(emb, k=5) if len(ok_rows) else None  # the deployed search path, timed
    match_ms = 1000 * (time.perf_counter() - t0) / max(1, len(ok_rows))
    items, scores = rec.scores(views, range(len(ok_rows)), None) if ok_rows else (gallery.item_ids, np.zeros((0, 0)))
    load = file_loader(paths, bboxes)
    scores = rec.verify(items, scores, lambda i: load(views.indices[i]))
    match_ms += 1000 * rec.seconds_verify / max(1, len(ok_rows))
    return Evaluation(
        gallery, ok_rows, items, scores, emb, failures,
        1000 * views.seconds / max(1, len(ok_rows)), match_ms, (views, rows),
    )  # fmt: skip


def compute_metrics(ev: Evaluation, *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """All of the report's figures for one evaluation (see the module docstring)."""
    col = {it: j for j, it in enumerate(ev.items)}
    labelled = np.array([bool(r.item_id) for r in ev.rows], dtype=bool)
    known = np.array([r.item_id in col for r in ev.rows], dtype=bool)
    kq = np.nonzero(known)[0]
    truth = np.array([col[ev.rows[i].item_id] for i in kq], dtype=np.int64)
    S = ev.scores[kq]
    n_items = len(ev.items)
    out: dict[str, Any] = {
        "gallery": str(ev.gallery.root),
        "model_fingerprint": ev.gallery.fingerprint,
        "items": n_items,
        "gallery_vectors": len(ev.gallery),
        "queries": len(ev.rows),
        "known_queries": int(known.sum()),
        "unknown_item_queries": int((labelled & ~known).sum()),
        "unlabelled_queries": int((~labelled).sum()),
        "skipped_rows": len(ev.failures),
        "embed_ms_per_image": ev.embed_ms_per_image,
        "match_ms_per_query": ev.match_ms_per_query,
    }
    if len(kq) == 0:
        return out
    ranks = truth_ranks(S, truth)
    top1 = ranks == 0
    out["top1"] = float(top1.mean())
    out["top1_ci95"] = bootstrap_ci(top1, n_boot=n_boot, seed=seed)
    out["top5"] = float((ranks < 5).mean())
    out["cmc"] = cmc_curve(S, truth, min(20, n_items)).tolist()

    # candidate sets: the rows' own column, else seeded random K-sets holding the truth
    own = [ev.rows[i].candidates for i in kq]
    cand: dict[str, Any] = {}
    if any(c is not None for c in own):
        have = [j for j, c in enumerate(own) if c is not None]
        missing = sorted({c for j in have for c in own[j] if c not in col})
        if missing:
            raise UnknownItemError(
                f"query candidates name item(s) not in the gallery: {', '.join(missing[:10])}"
            )
        hits = candidate_hits(S[have], truth[have], [np.array([col[c] for c in own[j]]) for j in have])
        cand["rows"] = {"k": float(np.mean([len(own[j]) for j in have])), "queries": len(have), "accuracy": float(hits.mean()), "ci95": bootstrap_ci(hits, n_boot=n_boot, seed=seed)}  # fmt: skip
        out["candidate_hits_rows"] = hits
    rng = np.random.default_rng(seed)
    for k in (*[k for k in K_VALUES if k < n_items], n_items):
        sets = random_candidate_sets(truth, n_items, k, rng)
        hits = candidate_hits(S, truth, sets)
        key = "all" if k == n_items else str(k)
        cand[key] = {
            "k": k,
            "accuracy": float(hits.mean()),
            "ci95": bootstrap_ci(hits, n_boot=n_boot, seed=seed),
        }
    out["candidates"] = cand

    vecs, labels = ev.gallery.vector_table()
    emb = ev.embeddings[kq]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = emb @ vecs.T
    out["map_at_r"] = float(average_precision_at_r(sims, labels, truth).mean())
    out["recall_at_k"] = {str(k): v for k, v in recall_at_k(sims, labels, truth, (1, 5, 10)).items()}

    truth_items = [ev.items[t] for t in truth]
    pred_items = [ev.items[int(j)] for j in S.argmax(axis=1)]
    out["worst_items"] = [
        {"item": it, "top1": a, "queries": n} for it, a, n in per_item_accuracy(truth_items, top1)[:20]
    ]
    out["confused_pairs"] = [
        {"truth": t, "predicted": p, "count": n} for t, p, n in confused_pairs(truth_items, pred_items)
    ]

    # open set: genuine = the true item's score, impostor = the best other item's score
    genuine = S[np.arange(len(truth)), truth]
    masked = S.copy()
    masked[np.arange(len(truth)), truth] = -np.inf
    impostor = masked.max(axis=1) if n_items > 1 else np.full(len(truth), -1.0)
    unknown_best = (
        ev.scores[labelled & ~known].max(axis=1) if (labelled & ~known).any() and n_items else np.zeros(0)
    )
    impostor_all = np.concatenate([impostor, unknown_best])
    out["open_set"] = {
        "genuine_mean": float(genuine.mean()),
        "impostor_mean": float(impostor_all.mean()),
        "fnmr_at_fmr_1pct": fnmr_at_fmr(genuine, impostor_all, 0.01),
        "fnmr_at_fmr_0.1pct": fnmr_at_fmr(genuine, impostor_all, 0.001),
    }
    top_all = ev.scores[labelled].max(axis=1) if n_items else np.zeros(0)
    correct_all = np.zeros(int(labelled.sum()), bool)
    lab_idx = np.nonzero(labelled)[0]
    pos_known = {q: j for j, q in enumerate(kq)}
    for j, q in enumerate(lab_idx):
        if q in pos_known:
            correct_all[j] = top1[pos_known[q]]
    known_lab = known[lab_idx]
    lo, hi = float(np.min(impostor_all.min(initial=1.0))), float(genuine.max())
    thresholds = np.linspace(min(lo, hi) - 0.01, max(lo, hi) + 0.01, 201)
    curves = open_set_curves(top_all, correct_all, known_lab, thresholds)
    thr, f1 = recommend_threshold(curves)
    out["open_set"].update(
        recommended_threshold=thr,
        f1_at_recommended=f1,
        current_threshold=ev.gallery.threshold,
        unknown_rejected_at_recommended=float((top_all[~known_lab] < thr).mean())
        if (~known_lab).any()
        else None,
    )
    out["_curves"] = {k: v.tolist() for k, v in curves.items()}
    out["_scores"] = {"genuine": genuine.tolist(), "impostor": impostor_all.tolist()}
    out["_top1_hits"] = top1
    out["_kq"] = kq
    out["_pred_items"] = pred_items
    out["_truth_items"] = truth_items
    return out


def compare(
    a: dict[str, Any], b: dict[str, Any], rows_a: list[ManifestRow], rows_b: list[ManifestRow], seed: int = 0
) -> dict[str, Any]:
    """Paired comparison of two evaluations' top-1 on the queries both answered."""
    ka = {rows_a[i].line: h for i, h in zip(a["_kq"], a["_top1_hits"], strict=True)}
    kb = {rows_b[i].line: h for i, h in zip(b["_kq"], b["_top1_hits"], strict=True)}
    common = sorted(set(ka) & set(kb))
    ha = np.array([ka[c] for c in common], bool)
    hb = np.array([kb[c] for c in common], bool)
    diff, lo, hi = paired_bootstrap_diff(ha, hb, seed=seed)
    only_a, only_b, p = mcnemar_exact(ha, hb)
    return {
        "queries": len(common),
        "top1_a": float(ha.mean()) if len(ha) else None,
        "top1_b": float(hb.mean()) if len(hb) else None,
        "top1_diff_b_minus_a": diff,
        "diff_ci95": (lo, hi),
        "only_a_correct": only_a,
        "only_b_correct": only_b,
        "mcnemar_p": p,
        "significant_at_0.05": bool(p < 0.05),
    }


# ------------------------------------------------------------------------------- rendering


def _fig_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(m: dict[str, Any], other: dict[str, Any] | None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for lab, mm in (("this gallery", m), ("compared", other)):
        if mm and "cmc" in mm:
            ax.plot(range(1, len(mm["cmc"]) + 1), mm["cmc"], marker="o", ms=3, label=lab)
    ax.set(xlabel="rank k", ylabel="share with truth in top k", title="CMC curve", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    figs["cmc"] = _fig_png(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for lab, mm in (("this gallery", m), ("compared", other)):
        if mm and "candidates" in mm:
            ks = [v for key, v in mm["candidates"].items() if key != "rows"]
            x = [v["k"] for v in ks]
            y = [v["accuracy"] for v in ks]
            err = np.array(
                [[v["accuracy"] - v["ci95"][0] for v in ks], [v["ci95"][1] - v["accuracy"] for v in ks]]
            )
            ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=3, label=lab)
    ax.set(
        xscale="log",
        xlabel="candidate set size K",
        ylabel="top-1 within the set",
        title="Accuracy against K (95% CI)",
        ylim=(0, 1.02),
    )
    ks_all = sorted({v["k"] for key, v in m.get("candidates", {}).items() if key != "rows"})
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    figs["k"] = _fig_png(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    g, i = np.array(m["_scores"]["genuine"]), np.array(m["_scores"]["impostor"])
    bins = np.linspace(min(g.min(), i.min()), max(g.max(), i.max()), 40)
    ax.hist(i, bins=bins, alpha=0.6, label=f"impostor (best wrong item), n={len(i)}", density=True)
    ax.hist(g, bins=bins, alpha=0.6, label=f"genuine (true item), n={len(g)}", density=True)
    ax.axvline(m["open_set"]["recommended_threshold"], color="k", ls="--", label="recommended threshold")
    ax.set(xlabel="cosine score", ylabel="density", title="Score distributions")
    ax.legend(fontsize=7)
    figs["hist"] = _fig_png(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    c = m["_curves"]
    ax.plot(c["threshold"], c["precision"], label="precision")
    ax.plot(c["threshold"], c["recall"], label="recall (correct & accepted)")
    if not np.all(np.isnan(np.array(c["unknown_accept"], dtype=float))):
        ax.plot(c["threshold"], c["unknown_accept"], label="unknown items accepted")
    ax.axvline(m["open_set"]["recommended_threshold"], color="k", ls="--")
    ax.set(xlabel="threshold", ylabel="rate", title="Open set: rates against the threshold", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figs["thr"] = _fig_png(fig)
    return figs


def _thumb(path: str | os.PathLike, size: int = 112) -> str:
    import cv2

    try:
        rgb = load_image(path)
    except ImageLoadError:
        rgb = np.full((size, size, 3), 200, np.uint8)
    h, w = rgb.shape[:2]
    s = size / max(h, w)
    small = cv2.resize(rgb, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return base64.b64encode(buf.tobytes()).decode() if ok else ""


def _confusion_gallery(
    ev: Evaluation, m: dict[str, Any], manifest: Manifest, limit: int = 12
) -> list[dict[str, str]]:
    """The worst confusions: each wrong query beside a gallery image of the item it was taken for."""
    wrong = [j for j, h in enumerate(m["_top1_hits"]) if not h]
    kq = m["_kq"]
    S = ev.scores[kq]
    col = {it: j for j, it in enumerate(ev.items)}
    wrong.sort(key=lambda j: -float(S[j].max() - S[j, col[m["_truth_items"][j]]]))
    out = []
    for j in wrong[:limit]:
        row = ev.rows[kq[j]]
        pred = m["_pred_items"][j]
        recs = ev.gallery.records(pred)
        out.append({
            "query": _thumb(manifest.resolve(row)),
            "match": _thumb(recs[0]["path"]) if recs and recs[0]["path"] else "",
            "truth": row.item_id,
            "pred": pred,
            "score": f"{float(S[j].max()):.3f}",
            "truth_score": f"{float(S[j, col[row.item_id]]):.3f}",
        })  # fmt: skip
    return out


def _fmt_ci(v: float, ci: tuple[float, float]) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def summary_markdown(m: dict[str, Any], cmp: dict[str, Any] | None = None) -> str:
    """The short Markdown summary printed on stdout."""
    lines = [
        f"## Report: {m['gallery']}",
        f"{m['items']} items ({m['gallery_vectors']} vectors); {m['queries']} queries: {m['known_queries']} of enrolled items, "
        f"{m['unknown_item_queries']} of unknown items, {m['unlabelled_queries']} unlabelled; {m['skipped_rows']} rows skipped",
        "",
        "| metric | value [95% CI] |",
        "|---|---|",
    ]
    if "top1" in m:
        lines.append(f"| top-1 (all items) | {_fmt_ci(m['top1'], m['top1_ci95'])} |")
        lines.append(f"| top-5 | {m['top5']:.3f} |")
        for key, v in m["candidates"].items():
            label = (
                f"top-1 within own candidates (K≈{v['k']:.0f})"
                if key == "rows"
                else f"top-1 within K={v['k']}"
            )
            lines.append(f"| {label} | {_fmt_ci(v['accuracy'], v['ci95'])} |")
        lines.append(f"| mAP@R | {m['map_at_r']:.3f} |")
        lines.append(
            f"| Recall@1/5/10 (vectors) | {m['recall_at_k']['1']:.3f} / {m['recall_at_k']['5']:.3f} / {m['recall_at_k']['10']:.3f} |"
        )
        os_ = m["open_set"]
        lines.append(
            f"| FNMR at FMR 1% / 0.1% | {os_['fnmr_at_fmr_1pct'][0]:.3f} / {os_['fnmr_at_fmr_0.1pct'][0]:.3f} |"
        )
        lines.append(
            f"| recommended threshold (F1 {os_['f1_at_recommended']:.3f}) | {os_['recommended_threshold']:.3f} (stored: {os_['current_threshold']:.3f}) |"
        )
        if os_["unknown_rejected_at_recommended"] is not None:
            lines.append(
                f"| unknown-item queries rejected at it | {os_['unknown_rejected_at_recommended']:.3f} |"
            )
    lines.append(
        f"| speed | embed {m['embed_ms_per_image']:.1f} ms/image, match {m['match_ms_per_query']:.3f} ms/query |"
    )
    if cmp:
        lines += [
            "",
            f"Comparison on {cmp['queries']} shared queries: top-1 {cmp['top1_a']:.3f} -> {cmp['top1_b']:.3f}, "
            f"difference {cmp['top1_diff_b_minus_a']:+.3f} [{cmp['diff_ci95'][0]:+.3f}, {cmp['diff_ci95'][1]:+.3f}], "
            f"McNemar p = {cmp['mcnemar_p']:.3g} ({'significant' if cmp['significant_at_0.05'] else 'not significant'} at 0.05; "
            f"only this right: {cmp['only_a_correct']}, only compared right: {cmp['only_b_correct']})",
        ]
    return "\n".join(lines)


def render_html(
    m: dict[str, Any],
    figs: dict[str, str],
    confusions: list[dict[str, str]],
    summary: str,
    other: dict[str, Any] | None,
    cmp: dict[str, Any] | None,
) -> str:
    """A self-contained HTML page: images are inlined as base64."""
    esc = html.escape

    def table(rows: list[list[str]], head: list[str]) -> str:
        th = "".join(f"<th>{esc(h)}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{th}</tr>{body}</table>"

    md_rows = [
        ln.strip("|").split("|")
        for ln in summary.splitlines()
        if ln.startswith("| ") and not ln.startswith("| metric")
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Recognizer report</title><style>",
        "body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}table{border-collapse:collapse;margin:8px 0}",
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#f0f0f0}",
        ".figs{display:flex;flex-wrap:wrap}.figs img{width:48%;margin:1%}.conf{display:inline-block;margin:6px;padding:4px;border:1px solid #ddd;font-size:11px;text-align:center}",
        ".conf img{height:112px;margin:2px}h2{border-bottom:1px solid #ddd}</style></head><body>",
        "<h1>Recognizer accuracy report</h1>",
        f"<p>Gallery <code>{esc(m['gallery'])}</code>, model <code>{esc(m['model_fingerprint'])}</code>: {m['items']} items, "
        f"{m['gallery_vectors']} vectors. Queries: {m['queries']} ({m['known_queries']} of enrolled items, "
        f"{m['unknown_item_queries']} of unknown items, {m['unlabelled_queries']} unlabelled); {m['skipped_rows']} rows skipped.</p>",
        "<h2>Summary</h2>",
        table([[c.strip() for c in r] for r in md_rows], ["metric", "value [95% CI]"]),
    ]
    if cmp and other:
        parts += [
            "<h2>Comparison</h2>",
            table(
                [
                    ["compared gallery", other["gallery"]],
                    ["shared queries", cmp["queries"]],
                    ["top-1 this / compared", f"{cmp['top1_a']:.3f} / {cmp['top1_b']:.3f}"],
                    ["difference (compared - this) [95% CI]", f"{cmp['top1_diff_b_minus_a']:+.3f} [{cmp['diff_ci95'][0]:+.3f}, {cmp['diff_ci95'][1]:+.3f}]"],
                    ["only this right / only compared right", f"{cmp['only_a_correct']} / {cmp['only_b_correct']}"],
                    ["McNemar exact p", f"{cmp['mcnemar_p']:.3g}" + (" (significant at 0.05)" if cmp["significant_at_0.05"] else " (not significant at 0.05)")],
                ],
                ["", "value"],
            ),
        ]  # fmt: skip
    if figs:
        parts += (
            ["<h2>Plots</h2><div class='figs'>"]
            + [f"<img alt='{k}' src='data:image/png;base64,{v}'>" for k, v in figs.items()]
            + ["</div>"]
        )
    if "worst_items" in m:
        parts += [
            "<h2>Worst items</h2>",
            table(
                [[w["item"], f"{w['top1']:.3f}", w["queries"]] for w in m["worst_items"]],
                ["item", "top-1", "queries"],
            ),
            "<h2>Most confused pairs</h2>",
            table(
                [[c["truth"], c["predicted"], c["count"]] for c in m["confused_pairs"]],
                ["true item", "taken for", "count"],
            ),
        ]
    if confusions:
        parts.append("<h2>Worst confusions: query | gallery image of the item it was taken for</h2>")
        for c in confusions:
            parts.append(
                f"<div class='conf'><img src='data:image/jpeg;base64,{c['query']}'><img src='data:image/jpeg;base64,{c['match']}'>"
                f"<br>true <b>{esc(c['truth'])}</b> ({c['truth_score']})<br>taken for <b>{esc(c['pred'])}</b> ({c['score']})</div>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def _public(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if not k.startswith("_") and k != "candidate_hits_rows"}


def run_report(
    gallery_dir: str | os.PathLike,
    manifest: Manifest,
    out_dir: str | os.PathLike,
    *,
    compare_dir: str | os.PathLike | None = None,
    calibrate: bool = False,
    model_spec: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
    n_boot: int = 1000,
    query_options: QueryOptions | None = None,
    rerank: RerankConfig | None = None,
    embedder=None,
) -> tuple[dict[str, Any], str]:
    """Run the report; returns (metrics JSON document, Markdown summary).

    ``embedder`` (e.g. an ONNX export from ``enroll.load_gallery_embedder``) replaces the
    gallery's torch model for ``gallery_dir``; a ``compare_dir`` gallery uses its own model.
    """
    rows = manifest.select(role="query") or list(manifest.rows)
    if not rows:
        raise ValueError(f"{manifest.source}: no usable query rows (every row was rejected)")
    gallery = Gallery.open(gallery_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        query_options=query_options,
        rerank=rerank,
    )
    ev = evaluate_gallery(gallery, manifest, rows, model_spec=model_spec, model=embedder, **kw)
    m = compute_metrics(ev, seed=seed, n_boot=n_boot)
    other = cmp = None
    if compare_dir is not None:
        ev_b = evaluate_gallery(Gallery.open(compare_dir), manifest, rows, **kw)
        other = compute_metrics(ev_b, seed=seed, n_boot=n_boot)
        if "_top1_hits" in m and "_top1_hits" in other:
            cmp = compare(m, other, ev.rows, ev_b.rows, seed=seed)
    if calibrate and "open_set" in m:
        gallery.set_threshold(m["open_set"]["recommended_threshold"])
        m["open_set"]["current_threshold"] = gallery.threshold
        m["open_set"]["calibrated"] = True
    summary = summary_markdown(m, cmp)
    figs = _plots(m, other) if "open_set" in m else {}
    conf = _confusion_gallery(ev, m, manifest) if "_top1_hits" in m else []
    write_text_atomic(out / "report.html", render_html(m, figs, conf, summary, other, cmp))
    doc = {"metrics": _public(m), "curves": m.get("_curves", {}), "skipped": ev.failures}
    if other is not None:
        doc["compared"] = _public(other)
        doc["comparison"] = cmp
    write_json_atomic(out / "metrics.json", doc)
    matches = decide(ev.items, ev.scores, 5, gallery.threshold, gallery.margin) if len(ev.rows) else []
    write_predictions(
        out / "predictions.csv", MatchReport(ev.rows, matches, ev.failures, 0.0, 0.0, ev.embeddings)
    )
    return doc, summary
