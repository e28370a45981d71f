"""End to end: the README's main job, and the thin tool scripts, on tiny and on real data."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, shared_path

from recognizer.demo import format_results, run_demo


def test_demo_on_tiny_synthetic_catalog(tmp_path):
    """The demo's whole path without training: calibrated galleries, the one path, report.html, the camera."""
    res = run_demo(tmp_path, n_items=6, n_wild=2, input_size=64, progress=False, num_workers=0, baseline=True)
    assert set(res["models"]) == {"lite0 (off the shelf)", "lite0 (random init)"}
    r = res["models"]["lite0 (off the shelf)"]
    assert r["items"] == 2 and r["queries"] == 4  # split=test items only (unseen)
    assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
    assert r["calibration_seconds"] > 0 and {"aspect", "zoom", "rerank", "score_mode", "threshold"} <= set(r["settings"])
    assert json.loads((tmp_path / "demo_results.json").read_text())["models"].keys() == res["models"].keys()
    text = format_results(res)
    assert "| lite0 (off the shelf) |" in text and "report:" in text and "annotated_video:" in text
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<html" in html.lower() and "top-1" in html.lower()
    assert (tmp_path / "camera.mp4").stat().st_size > 1000 and res["camera"]["frames"] == 80
    assert (tmp_path / "camera_events.jsonl").exists()
    from recognizer.gallery import Gallery
    from recognizer.session import load_gallery_model

    g = Gallery.open(r["gallery"])
    assert g.model_spec == "lite0@64" and load_gallery_model(g).preprocess.input_size == 64
    assert g.settings["calibration"]["queries"] == {"synthetic": 8}  # one catalog photo per item: 4 views each


def test_tools_run_as_scripts(tmp_path):
    out = subprocess.run(
        [sys.executable, "tools/demo.py", "--out", str(tmp_path / "d"), "--items", "4", "--wild", "1",
         "--input-size", "64", "--no-train", "--no-camera", "--no-report", "--no-progress", "--all-items", "--workers", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "gallery items: 4" in out.stdout.lower()
    out = subprocess.run(
        [sys.executable, "tools/make_manifest.py", "imagefolder", str(tmp_path / "d" / "synthetic_catalog"), "--out", str(tmp_path / "m.csv")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and (tmp_path / "m.csv").read_text().startswith("path,item_id\n")


def test_pretrained_lite0_beats_random_init_on_grocery_unseen_items(tmp_path):
    """Real photos of items held out from training: the catalog image enrolls, shelf photos query."""
    root = shared_path("grocery")
    text = (ROOT / "data_manifests" / "grocery_unseen.csv").read_text().splitlines()
    gallery = [ln for ln in text[1:] if ",gallery," in ln]
    queries = [ln for ln in text[1:] if ",query," in ln][::6]  # every 6th query keeps this test short
    small = tmp_path / "grocery_small.csv"
    small.write_text("\n".join([text[0], *gallery, *queries]) + "\n")
    res = run_demo(tmp_path, manifest=small, data_root=root, input_size=160, progress=False, baseline=True,
                   calibrate=False, report=False)  # fmt: skip
    pre, rnd = res["models"]["lite0 (off the shelf)"], res["models"]["lite0 (random init)"]
    assert pre["items"] == 19 and pre["queries"] == len(queries)
    assert pre["top1_within_10"] > rnd["top1_within_10"] + 0.15
    assert pre["top1"] > 3 * pre["chance_top1"]
