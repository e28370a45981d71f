"""Deployment: the embedding model as a verified ONNX file, and what it costs to run.

``export`` writes ``model.onnx`` (and int8 variants, dynamic or statically calibrated), each
verified against PyTorch on real images before it is written and described by a JSON sidecar
that ``recognizer.models.onnx`` checks on load; ``measure`` times any backend (images/s,
latency), counts parameters and megabytes, evaluates top-1 on a manifest the caller names and
sweeps CPU settings; ``model_card`` writes ``MODEL_CARD.md`` and ``model_card.json`` from those
measurements. ``export`` and ``measure`` are independent; ``model_card`` uses both. The
benchmark table over backbones x backends x input sizes lives outside the package, in
``benchmarks/suites/deploy.py``.
"""

from .export import (
    EXPORTERS,
    FP32_MIN_COSINE,
    INT8_MIN_COSINE,
    INT8_MIN_MEAN_COSINE,
    INT8_MODES,
    OPSET,
    ExportedModel,
    ExportError,
    ExportVerificationError,
    cpu_has_vnni,
    export_model,
    onnx_bytes,
    quantize_bytes,
    sample_images,
    torch_embeddings,
    verify_onnx,
)
from .measure import (
    EVAL_QUERY_OPTIONS,
    EVAL_QUERY_OPTIONS_TEXT,
    evaluate_top1,
    machine_info,
    measure_speed,
    measure_speeds,
    model_size_mb,
    parameter_count,
    tune_cpu,
)
from .model_card import model_card_markdown, verification_cell, write_model_card

__all__ = [
    "EVAL_QUERY_OPTIONS", "EVAL_QUERY_OPTIONS_TEXT", "EXPORTERS", "FP32_MIN_COSINE", "INT8_MIN_COSINE",
    "INT8_MIN_MEAN_COSINE", "INT8_MODES", "OPSET", "ExportError", "ExportVerificationError", "ExportedModel",
    "cpu_has_vnni", "evaluate_top1", "export_model", "machine_info", "measure_speed", "measure_speeds",
    "model_card_markdown", "model_size_mb", "onnx_bytes", "parameter_count", "quantize_bytes", "sample_images",
    "torch_embeddings", "tune_cpu", "verification_cell", "verify_onnx", "write_model_card",
]  # fmt: skip
