from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from recognizer.models.model import build_model, load_model
from recognizer.train import (
    ConfigError,
    Teacher,
    backbone_units,
    freeze_backbone,
    load_config,
    recall_at_1,
    set_train_mode,
    split_classes,
    validation_recall,
    warmup_cosine,
)

TINY = ["model.input_size=64", "stage1.copies=1", "data.val_fraction=0.4", "sampler.batch_size=6", "sampler.m=2",
        "data.num_workers=0"]  # fmt: skip


def _train(catalog, out, *overrides, resume=False, torchrun=False, manifest=None, config=None):
    cmd = [sys.executable, "tools/train.py"]
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "tools/train.py",
        ]
    cmd += ["--manifest", str(manifest or catalog), "--out", str(out)]
    cmd += (["--config", config] if config else []) + [*TINY, *overrides]
    if resume:
        cmd.append("--resume")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_config_merging_and_unknown_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stage1: {epochs: 3}\nsampler: {m: 2}\n")
    cfg = load_config(str(p), ["loss.args.margin=10", "model.input_size=96"])
    assert cfg["stage1"] == {"epochs": 3, "cached": True, "copies": 2}
    assert cfg["sampler"] == {"m": 2, "batch_size": 64, "per_class": None}
    assert cfg["loss"]["args"] == {"margin": 10} and cfg["model"]["input_size"] == 96
    with pytest.raises(ConfigError, match="unknown config key 'epochs'; valid keys here: seed, data"):
        load_config(None, ["epochs=3"])
    with pytest.raises(ConfigError, match="distill must be"):
        load_config(None, ["distill={teacher: lite2, temperature: 2}"])
    with pytest.raises(ConfigError, match="stage2.epochs must be a non-negative integer"):
        load_config(None, ["stage2.epochs=-1"])
    with pytest.raises(ConfigError, match="class_weights must be"):
        load_config(None, ["class_weights=0.5"])
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


def test_validation_is_one_shot_against_gallery_rows_when_there_are_some():
    emb = np.array([[1, 0], [0, 1], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9]], np.float32)
    y = np.array(["a", "b", "a", "b", "b"])
    gal = np.array([True, True, False, False, False])
    assert validation_recall(emb, y, gal) == pytest.approx(2 / 3)  # [0.6, 0.4] is nearer a's catalog image
    assert validation_recall(emb, y, np.zeros(5, bool)) == recall_at_1(emb, y)


def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=10, warmup_steps=2, min_scale=0.1)
    assert [round(f(i), 3) for i in (0, 1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.1) and f(6) == pytest.approx(0.55)


def test_stage2_unfreezes_only_the_top_blocks_and_frozen_batchnorm_stays_in_eval():
    m = build_model(
        {"backbone": "lite0", "input_size": 64, "head": {"name": "residual", "args": {}}}, pretrained=False
    )
    units = backbone_units(m)
    assert len(units) == 9  # stem, 7 stages, conv_head + bn2
    trainable = freeze_backbone(m, 2)
    assert {id(p) for p in trainable} == {id(p) for u in units[-2:] for p in u.parameters()}
    set_train_mode(m)
    assert m.head.training
    bn_modes = {
        id(mod): mod.training for mod in m.backbone.modules() if isinstance(mod, torch.nn.BatchNorm2d)
    }
    top = {id(mod) for u in units[-2:] for mod in u.modules() if isinstance(mod, torch.nn.BatchNorm2d)}
    assert all(bn_modes[i] for i in top) and not any(v for i, v in bn_modes.items() if i not in top)
    x = torch.randn(4, 3, 64, 64)
    stem_stats = units[0][1].running_mean.clone()  # bn1 of the frozen stem
    m(x).sum().backward()
    assert torch.equal(units[0][1].running_mean, stem_stats)
    assert all(p.grad is None for p in units[0].parameters()) and all(p.grad is not None for p in trainable)
    assert freeze_backbone(m, 0) == [] and not any(p.requires_grad for p in m.backbone.parameters())
    with pytest.raises(ConfigError, match="unfreeze_blocks 10: the backbone has 9 blocks"):
        freeze_backbone(m, 10)


def test_teacher_adapts_input_size_and_normalisation():
    torch.manual_seed(0)
    student = build_model({"backbone": "lite0", "input_size": 64}, pretrained=False)
    tm = build_model({"backbone": "lite0", "input_size": 96}, pretrained=False).eval()
    tm.preprocess = tm.preprocess.__class__(**{**tm.preprocess.to_dict(), "mean": (0.485, 0.456, 0.406)})
    teacher = Teacher(tm, student.preprocess)
    raw = torch.rand(2, 3, 64, 64)
    x = (raw - 0.5) / 0.5  # as the student sees it
    expect = tm(torch.nn.functional.interpolate((raw - torch.tensor(tm.preprocess.mean).view(1, 3, 1, 1)) /
                torch.tensor(tm.preprocess.std).view(1, 3, 1, 1), size=(96, 96), mode="bilinear", antialias=True))  # fmt: skip
    assert torch.allclose(teacher(x), expect, atol=1e-5)
    teacher.train()
    assert not teacher.model.training


def test_train_tool_two_stages_end_to_end(tmp_path, tiny_catalog):
    out = tmp_path / "run"
    r = _train(tiny_catalog, out, "stage1.epochs=2", "stage2.epochs=1", "stage2.unfreeze_blocks=2",
               "schedule.warmup_epochs=1", "distill={teacher: pretrained, weight: 0.5, mode: cosine}",
               "class_weights={power: 0.5}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_items"] == 3 and summary["val_items"] == 2  # split=train items only: 5 of the 8
    assert summary["epochs_run"] == 3 and summary["skipped"] == []
    log = json.loads((out / "log.json").read_text())
    assert [(row["stage"], row["epoch"]) for row in log] == [(0, 0), (1, 1), (1, 2), (2, 1)]
    assert all(row["distill_loss"] > -1e-6 and row["images_per_second"] > 0 for row in log[1:])
    assert (out / "log.csv").read_text().count("\n") == 5
    for line in ("stage 1 epoch 2/2: loss", "stage 2 epoch 1/1: loss"):
        assert line in r.stdout and " lr " in r.stdout and "val R@1" in r.stdout and "img/s" in r.stdout
    m = load_model(out / "model")
    assert m.config["head"]["name"] == "residual" and m.preprocess.input_size == 64
    best = (summary["best_stage"], summary["best_epoch"])
    assert best in [(row["stage"], row["epoch"]) for row in log]
    assert summary["best_val_recall_at_1"] == max(row["val_recall_at_1"] for row in log)
    r = _train(tiny_catalog, out, "stage1.epochs=2")
    assert r.returncode == 2 and "already holds a run" in r.stderr
    r = _train(tiny_catalog, tmp_path / "bad", "sampler.batch_size=64")
    assert r.returncode == 2 and "at most m x classes" in r.stderr
    r = _train(tiny_catalog, tmp_path / "bad2", "loss.name=ArcFace")
    assert r.returncode == 2 and "unknown loss 'ArcFace'; valid:" in r.stderr


def test_bad_images_and_rows_are_skipped_and_reported(tmp_path, tiny_catalog):
    import shutil

    cat = tmp_path / "cat"
    shutil.copytree(tiny_catalog.parent, cat)
    lines = (cat / tiny_catalog.name).read_text().splitlines()
    victim = lines[2].split(",")[0]
    data = (cat / victim).read_bytes()
    (cat / victim).write_bytes(data[: len(data) // 2])  # a truncated JPEG
    lines.append("no/such/file.jpg,item0000,train,query")
    lines.append("../escape.jpg,item0000,train,query")
    (cat / "m.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    r = _train(None, out, "stage1.epochs=1", "stage2.epochs=1", manifest=cat / "m.csv")
    assert r.returncode == 0, r.stderr
    skipped = {s["path"]: s["reason"] for s in json.loads((out / "summary.json").read_text())["skipped"]}
    assert any(victim in p and "cannot decode" in why for p, why in skipped.items()), skipped
    assert any("no/such/file.jpg" in p and "no such file" in why for p, why in skipped.items()), skipped
    assert any(p.endswith(":" + str(len(lines))) and "data root" in why for p, why in skipped.items()), (
        skipped
    )
    assert "input(s) skipped" in r.stderr


def test_two_ranks_train_like_one_process_with_the_same_global_batch(tmp_path, tiny_catalog):
    """torchrun with 2 gloo ranks x batch 2 must give the weights of 1 process x batch 4.

    The sampler's batch list is the same for any world size and rank r takes every world_size-th batch,
    so one step of 2 ranks sees the 4 photos of one step of 1 process; the loss (ArcFace) is a mean over
    the batch and DDP averages the ranks' gradients: the same gradient, up to float rounding. Stage 1 on
    cached features, clean copies only (augmented copies are drawn per rank), no BatchNorm training (the
    head has none; stage 2 is not comparable, see recognizer/train/parallel.py). SGD, because AdamW's
    per-element step turns the rounding of near-zero gradients into differences up to the learning rate
    (max 1.3e-3 here, while the gradients agree to 6e-8).
    """
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("stage1.epochs=2", "stage1.copies=0", "stage2.epochs=0", "sampler.m=2",
            "optimizer={name: SGD, args: {lr: 0.01}}")  # fmt: skip
    r = _train(tiny_catalog, one, *args, "sampler.batch_size=4")
    assert r.returncode == 0, r.stderr
    r = _train(tiny_catalog, two, *args, "sampler.batch_size=2", torchrun=True)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_weights_equal"] is True
    a = torch.load(one / "checkpoint.pt", map_location="cpu", weights_only=True)
    b = torch.load(two / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert a["model"].keys() == b["model"].keys() and a["loss"].keys() == b["loss"].keys()
    pairs = [(k, a[part][k], b[part][k]) for part in ("model", "loss") for k in a[part]]
    diff = max(float((x.double() - y.double()).abs().max()) for _, x, y in pairs if x.is_floating_point())
    print(f"DDP 2 x batch 2 vs 1 x batch 4: max abs weight difference {diff:.3g}")
    for k, x, y in pairs:
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4), k
    assert float(a["model"]["head.fc.weight"].abs().max()) > 1e-3  # the head trained (it starts at zero)
    la, lb = json.loads((one / "log.json").read_text()), json.loads((two / "log.json").read_text())
    assert [row["val_recall_at_1"] for row in la] == [row["val_recall_at_1"] for row in lb]
    assert np.allclose([row["loss"] for row in la[1:]], [row["loss"] for row in lb[1:]], rtol=1e-4)


def test_torchrun_stage2_streamed_on_gloo(tmp_path, tiny_catalog):
    """The path the weight comparison above cannot cover (BatchNorm trains): streamed, augmented images per
    rank, unfrozen backbone blocks under DDP, rank 0's BatchNorm statistics broadcast; ranks stay in step."""
    out = tmp_path / "ddp"
    r = _train(
        tiny_catalog, out, "stage1.epochs=0", "stage2.epochs=1", "stage2.unfreeze_blocks=1", torchrun=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_weights_equal"] is True
    log = json.loads((out / "log.json").read_text())
    assert [(row["stage"], row["epoch"]) for row in log] == [(0, 0), (2, 1)]
    assert load_model(out / "model").preprocess.input_size == 64


def test_kill_9_during_training_then_resume_gives_the_uninterrupted_result(tmp_path, tiny_catalog):
    """Checkpoints are one file written atomically: after a kill at any moment the run resumes from the last
    completed epoch and ends with exactly the weights of a run that was never interrupted."""
    import os
    import signal
    import time

    runs = int(os.environ.get("CRASH_RUNS_TRAIN", "3"))
    # enough epochs that every kill lands inside the run (each run gets at least one checkpoint further)
    epochs = max(30, 3 * runs)
    args = (f"stage1.epochs={epochs}", "stage2.epochs=2", "stage2.unfreeze_blocks=1")
    ref = tmp_path / "ref"
    assert _train(tiny_catalog, ref, *args).returncode == 0
    out = tmp_path / "crashy"
    ckpt = out / "checkpoint.pt"

    def stamp() -> tuple[int, int] | None:  # which checkpoint file is there now
        return (ckpt.stat().st_ino, ckpt.stat().st_mtime_ns) if ckpt.exists() else None

    rng = np.random.default_rng(0)
    epochs_at_kill = []
    for _ in range(runs):
        cmd = [
            sys.executable,
            "tools/train.py",
            "--manifest",
            str(tiny_catalog),
            "--out",
            str(out),
            *TINY,
            *args,
        ]
        before = stamp()
        if before is not None:
            cmd.append("--resume")
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        # wait until this process has committed a checkpoint of its own, then kill it at a random later
        # moment: inside an epoch, a validation or a checkpoint write
        while p.poll() is None and time.time() < deadline:
            try:
                if stamp() not in (None, before):
                    break
            except FileNotFoundError:  # between the rename's unlink and link on some filesystems
                pass
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.4)))
        assert p.poll() is None, "the run ended before its kill: raise the epoch count"
        p.send_signal(signal.SIGKILL)
        p.wait()
        ck = torch.load(ckpt, map_location="cpu", weights_only=True)
        state = json.loads(ck["state"])
        epochs_at_kill.append((ck["stage"], state["epoch"]))
        assert state["log"][0]["stage"] == 0 and {"model", "opt", "best_model"} <= set(ck)
    r = _train(tiny_catalog, out, *args, resume=ckpt.exists())
    assert r.returncode == 0, r.stderr
    assert all(a < b for a, b in zip(epochs_at_kill, epochs_at_kill[1:], strict=False))  # every run moved on
    print(f"kill -9 during training: {runs} kills, checkpoint (stage, epoch) at each: {epochs_at_kill}")
    a, b = load_model(ref / "model"), load_model(out / "model")
    assert a.weights_sha256() == b.weights_sha256()
    la, lb = json.loads((ref / "log.json").read_text()), json.loads((out / "log.json").read_text())
    assert [row["val_recall_at_1"] for row in la] == [row["val_recall_at_1"] for row in lb]
    r = _train(tiny_catalog, out, "stage1.epochs=31", resume=True)
    assert r.returncode == 2 and "written by another config" in r.stderr


def test_every_shipped_config_loads_and_base_chains_merge(tmp_path):
    from recognizer.train.top_trainer import load_top_config

    for p in sorted((ROOT / "configs").glob("*.yaml")):
        if p.name.startswith("items_"):  # cached-map recipes (tools/train.py --curve): TopTrainConfig keys
            assert load_top_config(str(p)).input_size > 0, p
            continue
        cfg = load_config(str(p))
        assert cfg["model"]["backbone"] in ("lite0", "lite1", "lite2"), p
    ft = load_config(str(ROOT / "configs" / "grocery_finetune.yaml"))
    assert ft["stage2"]["epochs"] == 3 and ft["augment"]["background"] == 0.0 and ft["miner"]  # from its base
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="base configs form a loop"):
        load_config(str(a))
    b.write_text("stage1: {epochs: 2, bogus: 1}\n")
    with pytest.raises(ConfigError, match="unknown config key 'stage1.bogus'"):
        load_config(str(a))


def test_gpu_scale_recipe_runs_on_cpu_in_miniature(tmp_path, tiny_catalog):
    """configs/gpu_10k.yaml end to end at toy size: streamed stage 1, SubCenterArcFace, class weights,
    distillation from the pretrained model, stage 2 (AMP is off on CPU)."""
    out = tmp_path / "gpu"
    r = _train(tiny_catalog, out, "model.backbone=lite0", "stage1.epochs=1", "stage2.epochs=1", "sampler.per_class=2",
               "data.val_fraction=0.4", config="configs/gpu_10k.yaml")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    log = json.loads((out / "log.json").read_text())
    assert [row["stage"] for row in log] == [0, 1, 2] and all(row["distill_loss"] > -1e-6 for row in log[1:])
    assert not (out / "cache").exists()  # streamed, not cached
