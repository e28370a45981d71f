"""The trunk cache: trunk + top block == the whole model; cached-map training and scoring run end to end."""

import numpy as np
import pytest
import torch

from recognizer.models.model import build_model
from recognizer.train.map_data import MapSet
from recognizer.train.map_protocols import Protocol, compare_models, curve_markdown
from recognizer.train.top_trainer import HeadNet, TopTrainConfig, top_state, train_top_block
from recognizer.train.trunk_cache import TopBlock, Trunk, TrunkRunner, embed_maps


@pytest.fixture(scope="module")
def model():
    return build_model({"backbone": "lite0", "input_size": 64, "head": None}).eval()


def test_trunk_then_top_equals_whole_model(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        split = TopBlock(model).eval()(Trunk(model)(x))
    assert torch.allclose(whole, split, atol=1e-5)


def test_torch_runner_gives_float_maps(model):
    runner = TrunkRunner(Trunk(model), 64, backend="torch")
    out = runner(torch.randn(2, 3, 64, 64))
    assert out.shape[:2] == (2, 192) and out.dtype == np.float32


def test_top_state_names_the_body_tensors(model):
    st = top_state(TopBlock(model))
    assert st and all(k.startswith(("blocks.6.", "conv_head.", "bn2.")) for k in st)
    assert all(v.dtype == torch.float16 for k, v in st.items() if not k.endswith("num_batches_tracked"))


def _toy(n_items=8, per=3, dim=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n_items * per, dim) if dim else (n_items * per, 192, 2, 2)
    maps = rng.standard_normal(shape).astype(np.float16)
    items = np.repeat([f"i{k}" for k in range(n_items)], per)
    src = np.where(np.arange(len(items)) < per * 2, "real", "synthetic")
    keys = np.array([f"k{j}|whole" for j in range(len(items))])
    return MapSet(maps, items, src, keys)


def test_train_top_block_and_compare_on_maps():
    data = _toy()
    cfg = TopTrainConfig(epochs=1, batch_size=8, m=2, input_size=64)
    top, stats = train_top_block(data, cfg, log=lambda s: None)
    assert stats["identities"] == 8 and stats["loss_weight_mb"] > 0 and stats["peak_rss_mb"] > 0
    assert embed_maps(top, data.maps[:3]).shape == (3, 1280)
    p = Protocol("toy", list(data.keys[::3]), list(data.items[::3]), list(data.keys[::3]), list(data.items[::3]))
    base = TopBlock(build_model({"backbone": "lite0", "input_size": 64, "head": None}))
    res = compare_models({"base": base, "trained": top}, [data], [p], "base")
    assert res["toy"]["base"]["queries"] == 8 and 0.5 <= res["toy"]["base"]["top1"] <= 1.0
    assert "mcnemar_p" in res["toy"]["trained"]["vs_baseline"]
    assert "| trained |" in curve_markdown(res, "base")


def test_head_mode_on_pooled_features_starts_at_identity():
    data = _toy(dim=16)
    net = HeadNet(16)
    x = torch.from_numpy(data.maps[:4]).float()
    assert torch.allclose(net(x), torch.nn.functional.normalize(x, dim=-1))
    trained, stats = train_top_block(data, TopTrainConfig(epochs=1, batch_size=8, m=2), log=lambda s: None)
    assert isinstance(trained, HeadNet) and stats["maps"] == len(data)
