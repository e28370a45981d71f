"""The benchmark runner: suite registry, quick sizes, and ``bench.json`` + ``bench.md`` (written atomically).

Timings on a shared 2-core machine are noisy, so results are reported as medians of repeats and
as ratios against a baseline measured side by side. Suites write into one JSON document;
:func:`markdown_table` renders it. ``tools/bench.py`` is the command line.

Suites (one module each in ``benchmarks/suites/``):

* ``gallery``: add, open, exact search (against FAISS's brute force), constrained search and IVF
  on a gallery of clustered synthetic vectors (default 10,000 items x 100 = 1M x 256).
* ``commit``: the time to add one item (10 photos) to galleries of 10k, 100k and 1M vectors.
* ``query_options``: accuracy and cost of the query options (zoom, crops, re-ranking).
* ``training``: one training step at 10,000 classes, cached-feature head vs. full fine-tuning.
* ``embedding``: the tools' file-to-embedding path against a bare timm forward, and enrollment.
* ``scaling``: exact and constrained search time and memory at 10k, 100k and 1M vectors.
* ``unseen``: top-1 on held-out grocery items under two enrollment protocols (real data).
* ``enrol_views``: held-out grocery top-1 with each photo enrolled whole, zoomed, or both (real data).
* ``calibration``: per protocol, today's defaults, each single option and the self-calibrated settings.
* ``verify_speed``: geometric verification's ms per query and top-1 per variant (items and photos
  verified, query keypoints, query size) on grocery packages and few-shot grocery (real data).
* ``camera_table``: the camera on generated table scenes from real photos (touching items, a hand,
  dimming, a pan, a swap): recall, wrong labels, switches, frame times per proposal method (real data).
* ``deploy``: backbone x backend (torch, ONNX fp32, ONNX int8) x input size: images/s, latency,
  MB and grocery-unseen top-1.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .suites import (
    bg_augment,
    calibration,
    camera_table,
    commit,
    deploy,
    embedding,
    enrol_views,
    gallery,
    identity_curve,
    query_options,
    scaling,
    training,
    unseen,
    verify_speed,
)

SUITES: dict[str, Callable[..., dict[str, Any]]] = {
    "gallery": gallery.run,
    "commit": commit.run,
    "query_options": query_options.run,
    "training": training.run,
    "embedding": embedding.run,
    "scaling": scaling.run,
    "unseen": unseen.run,
    "deploy": deploy.run_deploy_table,
    "enrol_views": enrol_views.run,
    "calibration": calibration.run,
    "camera_table": camera_table.run,
    "identity_curve": identity_curve.run,
    "bg_augment": bg_augment.run,
    "verify_speed": verify_speed.run,
}
# suites that render their own tables (nested results the generic renderer cannot lay out)
SUITE_MARKDOWN: dict[str, Callable[[dict[str, Any]], str]] = {
    "calibration": calibration.markdown,
    "verify_speed": verify_speed.markdown,
}
# small sizes per suite, for a smoke run (``--quick``)
QUICK: dict[str, dict[str, Any]] = {
    "gallery": gallery.QUICK,
    "commit": commit.QUICK,
    "query_options": query_options.QUICK,
    "training": training.QUICK,
    "embedding": embedding.QUICK,
    "scaling": scaling.QUICK,
    "unseen": unseen.QUICK,
    "deploy": deploy.QUICK,
    "enrol_views": enrol_views.QUICK,
    "calibration": calibration.QUICK,
    "camera_table": camera_table.QUICK,
    "identity_curve": identity_curve.QUICK,
    "bg_augment": bg_augment.QUICK,
    "verify_speed": verify_speed.QUICK,
}


def check_suites(names: list[str]) -> None:
    """Raise ``ValueError`` naming the valid suites when any of ``names`` is not one."""
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")


def run_bench(
    suites: list[str], out_dir: str | os.PathLike, *, quick: bool = False, **overrides: Any
) -> dict[str, Any]:
    """Run the named suites; writes ``bench.json`` and ``bench.md`` into ``out_dir`` (atomically).

    ``quick`` starts each suite from its :data:`QUICK` sizes; ``overrides[name]`` (a dict of the
    suite's keyword arguments) is applied on top.
    """
    check_suites(suites)
    import torch

    from recognizer.fileio import write_text_atomic

    doc: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
        },
        "quick": quick,
        "suites": {},
    }
    for name in suites:
        kwargs = dict(QUICK.get(name, {})) if quick else {}
        kwargs.update(overrides.get(name) or {})
        t0 = time.perf_counter()
        doc["suites"][name] = SUITES[name](**kwargs)
        doc["suites"][name]["suite_seconds"] = time.perf_counter() - t0
    out = Path(out_dir)
    # not write_json_atomic: it sorts keys, and the suites' order (and their figures') is the run's
    write_text_atomic(out / "bench.json", json.dumps(doc, indent=2, default=float) + "\n")
    write_text_atomic(out / "bench.md", markdown_table(doc))
    return doc


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(doc: dict[str, Any]) -> str:
    """One table per suite: figure, value; then its sub-tables (rows of a size sweep, one row per
    query option, the protocol comparison), each under its own heading."""
    lines = [f"Machine: {doc['machine']['cpu_count']} CPUs, {doc['machine']['platform']}", ""]
    for name, res in doc["suites"].items():
        custom = SUITE_MARKDOWN.get(name)
        if custom is not None and "by_protocol" in res:  # a suite with its own tables
            lines += [f"## {name}", "", *(f"{k}: {_fmt(v)}" for k, v in res.items() if not isinstance(v, dict)), "",
                      custom(res), ""]  # fmt: skip
            continue
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        after: list[str] = []
        for k, v in res.items():
            if isinstance(v, dict) and "configs" in v:
                after += ["", f"### {k}: {v['items']} items, {v['queries']} queries", ""]
                cols = list(next(iter(v["configs"].values())))
                after += ["| option | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
                for opt, row in v["configs"].items():
                    after.append(f"| {opt} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
            elif k == "protocols" and isinstance(v, dict):
                from recognizer.evaluation.protocols import protocols_markdown

                after += ["", protocols_markdown(res)]
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                after += ["", f"### {k}", *_rows_table(v)]
            elif isinstance(v, dict) and v and all(isinstance(r, dict) for r in v.values()):
                after += ["", f"### {k}", *_rows_table(list(v.values()), (k, list(v)))]
            else:
                lines.append(f"| {k} | {_fmt(v)} |")
        lines += [*after, ""]
    return "\n".join(lines)


def _rows_table(rows: list[dict[str, Any]], key: tuple[str, list[str]] | None = None) -> list[str]:
    """Row dicts as a table; ``key``: a first column (its name, one value per row)."""
    cols = list(rows[0])
    head = ([key[0]] if key else []) + cols
    out = ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for i, r in enumerate(rows):
        out.append(
            "| " + " | ".join(([key[1][i]] if key else []) + [_fmt(r.get(c, "")) for c in cols]) + " |"
        )
    return out
