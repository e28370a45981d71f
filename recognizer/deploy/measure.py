"""Product-side measurements of an embedder (torch or ONNX Runtime), for model cards and tools/export.py.

* :func:`machine_info`: CPU, cores, threads, load and library versions, recorded with every figure.
* :func:`measure_speed` / :func:`measure_speeds`: images/s at batch 32 and single-image latency
  (median of N runs) of any backend (``recognizer.models.onnx`` contract), on preprocessed
  input, so decoding is not in the figure; several embedders take turns call by call.
* :func:`parameter_count`, :func:`model_size_mb`.
* :func:`evaluate_top1`: top-1 on a manifest the caller names, through the gallery machinery: a
  temporary gallery created for the backend, ``enroll.enroll_manifest`` of the ``role=gallery``
  rows, ``report.evaluate_gallery`` + ``report.compute_metrics`` on the ``role=query`` rows.
* :func:`tune_cpu`: throughput over torch thread counts, batch sizes, channels_last and
  ``torch.compile`` (a failure to compile is caught and reported), and ONNX Runtime threads.

Nothing here knows where data lies: callers pass manifests and data roots. The benchmark table
over backbones x backends x sizes is ``benchmarks/suites/deploy.py``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The same query options for every row of a table and model card: the photo defaults of
# tools/match.py without geometric re-ranking (it would mask the embedding's differences).
EVAL_QUERY_OPTIONS = {"aspect": "crop", "zoom": 0.6}
EVAL_QUERY_OPTIONS_TEXT = "aspect crop, zoom 0.6, no re-ranking"


def machine_info(threads: int | None = None) -> dict[str, Any]:
    import onnx
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": int(threads or torch.get_num_threads()),
        "load_average": list(os.getloadavg()),
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


# ------------------------------------------------------------------------------ speed


def _median_seconds(fn: Callable[[], Any], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_speeds(
    embedders: dict[str, Any],
    *,
    batch: int = 32,
    repeats: int = 5,
    latency_runs: int = 30,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per embedder: ``images_per_second`` at ``batch`` (median of ``repeats`` batches) and
    ``latency_ms`` of one image (median of ``latency_runs``; ``latency_ms_p90`` too), on
    preprocessed random input (no decoding).

    The embedders take turns, one timed call each round, so a change in the machine's load
    (it is shared) hits all of them alike instead of whichever ran at the time.
    """
    from ..models.embed import prepare_for_inference, run_batch

    inputs = {}
    for name, emb in embedders.items():
        prepare_for_inference(emb)
        s = emb.preprocess.input_size
        xb = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(seed))
        inputs[name] = (xb, xb[:1].clone())
        for _ in range(warmup):
            run_batch(emb, xb)
            run_batch(emb, inputs[name][1])
    t_batch: dict[str, list[float]] = {n: [] for n in embedders}
    t_one: dict[str, list[float]] = {n: [] for n in embedders}
    for _ in range(repeats):
        for name, emb in embedders.items():
            t0 = time.perf_counter()
            run_batch(emb, inputs[name][0])
            t_batch[name].append(time.perf_counter() - t0)
    for _ in range(latency_runs):
        for name, emb in embedders.items():
            t0 = time.perf_counter()
            run_batch(emb, inputs[name][1])
            t_one[name].append(time.perf_counter() - t0)
    return {
        n: {
            "images_per_second": batch / statistics.median(t_batch[n]),
            "latency_ms": 1000 * statistics.median(t_one[n]),
            "latency_ms_p90": 1000 * float(np.percentile(t_one[n], 90)),
            "batch": batch,
            "repeats": repeats,
            "latency_runs": latency_runs,
        }
        for n in embedders
    }


def measure_speed(embedder, **kwargs) -> dict[str, float]:
    """:func:`measure_speeds` of one embedder."""
    return measure_speeds({"x": embedder}, **kwargs)["x"]


def parameter_count(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def model_size_mb(embedder) -> float:
    """The ``.onnx`` file's size for an export; the weights' bytes (as stored: float32) for torch."""
    path = getattr(embedder, "path", None)
    if path is not None:
        return Path(path).stat().st_size / 1e6
    return sum(t.numel() * t.element_size() for t in embedder.state_dict().values()) / 1e6


# ------------------------------------------------------------------------------ accuracy


def evaluate_top1(
    embedder,
    manifest,
    *,
    query_stride: int = 1,
    query_options: dict[str, Any] | None = None,
    workdir: str | os.PathLike | None = None,
    progress: bool = False,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Top-1 (whole gallery), top-5 and top-1 within each query's own candidates, through the gallery code.

    A temporary gallery is created for ``embedder`` (its own description, so an int8 export
    gets its own gallery), the ``role=gallery`` rows are enrolled and every
    ``query_stride``-th ``role=query`` row is evaluated with ``report.evaluate_gallery``.
    Top-1 compares each query's best-scoring item (``argmax``) with its true item
    (:func:`recognizer.evaluation.metrics.top1_accuracy`); ``hits_by_line`` has the same per-query
    outcomes, keyed by manifest line, for paired comparisons between backends.
    """
    from ..enroll import enroll_manifest
    from ..evaluation.metrics import top1_accuracy
    from ..evaluation.report import compute_metrics, evaluate_gallery
    from ..gallery.gallery import Gallery
    from ..matching.options import QueryOptions

    gallery_rows = manifest.select(role="gallery")
    queries = manifest.select(role="query")[::query_stride]
    if not gallery_rows or not queries:
        raise ValueError(f"{manifest.source}: needs role=gallery and role=query rows")
    opts = QueryOptions(**(EVAL_QUERY_OPTIONS if query_options is None else query_options))
    tmp = Path(tempfile.mkdtemp(prefix="deploy_eval_", dir=workdir))
    try:
        g = Gallery.create(
            tmp / "g", embedder.describe(), model_spec=getattr(embedder, "gallery_spec", "") or ""
        )
        if getattr(embedder, "backend", "torch") == "onnx":
            from ..session import check_gallery_accepts

            check_gallery_accepts(g, embedder)
        t0 = time.perf_counter()
        enroll_manifest(g, embedder, manifest, gallery_rows, progress=False, num_workers=num_workers)
        t_enroll = time.perf_counter() - t0
        ev = evaluate_gallery(
            g,
            manifest,
            queries,
            model=embedder,
            query_options=opts,
            progress=progress,
            num_workers=num_workers,
        )
        m = compute_metrics(ev, n_boot=200)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows_acc = m.get("candidates", {}).get("rows", {})
    # the queries of known items, their true and best-scoring (argmax) items
    kq, truth, pred = m.get("_kq", []), m.get("_truth_items", []), m.get("_pred_items", [])
    return {
        "top1": top1_accuracy(truth, pred),
        "top1_ci95": m.get("top1_ci95"),
        "top5": m.get("top5", float("nan")),
        "top1_within_candidates": rows_acc.get("accuracy"),
        "items": m["items"],
        "queries": m["queries"],
        "skipped": m["skipped_rows"],
        "embed_ms_per_image": m["embed_ms_per_image"],
        "enroll_seconds": t_enroll,
        # per query (manifest line): top-1 correct, for paired comparisons between backends
        "hits_by_line": {int(ev.rows[int(i)].line): t == p for i, t, p in zip(kq, truth, pred, strict=True)},
    }


# ------------------------------------------------------------------------------ CPU tuning


def tune_cpu(
    model,
    *,
    threads: Sequence[int] = (1, 2),
    batch_sizes: Sequence[int] = (1, 8, 32),
    channels_last: Sequence[bool] = (False, True),
    compile: bool = True,
    onnx: str | os.PathLike | None = None,
    repeats: int = 3,
    warmup: int = 1,
) -> list[dict[str, Any]]:
    """Images/s for every combination of torch threads x batch size x memory layout (and with
    ``torch.compile`` at the default layout/threads when ``compile``), and ONNX Runtime at each
    thread count when ``onnx`` is given. A configuration that fails is reported with its error."""
    from ..models.model import load_model

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    model = model.eval()
    s = model.preprocess.input_size
    rows: list[dict[str, Any]] = []
    old_threads = torch.get_num_threads()
    inputs = {b: torch.randn(b, 3, s, s) for b in batch_sizes}

    def timed(fn, b) -> float:
        return b / _median_seconds(fn, repeats, warmup)

    try:
        for t in threads:
            torch.set_num_threads(t)
            for cl in channels_last:
                fmt = torch.channels_last if cl else torch.contiguous_format
                model.to(memory_format=fmt)
                for b in batch_sizes:
                    x = inputs[b].contiguous(memory_format=fmt)

                    def run(x=x):
                        with torch.inference_mode():
                            model(x)

                    rows.append(
                        {"backend": "torch", "threads": t, "channels_last": cl, "batch": b,
                         "compile": False, "images_per_second": timed(run, b)}
                    )  # fmt: skip
        if compile:
            torch.set_num_threads(old_threads)
            model.to(memory_format=torch.channels_last)
            row: dict[str, Any] = {
                "backend": "torch",
                "threads": old_threads,
                "channels_last": True,
                "compile": True,
            }
            try:
                t0 = time.perf_counter()
                cm = torch.compile(model)
                x = inputs[max(batch_sizes)].contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    cm(x)  # compiles
                row["compile_seconds"] = time.perf_counter() - t0

                def run_c(x=x):
                    with torch.inference_mode():
                        cm(x)

                row.update(batch=max(batch_sizes), images_per_second=timed(run_c, max(batch_sizes)))
            except Exception as e:  # inductor needs a C++ compiler etc.: report, do not fail
                row.update(batch=max(batch_sizes), error=f"{type(e).__name__}: {str(e)[:300]}")
            rows.append(row)
        if onnx is not None:
            from ..models.onnx import OnnxEmbedder

            for t in threads:
                emb = OnnxEmbedder(onnx, threads=t)
                for b in batch_sizes:
                    xb = inputs[b].numpy()
                    rows.append(
                        {"backend": "onnx", "threads": t, "batch": b, "precision": emb.precision,
                         "images_per_second": timed(lambda xb=xb, emb=emb: emb.embed_batch(xb), b)}
                    )  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)
        model.to(memory_format=torch.contiguous_format)
    return rows
