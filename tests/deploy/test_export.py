"""ONNX export, int8 quantization, the ONNX Runtime backend, the gallery's export rule, the deploy table."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_exportable_model

from recognizer.data.imageio import load_image
from recognizer.data.manifest import load_manifest
from recognizer.deploy.export import ExportVerificationError, export_model
from recognizer.enroll import enroll_manifest
from recognizer.gallery import Gallery, GalleryModelMismatchError
from recognizer.matching.batch import match_manifest
from recognizer.models.embed import embed_arrays, embed_paths
from recognizer.models.model import load_model
from recognizer.models.onnx import (
    ExportLoadError,
    OnnxEmbedder,
    make_session,
    sidecar_path,
)
from recognizer.models.preprocess import Preprocess
from recognizer.session import (
    ExportNotAcceptedError,
    load_gallery_embedder,
    load_gallery_model,
    open_or_create_gallery,
)

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One model saved as a checkpoint, exported once: fp32, int8 dynamic, int8 static."""
    root = tmp_path_factory.mktemp("export")
    model = tiny_exportable_model(0)
    ckpt = model.save(root / "ckpt")
    model = load_model(ckpt)
    exports = export_model(
        model, root / "onnx", int8=["dynamic", "static"], n_verify=8, n_calibration=8, model_spec=str(ckpt)
    )
    return model, ckpt, {e.precision: e for e in exports}


def _cos(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp32_export_matches_torch_at_any_batch_size(exported, tiny_catalog):
    model, _, ex = exported
    e = ex["fp32"]
    sc = json.loads(sidecar_path(e.path).read_text())
    assert sc["precision"] == "fp32" and sc["equivalent"] and sc["dynamic_batch"]
    assert sc["fingerprint"] == sc["model_fingerprint"] == model.fingerprint
    assert sc["model"] == json.loads(json.dumps(model.describe()))
    assert Preprocess.from_dict(sc["preprocess"]) == model.preprocess
    assert sc["opset"] >= 17 and sc["exporter"] in ("dynamo", "legacy")
    v = sc["verification"]
    assert v["passed"] and v["min_cosine"] >= 0.999 and v["images"] == 8 and "synthetic" in v["source"]
    import hashlib

    assert sc["onnx_sha256"] == hashlib.sha256(e.path.read_bytes()).hexdigest()
    # independently of the exporter's own check: real images at batch 1 and 5
    m = load_manifest(tiny_catalog)
    x = torch.stack([model.preprocess.to_tensor(load_image(m.resolve(r))) for r in m.rows[:5]])
    with torch.no_grad():
        ref = model(x).numpy()
    sess = make_session(e.path)
    for batch in (x[:1], x):
        out = sess.run(None, {"images": batch.numpy()})[0]
        assert out.shape == (len(batch), model.embedding_dim)
        assert _cos(out, ref[: len(batch)]).min() >= 0.999


def test_int8_exports_stay_within_their_stated_bound(exported):
    model, _, ex = exported
    fp32_size = ex["fp32"].path.stat().st_size
    for precision in ("int8-dynamic", "int8-static"):
        e = ex[precision]
        v = e.verification
        assert v["passed"] and v["mean_cosine"] >= 0.98 and v["min_cosine"] >= 0.95, v
        assert v["threshold"] == {"mean_cosine": 0.98, "min_cosine": 0.95}
        assert not e.sidecar["equivalent"] and e.sidecar["fingerprint"] != model.fingerprint
        assert e.sidecar["model_fingerprint"] == model.fingerprint
        assert e.sidecar["quantization"]["mode"] == precision.split("-")[1]
        assert e.path.stat().st_size < fp32_size
    assert ex["int8-static"].sidecar["quantization"]["format"] == "QDQ"
    assert ex["int8-static"].sidecar["quantization"]["per_channel"] is True


def test_failed_verification_is_loud_and_writes_nothing(tmp_path, monkeypatch, exported):
    import recognizer.deploy.export as X

    model, _, ex = exported
    real = X.torch_embeddings
    monkeypatch.setattr(
        X, "onnx_bytes", lambda *a, **k: (ex["fp32"].path.read_bytes(), "dynamo")
    )  # the real export

    def skewed(m, images, batch=32):  # as if the export computed something else
        ref = real(m, images, batch)
        ref[0] = np.roll(ref[0], 7)
        return ref

    monkeypatch.setattr(X, "torch_embeddings", skewed)
    with pytest.raises(
        ExportVerificationError, match=r"verification FAILED: min cosine 0\.\d+, mean 0\.\d+.*>= 0\.999"
    ):
        export_model(model, tmp_path / "bad", n_verify=4)
    assert not (tmp_path / "bad" / "model.onnx").exists()


def test_onnx_backend_embeds_like_torch_through_embed_paths(exported, tiny_catalog):
    model, _, ex = exported
    emb = OnnxEmbedder(ex["fp32"].path, threads=1)
    assert emb.fingerprint == model.fingerprint and emb.preprocess == model.preprocess
    assert emb.providers[-1] == "CPUExecutionProvider" and emb.threads == 1
    m = load_manifest(tiny_catalog)
    paths = [m.resolve(r) for r in m.rows[:7]] + [tiny_catalog.parent / "missing.jpg"]
    a = embed_paths(model, paths, batch_size=3, num_workers=0)
    b = embed_paths(emb, paths, batch_size=3, num_workers=0)
    assert b.indices.tolist() == a.indices.tolist() == list(range(7))
    assert [i for i, _ in b.failures] == [7]
    assert b.embeddings.dtype == np.float32
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=2e-4)
    arrays = [load_image(p) for p in paths[:3]]
    np.testing.assert_allclose(embed_arrays(emb, arrays), embed_arrays(model, arrays), atol=2e-4)


@pytest.fixture
def torch_gallery(tmp_path, exported, tiny_catalog):
    _, ckpt, _ = exported
    g, model = open_or_create_gallery(tmp_path / "g", str(ckpt))
    enroll_manifest(g, model, load_manifest(tiny_catalog), progress=False, num_workers=0)
    return g, model


def test_gallery_accepts_the_verified_fp32_export_and_records_it(torch_gallery, exported, tiny_catalog):
    g, model = torch_gallery
    _, _, ex = exported
    emb = load_gallery_embedder(g, backend="onnx", onnx=ex["fp32"].path)
    assert [e["sha256"] for e in Gallery.open(g.root).accepted_exports] == [ex["fp32"].sidecar["onnx_sha256"]]
    assert Gallery.open(g.root).accepted_exports[0]["precision"] == "fp32"
    load_gallery_embedder(g, backend="onnx", onnx=ex["fp32"].path)  # listed once
    assert len(Gallery.open(g.root).accepted_exports) == 1
    m = load_manifest(tiny_catalog)
    a = match_manifest(g, model, m, progress=False, num_workers=0)
    b = match_manifest(g, emb, m, progress=False, num_workers=0)
    assert [x.item_id for x in b.matches] == [x.item_id for x in a.matches]


def test_gallery_refuses_int8_and_other_models_exports(torch_gallery, exported, tmp_path):
    g, model = torch_gallery
    _, _, ex = exported
    with pytest.raises(ExportNotAcceptedError) as err:
        load_gallery_embedder(g, backend="onnx", onnx=ex["int8-dynamic"].path)
    msg = str(err.value)
    assert "model.int8-dynamic.onnx" in msg and "int8-dynamic export of the gallery's model" in msg
    assert model.fingerprint in msg and ex["int8-dynamic"].sidecar["fingerprint"] in msg
    assert "min cosine" in msg and "0.999" in msg
    assert Gallery.open(g.root).accepted_exports == []
    other = tiny_exportable_model(1)
    g2 = Gallery.create(tmp_path / "g2", other.describe(), model_spec="")
    with pytest.raises(
        ExportNotAcceptedError,
        match=rf"export of model {model.fingerprint}.*built with model {other.fingerprint}",
    ):
        load_gallery_embedder(g2, backend="onnx", onnx=ex["fp32"].path)


def test_int8_gallery_takes_only_its_own_export(tmp_path, exported, tiny_catalog):
    _, _, ex = exported
    path = ex["int8-static"].path
    g, emb = open_or_create_gallery(tmp_path / "g8", None, backend="onnx", onnx=path)
    assert g.fingerprint == emb.fingerprint == ex["int8-static"].sidecar["fingerprint"]
    assert g.model_spec == str(path) and g.model_description["export"]["precision"] == "int8-static"
    rep = enroll_manifest(g, emb, load_manifest(tiny_catalog), progress=False, num_workers=0)
    assert rep.images_added == 8
    again = load_gallery_embedder(Gallery.open(g.root), backend="onnx")  # the gallery's own file by default
    assert again.sha256 == emb.sha256
    with pytest.raises(
        GalleryModelMismatchError, match="only that file makes comparable embeddings: use --backend onnx"
    ):
        load_gallery_model(g)
    with pytest.raises(ExportNotAcceptedError, match="built with the export"):
        load_gallery_embedder(g, backend="onnx", onnx=ex["fp32"].path)
    with pytest.raises(ExportNotAcceptedError):
        load_gallery_embedder(g, backend="onnx", onnx=ex["int8-dynamic"].path)


def test_tampered_or_unsidecarred_export_is_refused(tmp_path, exported, torch_gallery):
    _, _, ex = exported
    g, _ = torch_gallery
    bad = tmp_path / "model.onnx"
    shutil.copy(ex["fp32"].path, bad)
    shutil.copy(sidecar_path(ex["fp32"].path), sidecar_path(bad))
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    bad.write_bytes(bytes(data))
    with pytest.raises(ExportLoadError, match=r"model\.onnx: SHA-256 .* does not match its sidecar"):
        OnnxEmbedder(bad)
    with pytest.raises(ExportLoadError, match="modified or replaced"):
        load_gallery_embedder(g, backend="onnx", onnx=bad)
    sidecar_path(bad).unlink()
    with pytest.raises(ExportLoadError, match="no sidecar model.onnx.json"):
        OnnxEmbedder(bad)


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _tool(name: str, *argv: str) -> int:
    """A tool's ``main`` in this process (the export tool itself runs as a subprocess)."""
    return runpy.run_path(str(ROOT / "tools" / f"{name}.py"), run_name="tool")["main"](list(argv))


def test_export_tool_end_to_end_then_enroll_and_match_on_onnx(tmp_path, exported, tiny_catalog, capsys):
    _, ckpt, _ = exported
    out = tmp_path / "exp"
    r = _run(
        "tools/export.py", "--model", str(ckpt), "--format", "onnx", "--out", str(out), "--int8", "dynamic",
        "--n-verify", "6", "--eval-manifest", str(tiny_catalog), "--speed-repeats", "1", "--latency-runs", "3",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "min cosine" in r.stdout and "equivalent to the torch model" in r.stdout
    for f in ("model.onnx", "model.onnx.json", "model.int8-dynamic.onnx", "model.int8-dynamic.onnx.json"):
        assert (out / f).is_file(), f
    card = json.loads((out / "model_card.json").read_text())
    assert [v["precision"] for v in card["variants"]] == ["fp32", "fp32", "int8-dynamic"]
    for v in card["variants"]:
        assert v["images_per_second"] > 0 and v["latency_ms"] > 0 and v["size_mb"] > 0
        assert 0.0 <= v["accuracy"]["top1"] <= 1.0 and v["accuracy"]["queries"] == 16
        assert v["input_size"] == 64 and v["parameters"] > 0
    md = (out / "MODEL_CARD.md").read_text()
    assert "| model.int8-dynamic.onnx | onnxruntime CPUExecutionProvider | int8-dynamic |" in md
    # a gallery enrolled through ONNX Runtime, matched by torch (equivalent), refusing the int8 export
    gdir = tmp_path / "g"
    onnx_fp32, onnx_int8 = str(out / "model.onnx"), str(out / "model.int8-dynamic.onnx")
    assert _tool("enroll", "--gallery", str(gdir), "--manifest", str(tiny_catalog), "--onnx", onnx_fp32, "--no-progress", "--workers", "0") == 0  # fmt: skip
    assert Gallery.open(gdir).model_spec == str(ckpt.resolve())
    preds = str(tmp_path / "p.csv")
    q = [
        "--gallery",
        str(gdir),
        "--manifest",
        str(tiny_catalog),
        "--out",
        preds,
        "--no-progress",
        "--workers",
        "0",
    ]
    assert _tool("match", *q) == 0
    rep = [
        "--gallery",
        str(gdir),
        "--manifest",
        str(tiny_catalog),
        "--out",
        str(tmp_path / "rep"),
        "--no-progress",
    ]
    assert _tool("report", *rep, "--workers", "0", "--onnx", onnx_fp32) == 0
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["metrics"]["queries"] == 16
    capsys.readouterr()
    assert _tool("match", *q, "--backend", "onnx", "--onnx", onnx_int8) == 2
    err = capsys.readouterr().err
    assert "refusing" in err and "model.int8-dynamic.onnx" in err and "not verified equivalent" in err


def test_cpu_tuning_reports_every_configuration_and_compile_failures(monkeypatch, exported):
    from recognizer.deploy import tune_cpu

    model, _, ex = exported

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    rows = tune_cpu(
        model, threads=(1,), batch_sizes=(2,), channels_last=(False, True), onnx=ex["fp32"].path, repeats=1
    )
    torch_rows = [r for r in rows if r["backend"] == "torch" and not r["compile"]]
    assert [r["channels_last"] for r in torch_rows] == [False, True]
    assert all(r["images_per_second"] > 0 for r in torch_rows)
    (comp,) = [r for r in rows if r.get("compile")]
    assert "no C++ compiler here" in comp["error"]
    (ort_row,) = [r for r in rows if r["backend"] == "onnx"]
    assert ort_row["images_per_second"] > 0 and ort_row["precision"] == "fp32"
    assert torch.get_num_threads() >= 1


def test_camera_runs_on_the_onnx_backend_with_the_same_labels(tmp_path, exported):
    from recognizer.data.synthetic import catalog_image, generate_video, render_item
    from recognizer.matching.camera import CameraConfig, run_camera

    model, _, ex = exported
    items = [(f"item{i:04d}", render_item(i, seed=5)) for i in range(4)]
    g = Gallery.create(tmp_path / "g", model.describe(), model_spec="")
    g.add([i for i, _ in items], embed_arrays(model, [catalog_image(r, 96) for _, r in items]))
    generate_video(tmp_path / "v.mp4", items[:2], seconds=4, fps=10, seed=1, size=(160, 120))  # 1 s of empty table first
    emb = load_gallery_embedder(g, backend="onnx", onnx=ex["fp32"].path, threads=1)
    logs = []
    for embedder in (model, emb):
        log: list = []
        # a random-weight test model: no name would pass the camera's 0.5 floor, so the floor is off here;
        # one crop budget for both (by default each gets its own from its measured speed: more windows for ONNX)
        stats = run_camera(g, embedder, tmp_path / "v.mp4", headless=True, realtime=False, frame_log=log,
                           cfg=CameraConfig(min_score=0.0, crop_budget=4))  # fmt: skip
        assert stats["frames"] == 40
        logs.append([(i, [lab for _, lab, _ in labels]) for i, labels in log])
    assert sum(len(labels) for _, labels in logs[0]) > 0  # the items were tracked and labelled
    assert logs[0] == logs[1]


def test_camera_picks_onnx_runtime_by_itself_exports_once_and_falls_back_to_torch(torch_gallery, monkeypatch, tmp_path):
    from recognizer.deploy import camera_backend as cb

    g, _ = torch_gallery
    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))
    said: list[str] = []
    emb = cb.load_camera_embedder(g, log=said.append)
    assert isinstance(emb, OnnxEmbedder) and emb.fingerprint == g.fingerprint  # verified equivalent: same fingerprint
    assert "exporting" in said[0] and "ONNX Runtime backend" in said[-1]
    made = sorted(cb.export_cache_dir().rglob("model.onnx"))
    assert len(made) == 1
    said.clear()
    assert isinstance(cb.load_camera_embedder(g, log=said.append), OnnxEmbedder)
    assert not any("exporting" in s for s in said)  # the cached export, not a second one
    assert not isinstance(cb.load_camera_embedder(g, backend="torch"), OnnxEmbedder)

    def broken(*a, **k):
        raise RuntimeError("no exporter here")

    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr("recognizer.deploy.camera_backend.export_model", broken)
    said.clear()
    emb = cb.load_camera_embedder(g, log=said.append)
    assert not isinstance(emb, OnnxEmbedder) and "torch backend" in said[-1] and "no exporter here" in said[-1]
