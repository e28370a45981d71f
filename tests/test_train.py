from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from recognizer.model import load_model
from recognizer.train import ConfigError, load_config, recall_at_1, split_classes


def test_config_merging_and_unknown_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 3\nsampler: {m: 2}\n")
    cfg = load_config(str(p), ["loss.args.margin=10", "model.input_size=96"])
    assert cfg["epochs"] == 3 and cfg["sampler"] == {"m": 2, "batch_size": 64}
    assert cfg["loss"]["args"] == {"margin": 10} and cfg["model"]["input_size"] == 96
    with pytest.raises(ConfigError, match="unknown config key 'epoch'; valid keys here: seed, data"):
        load_config(None, ["epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'model.backbon'"):
        load_config(None, ["model.backbon=lite1"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["epochs"])


def test_class_split_and_recall():
    tr, va = split_classes([f"i{k}" for k in range(10)], 0.2, seed=1)
    assert len(va) == 2 and not tr & va and len(tr | va) == 10
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    assert recall_at_1(emb, np.array(["a", "a", "b", "b"])) == 1.0
    assert recall_at_1(emb, np.array(["a", "b", "a", "b"])) == 0.0


def test_train_tool_end_to_end(tmp_path, tiny_catalog):
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "tools/train.py", "--manifest", str(tiny_catalog), "--out", str(out),
         "epochs=2", "model.input_size=64", "data.copies=1", "data.val_fraction=0.4", "sampler.batch_size=6", "sampler.m=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_items"] == 3 and summary["val_items"] == 2  # split=train items only: 5 of the 8
    assert 0 <= summary["best_epoch"] <= 2
    assert (out / "log.csv").read_text().count("\n") == 4
    r = subprocess.run(
        [sys.executable, "tools/train.py", "--manifest", str(tiny_catalog), "--out", str(tmp_path / "bad"), "sampler.batch_size=64"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 2 and "at most m x classes" in r.stderr
    m = load_model(out / "model")
    assert m.config["head"]["name"] == "residual" and m.preprocess.input_size == 64
