"""Suite ``calibration``: today's defaults, each single option, and the self-calibrated settings, per protocol.

Per protocol (unseen items only), two galleries are enrolled with the real enrolment code and
off-the-shelf ``lite0``: ``before`` as enrolment worked until now (each photo whole), ``after``
with the new enrolment defaults (whole + centre crop, SIFT keypoints). Every row matches the
same queries through the one recognition path (:class:`~recognizer.matching.pipeline.Recognizer`),
over the whole gallery and within each query's candidates, with milliseconds per query:

- ``defaults (before)``: the photo tools' defaults on the ``before`` gallery (crop:0.6 query, max, no
  verification since no keypoints were stored);
- one row per single option on top of them;
- ``calibrated``: the ``after`` gallery after :func:`~recognizer.matching.calibrate.calibrate`, queried
  with its stored settings; the calibration's time and choice are recorded.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..common import MANIFESTS, SHARED_DATA, protocol_queries, protocols_markdown, select_queries

PROTOCOLS = {  # name -> (manifest, data folder under shared data; None: generated covers)
    "grocery_unseen_1shot": ("grocery_unseen", "grocery"),
    "grocery_unseen_fewshot": ("grocery_unseen_fewshot", "grocery"),
    "grocery_packages": ("grocery_packages", "grocery"),
    "covers": (None, None),
    "coil_unseen": ("coil_unseen", "coil"),
}
# single options: (gallery, query settings over the defaults, score mode)
OPTIONS: dict[str, tuple[str, dict[str, Any], str]] = {
    "defaults (before)": ("before", {}, "max"),
    "enrol whole+crop:0.6": ("after", {}, "max"),
    "query whole": ("before", {"aspect": "squash", "zoom": 1.0}, "max"),
    "query crop:0.8": ("before", {"zoom": 0.8}, "max"),
    "mirror averaging": ("before", {"flip": True}, "max"),
    "colour cue 0.2": ("before", {"colour": 0.2}, "max"),
    "score prototype": ("before", {}, "prototype"),
    "score probe": ("before", {}, "probe"),
    "rerank sift": ("before", {"rerank": "sift"}, "max"),
    "new defaults, uncalibrated": ("after", {"rerank": "sift"}, "max"),
}
QUICK = {"protocols": ("covers",), "n_covers": 10, "query_stride": 2}


def run(
    protocols: tuple[str, ...] = tuple(PROTOCOLS),
    n_covers: int = 40,
    query_stride: int = 3,
    max_queries: int = 200,
    model: str = "lite0",
    workdir: str | None = None,
    shared_data: str | Path = SHARED_DATA,
    manifests: str | Path = MANIFESTS,
) -> dict[str, Any]:
    """Rows per protocol: top-1 overall, top-1 within the candidates, ms/query; plus calibration time and choice."""
    from recognizer.data.manifest import load_manifest
    from recognizer.data.synthetic import generate_covers
    from recognizer.enroll import enroll_manifest
    from recognizer.gallery import Gallery
    from recognizer.matching.calibrate import calibrate
    from recognizer.models.model import load_model

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; choose from {', '.join(PROTOCOLS)}")
    tmp = Path(tempfile.mkdtemp(dir=workdir, prefix="bench_calib_"))
    net = load_model(model)
    res: dict[str, Any] = {"model": model, "by_protocol": {}}
    try:
        for name in protocols:
            mname, folder = PROTOCOLS[name]
            if mname is None:
                m = load_manifest(generate_covers(tmp / "covers", n_covers, 2))
                queries = select_queries(m, query_stride, max_queries)
            else:
                got, why = protocol_queries(Path(manifests) / f"{mname}.csv", Path(shared_data) / folder,
                                            query_stride, max_queries)  # fmt: skip
                if got is None:
                    res["by_protocol"][name] = {"skipped": why}
                    continue
                m, queries = got
            galleries, cell = {}, {"items": 0, "queries": len(queries)}
            for label, views in (("before", ["whole"]), ("after", ["whole", "crop:0.6"])):
                g = Gallery.create(tmp / f"{name}_{label}", net.describe(), model_spec=model)
                t0 = time.perf_counter()
                enroll_manifest(g, net, m, progress=False, views=views, local_features="sift")
                cell[f"enrol_seconds_{label}"] = round(time.perf_counter() - t0, 2)
                galleries[label] = g
            cell["items"] = len(galleries["after"].item_ids)
            rows = {opt: _measure(galleries[gname], net, m, queries, q, mode)
                    for opt, (gname, q, mode) in OPTIONS.items()}  # fmt: skip
            g = galleries["after"]
            t0 = time.perf_counter()
            cal = calibrate(g, net)
            cal.apply(g)
            cell["calibration_seconds"] = round(time.perf_counter() - t0, 2)
            cell["chosen"] = {**g.settings["photo_query"], "score_mode": g.score_mode, "threshold": round(g.threshold, 4)}
            cell["calibration_pseudo_queries"] = cal.n_queries
            cell["calibration_steps"] = [{"option": o, "best": b, "adopted": a} for o, b, a in cal.steps]
            rows["calibrated"] = _measure(g, net, m, queries, None, None)
            best_single = max((r for o, r in rows.items() if o not in ("calibrated",)), key=lambda r: r["top1"])
            cell["calibrated_minus_best_single_top1"] = round(rows["calibrated"]["top1"] - best_single["top1"], 4)
            cell["rows"] = rows
            res["by_protocol"][name] = cell
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _measure(gallery, model, manifest, queries, overrides, mode) -> dict[str, Any]:
    """Top-1 overall and within candidates, and ms per query, through the one recognition path.

    ``overrides`` None: the gallery's stored settings (calibrated), else the photo defaults with these
    overrides and ``mode`` as the score mode (the gallery's own mode is restored afterwards).
    """
    from recognizer.evaluation.metrics import top1_accuracy
    from recognizer.matching.pipeline import Recognizer
    from recognizer.matching.settings import PHOTO_DEFAULTS, resolve_query

    if overrides is None:
        opts, rerank = resolve_query(gallery, "photo")
        saved = None
    else:
        base = {k: v for k, v in PHOTO_DEFAULTS.items() if k != "scope"}
        opts, rerank = resolve_query(None, "photo", {**base, "rerank": "none", **overrides})
        saved = gallery.score_mode
        gallery.set_score_mode(mode)
    try:
        rec = Recognizer(gallery, model, opts, rerank, exhaustive=True)
        res = rec.match_files([manifest.resolve(r) for r in queries], [r.bbox for r in queries],
                              [r.candidates for r in queries], k=5, num_workers=0)  # fmt: skip
        truth = [queries[i].item_id for i in res.indices]
    finally:
        if saved is not None:
            gallery.set_score_mode(saved)
    return {
        "top1": round(top1_accuracy(truth, [m.item_id for m in res.full]), 4),
        "top1_candidates": round(top1_accuracy(truth, [m.item_id for m in res.within]), 4),
        "ms_per_query": round(res.ms_per_query, 1),
        "ms_verify": round(res.ms_verify, 1),
        "settings": f"{opts.aspect}:{opts.zoom:g}{'+flip' if opts.flip else ''}{f' colour {opts.colour:g}' if opts.colour else ''} "
        f"{gallery.score_mode if saved is None else mode} "
        f"{'rerank ' + rerank.method + f' top{rerank.top_k} x{rerank.per_item} >={rerank.min_inliers}' if rerank else 'no rerank'}",
    }


def markdown(res: dict[str, Any]) -> str:
    """Per protocol: the calibration's time, pseudo-queries and choice, then one row per setting."""

    def table(_: str, cell: dict[str, Any]) -> list[str]:
        steps = cell.get("calibration_steps")
        out = [
            f"enrolment before/after {cell['enrol_seconds_before']}/{cell['enrol_seconds_after']} s; calibration "
            f"{cell['calibration_seconds']} s on {cell['calibration_pseudo_queries']}; calibrated minus best single "
            f"option (top-1): {cell['calibrated_minus_best_single_top1']:+.3f}", "",
            f"chosen: `{cell['chosen']}`", "",
            *([("steps: " + "; ".join(f"{st['option']}: {st['best']} {'adopted' if st['adopted'] else 'not a clear gain'}"
                                      for st in steps)), ""] if steps else []),
            "| setting | top-1 | top-1 within candidates | ms/query | of which verification | as run |",
            "|---|---|---|---|---|---|",
        ]  # fmt: skip
        return out + [
            f"| {opt} | {r['top1']:.3f} | {r['top1_candidates']:.3f} | {r['ms_per_query']:.0f} | "
            f"{r.get('ms_verify', 0):.0f} | {r['settings']} |"
            for opt, r in cell["rows"].items()
        ]  # fmt: skip

    return protocols_markdown(res, table)
