"""Embedding backends: the torch model itself, or an exported ONNX model run by ONNX Runtime.

Every backend keeps the contract the embedding code uses (``recognizer.models.embed``):

* ``preprocess``: the :class:`~recognizer.models.preprocess.Preprocess` its input must be made with;
* ``embedding_dim``, ``describe()`` and ``fingerprint``: what it is, for the gallery's model check;
* one preprocessed ``B x 3 x S x S`` batch in, ``B x D`` L2-normalised float32 numpy out.

:class:`~recognizer.models.model.EmbeddingModel` is the torch backend (``embed.forward_batch``);
:class:`OnnxEmbedder` is the ONNX one (``embed_batch``). ``embed_paths`` and
``embed_arrays`` take either, so the DataLoader code exists once.

An export is described by a JSON sidecar next to the ``.onnx`` (written by
``recognizer.deploy.export``): the source model's description and fingerprint, preprocessing,
precision, the verification against PyTorch, and the file's SHA-256, which is checked on
every load (a modified file is refused).

The gallery rule (:func:`check_gallery_accepts`): a gallery takes embeddings from an
export only when the export is *equivalent* to the gallery's model, i.e. an fp32 export
of the model with the gallery's fingerprint whose verification passed with every cosine
>= 0.999 (it then carries that same fingerprint). A non-equivalent export (int8, or an
fp32 one that failed verification) has a fingerprint of its own, derived from the source
fingerprint and the file's SHA-256: it is accepted only by a gallery created with that
very file. Accepted exports are listed in the gallery's meta (``accepted_exports``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .model import ModelLoadError
from .preprocess import Preprocess

BACKENDS = ("torch", "onnx")
SIDECAR_SUFFIX = ".json"  # model.onnx -> model.onnx.json
SIDECAR_FORMAT = "recognizer-onnx-export"
SIDECAR_VERSION = 1
EQUIVALENT_COSINE = 0.999  # min per-image cosine vs PyTorch for an export to count as the same model


class ExportLoadError(ModelLoadError):
    """An exported model cannot be used: sidecar missing or unreadable, or the file does not match it."""



def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    p = Path(onnx_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_equivalent(sidecar: dict[str, Any]) -> bool:
    """An fp32 export whose verification against PyTorch passed with min cosine >= 0.999."""
    v = sidecar.get("verification") or {}
    return (
        sidecar.get("precision") == "fp32"
        and bool(v.get("passed"))
        and float(v.get("min_cosine", -1.0)) >= EQUIVALENT_COSINE
    )


def export_fingerprint(sidecar: dict[str, Any]) -> str:
    """The fingerprint embeddings of this export carry.

    An equivalent export has its source model's fingerprint; any other has its own, derived
    from the source fingerprint, precision and the ``.onnx`` file's SHA-256.
    """
    src = sidecar["model"]["fingerprint"]
    if is_equivalent(sidecar):
        return src
    core = f"{src}|{sidecar['precision']}|{sidecar['onnx_sha256']}"
    return hashlib.sha256(core.encode()).hexdigest()[:16]


def read_sidecar(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """The export's sidecar, checked for the keys this code relies on."""
    sc = sidecar_path(onnx_path)
    if not sc.is_file():
        raise ExportLoadError(
            f"{onnx_path}: no sidecar {sc.name} next to it; export with tools/export.py, which writes both"
        )
    try:
        doc = json.loads(sc.read_text(encoding="utf-8"))
        if doc.get("format") != SIDECAR_FORMAT:
            raise KeyError("format")
        for k in ("onnx_sha256", "precision", "model", "preprocess", "verification", "input_name"):
            doc[k]
        doc["model"]["fingerprint"], doc["model"]["embedding_dim"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ExportLoadError(f"{sc}: not a valid export sidecar ({e!r})") from None
    if doc.get("format_version") != SIDECAR_VERSION:
        raise ExportLoadError(
            f"{sc}: format_version {doc.get('format_version')}, this code reads {SIDECAR_VERSION}"
        )
    return doc


def ort_providers(prefer_cuda: bool = True) -> list[str]:
    """CUDA first when this ONNX Runtime build has it, CPU always."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if prefer_cuda and "CUDAExecutionProvider" in avail else []) + [
        "CPUExecutionProvider"
    ]


def default_threads() -> int:
    import torch

    return torch.get_num_threads()


def make_session(
    model: str | os.PathLike | bytes,
    *,
    threads: int | None = None,
    providers: list[str] | None = None,
    spin: bool = False,
):
    """An ONNX Runtime session: all graph optimisations, ``threads`` intra-op threads (default: torch's).

    ``spin=False`` (default) lets the worker threads sleep between runs instead of busy-waiting:
    the recognizer shares its cores with image decoding, the camera's capture thread and, in
    benchmarks, the torch model, and spinning threads would take their CPU.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=so, providers=providers or ort_providers())


class OnnxEmbedder:
    """An exported embedding model run by ONNX Runtime, with the torch model's embedding contract.

    Loading checks the file's SHA-256 against its sidecar (a modified or swapped file is
    refused with :class:`ExportLoadError`); the session is built from the same bytes that
    were hashed.
    """

    backend = "onnx"

    def __init__(
        self, path: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None
    ):
        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise ExportLoadError(f"{path}: no such exported model")
        self.sidecar = read_sidecar(self.path)
        data = self.path.read_bytes()
        digest = sha256_bytes(data)
        if digest != self.sidecar["onnx_sha256"]:
            raise ExportLoadError(
                f"{self.path}: SHA-256 {digest[:16]}... does not match its sidecar "
                f"({self.sidecar['onnx_sha256'][:16]}...): the file was modified or replaced since export; "
                "refusing it (re-export with tools/export.py)"
            )
        self.sha256 = digest
        self.threads = int(threads or default_threads())
        try:
            self.session = make_session(data, threads=self.threads, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ExportLoadError(f"{self.path}: ONNX Runtime cannot load it ({str(e)[:300]})") from None
        self.providers = self.session.get_providers()
        self.input_name = self.sidecar["input_name"]
        self.preprocess = Preprocess.from_dict(self.sidecar["preprocess"])
        self.embedding_dim = int(self.sidecar["model"]["embedding_dim"])
        self.precision: str = self.sidecar["precision"]
        self.equivalent = is_equivalent(self.sidecar)
        self.source_fingerprint: str = self.sidecar["model"]["fingerprint"]
        self.fingerprint = export_fingerprint(self.sidecar)

    def __repr__(self) -> str:
        return (
            f"OnnxEmbedder({self.path.name}, {self.precision}, {self.providers[0]}, {self.threads} threads)"
        )

    @property
    def verification(self) -> dict[str, Any]:
        return self.sidecar["verification"]

    @property
    def gallery_spec(self) -> str:
        """What a gallery created with this export records as its model: the source model's spec
        when equivalent (so the torch backend can serve the gallery too), else this file."""
        return (self.sidecar.get("model_spec") or "") if self.equivalent else str(self.path)

    def describe(self) -> dict[str, Any]:
        """The source model's description; a non-equivalent export adds ``export`` and its own fingerprint."""
        desc = dict(self.sidecar["model"])
        if not self.equivalent:
            desc["fingerprint"] = self.fingerprint
            desc["export"] = self.record()
        return desc

    def record(self) -> dict[str, Any]:
        """How a gallery lists this export in ``accepted_exports``."""
        return {
            "sha256": self.sha256,
            "file": str(self.path),
            "precision": self.precision,
            "fingerprint": self.fingerprint,
            "source_fingerprint": self.source_fingerprint,
            "min_cosine": self.verification.get("min_cosine"),
            "backend": "onnxruntime",
        }

    def embed_batch(self, batch: Any) -> np.ndarray:
        """``B x 3 x S x S`` preprocessed batch (torch tensor or numpy) -> ``B x D`` float32."""
        x = batch.detach().cpu().numpy() if hasattr(batch, "detach") else batch
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self.session.run(None, {self.input_name: x})[0]
        return np.ascontiguousarray(out, dtype=np.float32)


def describe_model(desc: dict[str, Any]) -> str:
    """``fingerprint (backbone, size px, dim D[, precision export FILE])`` for messages."""
    s = (
        f"{desc['fingerprint']} ({desc.get('config', {}).get('backbone', '?')}, "
        f"{desc['preprocess']['input_size']} px, dim {desc['embedding_dim']}"
    )
    exp = desc.get("export")
    return s + (f", {exp['precision']} export {Path(exp['file']).name})" if exp else ")")




