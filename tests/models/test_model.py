from __future__ import annotations

import json

import pytest
import torch

from recognizer.models.model import GeM, ModelLoadError, build_model, load_model, load_model_dir


def test_gem_interpolates_between_avg_and_max():
    x = torch.rand(2, 3, 4, 4) + 0.1
    assert torch.allclose(GeM(p=1.0)(x), x.mean(dim=(-2, -1)), atol=1e-5)
    big = GeM(p=60.0)(x)
    assert torch.allclose(big, x.amax(dim=(-2, -1)), rtol=0.05)


def test_embeddings_are_unit_length_with_head_dim():
    torch.manual_seed(0)
    m = build_model(
        {
            "backbone": "lite0",
            "pooling": {"name": "gem", "args": {"p": 3.0}},
            "head": {"name": "linear", "args": {"dim": 64, "bn": True}},
            "input_size": 64,
        },
        pretrained=False,
    ).eval()
    assert m.embedding_dim == 64 and m.preprocess.input_size == 64
    with torch.no_grad():
        e = m(torch.randn(3, 3, 64, 64))
    assert e.shape == (3, 64)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)


def test_bad_config_names_the_key_and_choices():
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['pool'\]"):
        build_model({"backbone": "lite0", "pool": "avg"}, pretrained=False)
    with pytest.raises(ValueError, match="unknown pooling 'max'; choose one of avg, gem"):
        build_model({"backbone": "lite0", "pooling": "max"}, pretrained=False)
    with pytest.raises(ValueError, match="unknown head 'mlp'; choose one of linear"):
        build_model({"backbone": "lite0", "head": {"name": "mlp"}}, pretrained=False)


def test_save_load_round_trip_without_pickle(tmp_path, tiny_model):
    torch.manual_seed(1)
    m = build_model(
        {"backbone": "lite0", "head": {"name": "linear", "args": {"dim": 32}}, "input_size": 64},
        pretrained=False,
    ).eval()
    folder = m.save(tmp_path / "ckpt")
    desc = json.loads((folder / "model.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted(["model.json", desc["weights_file"]])
    assert desc["embedding_dim"] == 32 and desc["preprocess"]["input_size"] == 64
    assert desc["fingerprint"] == m.fingerprint
    loaded = load_model(folder)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    assert loaded.fingerprint == m.fingerprint
    assert tiny_model.fingerprint != m.fingerprint


def test_fingerprint_changes_with_weights_and_preprocessing():
    torch.manual_seed(0)
    m = build_model({"backbone": "lite0", "input_size": 64}, pretrained=False)
    fp = m.fingerprint
    m.preprocess = m.preprocess.with_size(96)
    assert m.describe()["fingerprint"] != fp
    m.preprocess = m.preprocess.with_size(64)
    assert m.describe()["fingerprint"] == fp
    with torch.no_grad():
        next(m.parameters()).add_(1e-3)
    assert m.describe()["fingerprint"] != fp


def test_corrupt_or_mismatched_checkpoints_are_refused(tmp_path, tiny_model):
    folder = tiny_model.save(tmp_path / "ckpt")
    w = folder / json.loads((folder / "model.json").read_text())["weights_file"]
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF  # flip a weight byte
    w.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="weights hash does not match"):
        load_model_dir(folder)
    w.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        load_model_dir(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not a valid model description"):
        load_model_dir(folder)
    with pytest.raises(ModelLoadError, match="missing"):
        load_model_dir(tmp_path / "nothing_here")


def test_resaving_replaces_weights_and_a_torn_save_still_loads(tmp_path, tiny_model):
    """Weights are named by their hash and the JSON is the commit point (as after a crash mid-save)."""
    folder = tiny_model.save(tmp_path / "ckpt")
    first = json.loads((folder / "model.json").read_text())["weights_file"]
    with torch.no_grad():
        next(tiny_model.parameters()).add_(0.01)
    tiny_model.train().eval()  # drop the cached fingerprint
    # A save that died after writing the new weights but before the JSON: the old pair still loads.
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in tiny_model.state_dict().items()},
        str(folder / "model.0000.safetensors"),
    )
    assert load_model_dir(folder).weights_sha256() != tiny_model.weights_sha256()
    tiny_model.save(folder)
    second = json.loads((folder / "model.json").read_text())["weights_file"]
    assert second != first and sorted(p.name for p in folder.iterdir()) == sorted(["model.json", second])
    assert load_model_dir(folder).weights_sha256() == tiny_model.weights_sha256()
    desc = json.loads((folder / "model.json").read_text())
    desc["weights_file"] = "../escape.safetensors"
    (folder / "model.json").write_text(json.dumps(desc))
    with pytest.raises(ModelLoadError, match="must be a .safetensors file in the folder"):
        load_model_dir(folder)


def test_off_the_shelf_by_name():
    m = load_model("lite0")
    assert m.config == {
        "backbone": "lite0",
        "pooling": {"name": "avg", "args": {}},
        "head": None,
        "input_size": 224,
    }
    assert m.embedding_dim == 1280


def test_centering_residual_head_subtracts_its_mean_and_round_trips(tmp_path):
    torch.manual_seed(0)
    m = build_model(
        {"backbone": "lite0", "head": {"name": "residual", "args": {"center": True}}, "input_size": 64},
        pretrained=False,
    ).eval()
    feats = torch.randn(4, m.backbone.feat_dim)
    assert torch.allclose(
        m.embed_features(feats), torch.nn.functional.normalize(feats, dim=1)
    )  # mean 0 at start
    with torch.no_grad():
        m.head.mean.copy_(feats.mean(0))
    centred = torch.nn.functional.normalize(feats - feats.mean(0), dim=1)
    assert torch.allclose(m.embed_features(feats), centred, atol=1e-6)
    loaded = load_model(m.save(tmp_path / "c"))
    assert (
        torch.allclose(loaded.embed_features(feats), centred, atol=1e-6)
        and loaded.fingerprint == m.fingerprint
    )
