"""The shipped ``items`` model: registered, loaded from package data (safetensors), selectable as items@160."""

from importlib import resources

import torch

from recognizer.models.backbones import ITEMS_WEIGHTS, items_top_state, list_backbones
from recognizer.models.model import load_model


def test_items_is_registered_and_shipped_as_safetensors():
    assert "items" in list_backbones()
    ref = resources.files("recognizer.models.weights") / ITEMS_WEIGHTS
    assert ref.is_file()
    assert ref.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    assert len(ref.read_bytes()) < 12 * 2**20


def test_items_model_differs_from_lite0_only_in_its_shipped_tensors():
    items, lite0 = load_model("items"), load_model("lite0@160")
    assert items.preprocess.input_size == 160 and items.config["backbone"] == "items"
    assert items.fingerprint != lite0.fingerprint
    shipped = items_top_state()
    own, base = items.backbone.state_dict(), lite0.backbone.state_dict()
    changed = {k for k in own if k not in base or not torch.equal(own[k], base[k])}
    assert changed and changed <= {f"body.{k}" for k in shipped} | {"proj.weight"}
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        e = items(x)
    assert e.shape == (1, items.embedding_dim) and abs(float(e.norm()) - 1) < 1e-4


def test_items_at_size():
    assert load_model("items@128").preprocess.input_size == 128
