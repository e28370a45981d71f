"""Model cards for exports: ``MODEL_CARD.md`` and ``model_card.json`` next to the ``.onnx`` files.

:func:`write_model_card` measures, on this machine in this run, every export of one model (and the
torch model itself, for reference): size, parameters, input size, backend and precision,
throughput and latency, and, given an evaluation manifest, top-1 through the gallery machinery
(``recognizer.deploy.measure``). :func:`model_card_markdown` renders the JSON document.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..fileio import write_json_atomic, write_text_atomic
from ..models.model import EmbeddingModel
from .export import ExportedModel
from .measure import (
    EVAL_QUERY_OPTIONS_TEXT,
    evaluate_top1,
    machine_info,
    measure_speed,
    model_size_mb,
    parameter_count,
)


def write_model_card(
    out_dir: str | os.PathLike,
    model: EmbeddingModel,
    exports: Sequence[ExportedModel],
    *,
    eval_manifest: str | os.PathLike | None = None,
    eval_data_root: str | os.PathLike | None = None,
    query_stride: int = 1,
    threads: int | None = None,
    include_torch: bool = True,
    batch: int = 32,
    repeats: int = 5,
    latency_runs: int = 30,
    progress: bool = False,
) -> tuple[Path, Path]:
    """Write ``MODEL_CARD.md`` and ``model_card.json`` for the exports of one model (and, for reference,
    the torch model itself), all measured in this run on this machine."""
    from ..models.onnx import OnnxEmbedder

    out = Path(out_dir)
    ev_manifest = None
    if eval_manifest is not None:
        from ..data.manifest import load_manifest

        ev_manifest = load_manifest(eval_manifest, eval_data_root)
    backends: list[tuple[str, Any, ExportedModel | None]] = []
    if include_torch:
        backends.append(("torch", model, None))
    for e in exports:
        backends.append(("onnx", OnnxEmbedder(e.path, threads=threads), e))
    rows = []
    for _backend, emb, e in backends:
        row: dict[str, Any] = {
            "file": e.path.name if e else None,
            "backend": "onnxruntime " + emb.providers[0] if e else f"torch {torch.__version__}",
            "precision": e.precision if e else "fp32",
            "size_mb": model_size_mb(emb),
            "parameters": parameter_count(model),
            "input_size": emb.preprocess.input_size,
            "embedding_dim": emb.embedding_dim,
            "fingerprint": emb.fingerprint,
            "sha256": e.sidecar["onnx_sha256"] if e else None,
            "verification": e.verification if e else None,
        }
        row.update(measure_speed(emb, batch=batch, repeats=repeats, latency_runs=latency_runs))
        if ev_manifest is not None:
            row["accuracy"] = evaluate_top1(emb, ev_manifest, query_stride=query_stride, progress=progress)
            row["accuracy"].pop("hits_by_line")
        rows.append(row)
    desc = model.describe()
    doc = {
        "model": desc,
        "model_spec": exports[0].sidecar.get("model_spec") if exports else "",
        "preprocess": model.preprocess.to_dict(),
        "machine": machine_info(threads),
        "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "throughput_note": f"embedding only (preprocessed random input), batch {batch}: median of {repeats} runs; "
        f"latency: batch 1, median of {latency_runs} runs",
        "eval": None
        if ev_manifest is None
        else {
            "manifest": str(eval_manifest),
            "data_root": str(ev_manifest.data_root),
            "query_stride": query_stride,
            "query_options": EVAL_QUERY_OPTIONS_TEXT,
        },
        "variants": rows,
    }
    json_path = write_json_atomic(out / "model_card.json", doc)
    md_path = write_text_atomic(out / "MODEL_CARD.md", model_card_markdown(doc))
    return md_path, json_path


def _every(n: int) -> str:
    return "every" if n == 1 else "every " + {2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def model_card_markdown(doc: dict[str, Any]) -> str:
    d = doc["model"]
    cfg = d["config"]
    pre = doc["preprocess"]
    lines = [
        f"# Model card: {cfg['backbone']} embedding model ({d['fingerprint']})",
        "",
        f"- model spec: `{doc.get('model_spec') or '-'}`",
        f"- architecture: backbone `{cfg['backbone']}`, pooling `{cfg['pooling']['name']}`, "
        f"head `{(cfg.get('head') or {}).get('name', 'none')}`, L2-normalised {d['embedding_dim']}-d embedding",
        f"- input: RGB resized ({pre['resize']}, {pre['interpolation']}) to {pre['input_size']} x {pre['input_size']}, "
        f"normalised with mean {pre['mean']} and std {pre['std']}, NCHW float32, dynamic batch",
        f"- weights sha256: `{d['weights_sha256']}`",
        f"- measured on: {doc['machine']['cpu']} ({doc['machine']['threads']} threads), {doc['measured']}",
        f"- speed: {doc['throughput_note']}",
    ]
    if doc.get("eval"):
        e = doc["eval"]
        lines.append(
            f"- accuracy: `{e['manifest']}` (data root `{e['data_root']}`): gallery = role=gallery rows, "
            f"queries = {_every(e['query_stride'])} role=query row, query options {e['query_options']}; "
            "each backend enrolls and matches with its own embeddings"
        )
    lines += [
        "",
        "| file | backend | precision | size MB | params | input | img/s (batch 32) | latency ms (batch 1) | verified vs torch (min / mean cosine) | top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["variants"]:
        ver = verification_cell(r.get("verification"))
        acc = r.get("accuracy")
        top1 = f"{acc['top1']:.3f} ({acc['queries']} q)" if acc else "-"
        lines.append(
            f"| {r['file'] or '(torch)'} | {r['backend']} | {r['precision']} | {r['size_mb']:.1f} | "
            f"{r['parameters'] / 1e6:.2f} M | {r['input_size']} | {r['images_per_second']:.1f} | "
            f"{r['latency_ms']:.1f} | {ver} | {top1} |"
        )
    lines += [
        "",
        "fp32 exports whose every cosine is >= 0.999 carry the model's fingerprint: a gallery built with the "
        "model accepts them. int8 exports are a different model (own fingerprint): use them only with a "
        "gallery created by that file.",
        f"Platform: {platform.platform()}; versions: {json.dumps(doc['machine']['versions'])}",
        "",
    ]
    return "\n".join(lines)


def verification_cell(v: dict[str, Any] | None, failed: str = " FAILED") -> str:
    """``min / mean cosine`` against torch for a table cell (``reference`` for torch itself)."""
    if not v:
        return "reference"
    return f"{v['min_cosine']:.4f} / {v['mean_cosine']:.4f}" + ("" if v["passed"] else failed)
