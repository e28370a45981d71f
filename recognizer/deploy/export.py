"""ONNX export of the embedding model, int8 quantization, verification against PyTorch.

:func:`export_model` writes, into one folder:

* ``model.onnx``: backbone + pooling + head + L2 normalisation, the same output as
  ``model(x)``, input ``images`` (``batch x 3 x S x S``, preprocessed as the sidecar says,
  dynamic batch), output ``embeddings`` (``batch x D``);
* optionally ``model.int8-dynamic.onnx`` (``quantize_dynamic``: int8 weights, activations
  quantized on the fly) or ``model.int8-static.onnx`` (``quantize_static``: QDQ format,
  per-channel weights, activation ranges calibrated on real preprocessed images);
* next to each ``.onnx`` a JSON sidecar ``<file>.json``: the model's description and
  fingerprint, preprocessing, opset, precision, the verification figures and the file's
  SHA-256 (``recognizer.models.onnx`` refuses a file that does not match it).

Every export is verified on real images (the calibration manifest's, else the synthetic
catalog's) against PyTorch before it is written: fp32 needs every per-image cosine >=
0.999 (then it counts as the same model, see ``recognizer.models.onnx``); int8 needs a
mean cosine >= 0.98 and a minimum >= 0.95 (see :data:`INT8_MIN_MEAN_COSINE`). A failing
export raises :class:`ExportVerificationError` with the figures and leaves no file behind.

Model cards for the exports are ``recognizer.deploy.model_card``; measurements ``recognizer.deploy.measure``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import write_bytes_atomic, write_json_atomic
from ..models.model import EmbeddingModel, load_model
from ..models.onnx import (
    EQUIVALENT_COSINE,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    export_fingerprint,
    is_equivalent,
    make_session,
    sha256_bytes,
    sidecar_path,
)
from ..models.preprocess import Preprocess

OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
EXPORTERS = ("auto", "dynamo", "legacy")
INT8_MODES = ("dynamic", "static")
FP32_MIN_COSINE = EQUIVALENT_COSINE
# int8 is not the same model: it must stay close on average and never drift far on one image.
# EfficientNet-Lite (ReLU6, no squeeze-excite) was designed to quantize; measured on grocery
# photos the per-image cosine of int8 exports is 0.98-0.998 (see benchmarks/*/deploy.md).
INT8_MIN_MEAN_COSINE = 0.98
INT8_MIN_COSINE = 0.95


class ExportError(Exception):
    """The model could not be exported or quantized."""


class ExportVerificationError(ExportError):
    """The exported model's embeddings differ from PyTorch's beyond the stated bound."""


@dataclass
class ExportedModel:
    """One written export: the ``.onnx`` file and its sidecar document."""

    path: Path
    sidecar: dict[str, Any]

    @property
    def precision(self) -> str:
        return self.sidecar["precision"]

    @property
    def verification(self) -> dict[str, Any]:
        return self.sidecar["verification"]


# ------------------------------------------------------------------------------ export


def _inference_copy(model: EmbeddingModel) -> EmbeddingModel:
    """A float32 CPU copy in eval mode and contiguous layout (the caller's model is left as it is)."""
    m = copy.deepcopy(model).cpu().float().eval()
    return m.to(memory_format=torch.contiguous_format)


def onnx_bytes(model: EmbeddingModel, *, opset: int = OPSET, exporter: str = "auto") -> tuple[bytes, str]:
    """Export to ONNX in memory; returns ``(model bytes, exporter used)``.

    Exporter choice: the dynamo exporter (``torch.export`` + onnxscript) goes first. It is
    the maintained path (the TorchScript exporter is deprecated since PyTorch 2.9 and warns
    on every call), it declares the batch axis through ``torch.export.Dim`` so dynamic
    batch is checked at trace time instead of hoped for, and its graphs of lite0/1/2 match
    PyTorch to ~1e-7. It is slower (~10 s for lite0 against ~1 s on 2 cores), which only
    export time pays. ``auto`` falls back to the legacy exporter when dynamo raises (a
    timm/torchvision backbone with Python control flow ``torch.export`` cannot trace);
    the sidecar records which one was used.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    m = _inference_copy(model)
    s = m.preprocess.input_size
    x = torch.randn(2, 3, s, s)  # batch 2: a batch of 1 would let tracing specialise the axis to 1
    errors = []
    with tempfile.TemporaryDirectory(prefix="onnx_export_") as tmp:
        f = Path(tmp) / "model.onnx"
        if exporter in ("auto", "dynamo"):
            try:
                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        m, (x,), str(f), dynamo=True, opset_version=opset, external_data=False,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}},
                    )  # fmt: skip
                return f.read_bytes(), "dynamo"
            except Exception as e:  # the exporter raises many types; fall back or report
                if exporter == "dynamo":
                    raise ExportError(f"dynamo ONNX export failed: {str(e)[:500]}") from e
                errors.append(f"dynamo: {str(e)[:300]}")
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    m, (x,), str(f), dynamo=False, opset_version=min(opset, 17),
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )  # fmt: skip
            return f.read_bytes(), "legacy"
        except Exception as e:
            errors.append(f"legacy: {str(e)[:300]}")
            raise ExportError("ONNX export failed: " + "; ".join(errors)) from e


def _opset_of(data: bytes) -> int:
    import onnx

    proto = onnx.load_from_string(data)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


# ------------------------------------------------------------------------------ quantization


class _BatchReader:
    """``CalibrationDataReader`` over preprocessed images, a few at a time."""

    def __init__(self, images: np.ndarray, batch: int = 8):
        self.images, self.batch, self.pos = images, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.images):
            return None
        x = self.images[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self) -> None:
        self.pos = 0


def cpu_has_vnni() -> bool:
    """x86 VNNI (AVX512-VNNI or AVX-VNNI): int8 dot products without the u8 x s8 saturation of AVX2."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _conv_groups(path: Path) -> tuple[list[str], list[str]]:
    """``(all Conv node names in graph order, the depthwise ones)``."""
    import onnx

    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    group = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs}
    return [n.name for n in convs], [n.name for n in convs if group[n.name] > 1]


def quantize_bytes(
    fp32: bytes,
    mode: str,
    *,
    calibration: np.ndarray | None = None,
    per_channel: bool = True,
    reduce_range: bool | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Quantize an fp32 ONNX model to int8; returns ``(model bytes, settings used)``.

    Both modes first run ONNX Runtime's quantization pre-processing (ONNX shape inference and
    graph optimisation; its symbolic shape inference is skipped: it fails on the Expand of
    the L2 normalisation).

    ``dynamic`` (``quantize_dynamic``): uint8 weights (ONNX Runtime's CPU ConvInteger kernel
    exists only for u8 x u8), activations quantized per batch at run time. The stem conv and
    the depthwise convs stay float: per-tensor weights cannot hold their per-channel ranges
    (measured on lite0 at 224 px, 32 grocery photos: all convs quantized gave a mean cosine
    of 0.85 to fp32, without depthwise 0.972, without depthwise and stem 0.987).

    ``static`` (``quantize_static``): QDQ format, per-channel int8 weights, uint8 activations
    with ranges calibrated (MinMax) on ``calibration``, preprocessed real images.
    ``reduce_range`` (default: on unless the CPU has VNNI) uses 7-bit weights: AVX2's u8 x s8
    instruction saturates with 8 bits (lite0 at 224 px: mean cosine 0.981 with it, 0.935
    without; s8 activations gave 0.961 and ran slower).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in INT8_MODES:
        raise ValueError(f"int8 mode {mode!r} is not one of {', '.join(INT8_MODES)}")
    if mode == "static" and (calibration is None or not len(calibration)):
        raise ValueError("static int8 needs calibration images")
    with tempfile.TemporaryDirectory(prefix="onnx_quant_") as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            preprocessed = True
        except Exception:  # pre-processing is an optimisation; quantize the plain graph instead
            pre, preprocessed = src, False
        info: dict[str, Any] = {"mode": mode, "pre_processed": preprocessed}
        try:
            if mode == "dynamic":
                convs, depthwise = _conv_groups(pre)
                keep = depthwise + [c for c in convs[:1] if c not in depthwise]
                quantize_dynamic(
                    str(pre),
                    str(out),
                    weight_type=QuantType.QUInt8,
                    per_channel=per_channel,
                    nodes_to_exclude=keep,
                )
                info.update(
                    weight_type="uint8", activations="uint8, ranges computed per batch at run time",
                    per_channel=per_channel, float_convs=len(keep), int8_convs=len(convs) - len(keep),
                    kept_float="stem conv and depthwise convs",
                )  # fmt: skip
            else:
                rr = (not cpu_has_vnni()) if reduce_range is None else reduce_range

                class Reader(_BatchReader, CalibrationDataReader):
                    pass

                quantize_static(
                    str(pre), str(out), Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    reduce_range=rr, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )  # fmt: skip
                info.update(
                    format="QDQ", weight_type="int8", activations="uint8, MinMax-calibrated", per_channel=per_channel,
                    reduce_range=rr, calibration_images=int(len(calibration)),
                )  # fmt: skip
        except Exception as e:  # onnxruntime's quantizer raises many types
            raise ExportError(f"int8 {mode} quantization failed: {str(e)[:500]}") from e
        return out.read_bytes(), info


# ------------------------------------------------------------------------------ images


def sample_images(
    preprocess: Preprocess,
    *,
    manifest: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    n: int = 32,
    skip: int = 0,
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, str]:
    """``n`` real images preprocessed to ``N x 3 x S x S`` float32, and where they came from.

    From ``manifest`` (every row, in a seeded shuffled order; ``skip`` drops the first rows
    of that order, so calibration and verification sets can be disjoint), else from the
    synthetic catalog (catalog images and wild photos on real backgrounds).
    """
    from ..data.imageio import ImageLoadError, crop_bbox, load_image
    from ..data.manifest import load_manifest

    with contextlib.ExitStack() as stack:
        if manifest is None:
            from ..data.synthetic import generate_catalog

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="export_images_", dir=workdir))
            total = n + skip
            manifest = generate_catalog(tmp, n_items=max(2, -(-total // 3)), n_wild=2, seed=seed, size=160)
            source = f"synthetic catalog (seed {seed})"
        else:
            source = f"manifest {manifest}"
        m = load_manifest(manifest, data_root)
        order = np.random.default_rng(seed).permutation(len(m.rows))
        out: list[torch.Tensor] = []
        for i in order[skip:]:
            r = m.rows[int(i)]
            try:
                out.append(preprocess.to_tensor(crop_bbox(load_image(m.resolve(r)), r.bbox)))
            except (ImageLoadError, ValueError):
                continue
            if len(out) == n:
                break
    if not out:
        raise ExportError(f"no readable images in {source}")
    return torch.stack(out).numpy(), source


# ------------------------------------------------------------------------------ verification


def torch_embeddings(model: EmbeddingModel, images: np.ndarray, batch: int = 32) -> np.ndarray:
    m = _inference_copy(model)
    with torch.inference_mode():
        return np.concatenate(
            [m(torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
        )


def verify_onnx(
    data: bytes,
    images: np.ndarray,
    reference: np.ndarray,
    *,
    precision: str,
    threads: int | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Cosine between the ONNX model's embeddings and PyTorch's (``reference``), image by image.

    The whole set runs as one batch and the first few images again one at a time, so the
    dynamic batch axis is exercised at two sizes.
    """
    sess = make_session(data, threads=threads, providers=["CPUExecutionProvider"])
    full = sess.run(None, {INPUT_NAME: images})[0]
    k = min(4, len(images))
    singles = np.concatenate([sess.run(None, {INPUT_NAME: images[i : i + 1]})[0] for i in range(k)])
    if full.shape != reference.shape:
        raise ExportVerificationError(f"ONNX output shape {full.shape}, PyTorch {reference.shape}")

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)

    c = np.concatenate([cos(full, reference), cos(singles, reference[:k])])
    fp32 = precision == "fp32"
    v: dict[str, Any] = {
        "images": int(len(images)),
        "source": source,
        "batch_sizes": [int(len(images)), 1],
        "min_cosine": float(c.min()),
        "mean_cosine": float(c.mean()),
        "max_abs_diff": float(np.abs(full - reference).max()),
        "threshold": (
            {"min_cosine": FP32_MIN_COSINE}
            if fp32
            else {"mean_cosine": INT8_MIN_MEAN_COSINE, "min_cosine": INT8_MIN_COSINE}
        ),
    }
    v["passed"] = bool(
        v["min_cosine"] >= FP32_MIN_COSINE
        if fp32
        else v["mean_cosine"] >= INT8_MIN_MEAN_COSINE and v["min_cosine"] >= INT8_MIN_COSINE
    )
    return v


def _fail_message(name: str, v: dict[str, Any]) -> str:
    bound = " and ".join(f"{k.replace('_', ' ')} >= {t}" for k, t in v["threshold"].items())
    return (
        f"{name}: export verification FAILED: min cosine {v['min_cosine']:.5f}, mean {v['mean_cosine']:.5f}, "
        f"max |diff| {v['max_abs_diff']:.2e} on {v['images']} images ({v['source']}); needs {bound}"
    )


# ------------------------------------------------------------------------------ the whole job


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _write_export(
    path: Path, data: bytes, model: EmbeddingModel, model_spec: str, precision: str, fields: dict[str, Any]
) -> ExportedModel:
    desc = model.describe()
    doc: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "onnx_file": path.name,
        "onnx_sha256": sha256_bytes(data),
        "onnx_bytes": len(data),
        "precision": precision,
        "opset": _opset_of(data),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": ["batch", 3, model.preprocess.input_size, model.preprocess.input_size],
        "dynamic_batch": True,
        "model": desc,
        "model_fingerprint": desc["fingerprint"],
        "model_spec": model_spec,
        "preprocess": model.preprocess.to_dict(),
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **fields,
    }
    doc["equivalent"] = is_equivalent(doc)
    doc["fingerprint"] = export_fingerprint(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)  # the file first: until the sidecar follows, a load is refused (hash)
    write_json_atomic(sidecar_path(path), doc)
    return ExportedModel(path, doc)


def export_model(
    model: EmbeddingModel | str,
    out_dir: str | os.PathLike,
    *,
    int8: Sequence[str] | str | None = None,
    calibration: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    verification: str | os.PathLike | None = None,
    verification_data_root: str | os.PathLike | None = None,
    n_verify: int = 32,
    n_calibration: int = 64,
    opset: int = OPSET,
    exporter: str = "auto",
    threads: int | None = None,
    strict: bool = True,
    name: str = "model",
    model_spec: str | None = None,
    log=None,
) -> list[ExportedModel]:
    """Export ``model`` (an :class:`EmbeddingModel` or a spec for :func:`load_model`) to ``out_dir``.

    Writes ``{name}.onnx`` (fp32) and, per ``int8`` mode, ``{name}.int8-{mode}.onnx``, each
    with its sidecar, after verifying each against PyTorch on ``n_verify`` real images
    (``verification`` manifest, else ``calibration``, else the synthetic catalog); static int8
    calibrates on ``n_calibration`` images of ``calibration`` (others than the verification
    images when both come from one source). With ``strict`` (default) a failed
    verification raises :class:`ExportVerificationError` before the file is written;
    otherwise the export is written with ``verification.passed = false``.
    """
    say = log or (lambda msg: None)
    if isinstance(model, (str, os.PathLike)):
        spec = str(model)
        model = load_model(spec)
        if model_spec is None:
            model_spec = str(Path(spec).resolve()) if Path(spec).is_dir() else spec
    modes = [int8] if isinstance(int8, str) else list(int8 or [])
    for mode in modes:
        if mode not in INT8_MODES:
            raise ValueError(f"int8 mode {mode!r} is not one of {', '.join(INT8_MODES)}")
    out = Path(out_dir)
    pre = model.preprocess
    t0 = time.perf_counter()
    data, used = onnx_bytes(model, opset=opset, exporter=exporter)
    say(f"exported with the {used} exporter in {time.perf_counter() - t0:.1f} s")
    if verification is None:
        verification, verification_data_root = calibration, data_root
    same_source = verification == calibration
    images, source = sample_images(pre, manifest=verification, data_root=verification_data_root, n=n_verify)
    reference = torch_embeddings(model, images)
    results = []
    v = verify_onnx(data, images, reference, precision="fp32", threads=threads, source=source)
    say(f"fp32: min cosine {v['min_cosine']:.6f}, mean {v['mean_cosine']:.6f} on {v['images']} images")
    if strict and not v["passed"]:
        raise ExportVerificationError(_fail_message(f"{out / name}.onnx", v))
    common = {"exporter": used}
    results.append(
        _write_export(
            out / f"{name}.onnx", data, model, model_spec or "", "fp32", {**common, "verification": v}
        )
    )
    for mode in modes:
        calib = None
        qfields: dict[str, Any] = {}
        if mode == "static":
            calib, csrc = sample_images(
                pre,
                manifest=calibration,
                data_root=data_root,
                n=n_calibration,
                skip=n_verify if same_source else 0,
            )
            qfields["calibration_source"] = csrc
        t0 = time.perf_counter()
        qdata, qinfo = quantize_bytes(data, mode, calibration=calib)
        qinfo.update(qfields, seconds=round(time.perf_counter() - t0, 2))
        precision = f"int8-{mode}"
        qv = verify_onnx(qdata, images, reference, precision=precision, threads=threads, source=source)
        say(
            f"{precision}: min cosine {qv['min_cosine']:.5f}, mean {qv['mean_cosine']:.5f} on {qv['images']} images"
        )
        path = out / f"{name}.{precision}.onnx"
        if strict and not qv["passed"]:
            raise ExportVerificationError(_fail_message(str(path), qv))
        results.append(
            _write_export(
                path, qdata, model, model_spec or "", precision,
                {**common, "verification": qv, "quantization": qinfo, "source_onnx_sha256": sha256_bytes(data)},
            )
        )  # fmt: skip
    return results
