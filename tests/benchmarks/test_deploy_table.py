"""The deploy suite's table (benchmarks/suites/deploy.py): backbone x backend x input size, at quick sizes."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_exportable_model

from benchmarks.suites.deploy import run_deploy_table, split_label

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """timm's test EfficientNet at 64 px, BatchNorm statistics measured on real images, saved as a model folder."""
    return tiny_exportable_model(0).save(tmp_path_factory.mktemp("deploy_table") / "ckpt")


def test_deploy_table_quick_mode_produces_rows(tmp_path, checkpoint):
    ckpt = checkpoint
    doc = run_deploy_table(
        [f"student={ckpt}"], quick=True, out_dir=tmp_path, workdir=tmp_path, log=None, tune=True
    )
    rows = doc["rows"]
    assert [(r["input_size"], r["backend"]) for r in rows] == [
        (64, "torch"), (64, "onnx-fp32"), (64, "onnx-int8-dynamic"),
    ]  # fmt: skip
    for r in rows:
        assert r["images_per_second"] > 0 and r["latency_ms"] > 0 and r["size_mb"] > 0
        assert 0.0 <= r["accuracy"]["top1"] <= 1.0 and r["accuracy"]["queries"] == 12
    assert rows[1]["equivalent"] and rows[1]["verification"]["min_cosine"] >= 0.999
    assert rows[0]["accuracy"]["top1"] == rows[1]["accuracy"]["top1"]
    assert rows[2]["int8_loss_vs"] == "onnx-fp32" and 0.0 <= rows[2]["int8_mcnemar"]["p"] <= 1.0
    assert all("hits_by_line" not in r["accuracy"] for r in rows)
    assert rows[2]["int8_top1_loss"] == pytest.approx(
        rows[1]["accuracy"]["top1"] - rows[2]["accuracy"]["top1"]
    )
    md = (tmp_path / "deploy.md").read_text()
    assert "| backbone | input | backend | img/s (b32)" in md and md.count("| student | 64 |") == 3
    assert json.loads((tmp_path / "deploy.json").read_text())["suite"] == "deploy"
    tuning = doc["tuning"]["rows"]
    assert {(r["backend"], r["batch"]) for r in tuning} >= {("torch", 1), ("torch", 32), ("onnx", 32)}
    assert "## CPU tuning: student@64" in md


def test_deploy_table_labels_models_by_name_or_label(tmp_path):
    (tmp_path / "student" / "model").mkdir(parents=True)
    assert split_label("lite1") == ("lite1", "lite1")
    assert split_label(f"s={tmp_path}") == ("s", str(tmp_path))
    assert split_label(str(tmp_path / "student" / "model")) == (
        "student",
        str(tmp_path / "student" / "model"),
    )
    assert split_label(str(tmp_path / "student")) == ("student", str(tmp_path / "student"))
