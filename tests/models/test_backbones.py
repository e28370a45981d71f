from __future__ import annotations

import os

import pytest
import torch

from recognizer.models.backbones import (
    BackboneUnavailableError,
    UnknownBackboneError,
    create_backbone,
    list_backbones,
    resolve_name,
)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point the torch-hub and Hugging Face caches at empty folders."""
    import huggingface_hub.constants as hf_constants

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    yield tmp_path
    torch.hub.set_dir(old)


def test_registry_names_and_aliases():
    assert list_backbones() == ["lite0", "lite1", "lite2", "items"]
    assert [resolve_name(a) for a in ("sm", "md", "lg")] == ["lite0", "lite1", "lite2"]
    assert resolve_name("resnet18") == "timm/resnet18"
    assert resolve_name("torchvision/resnet18") == "torchvision/resnet18"
    assert resolve_name("mobilenet_v3_small") == "torchvision/mobilenet_v3_small"  # not a timm name


def test_unknown_name_lists_the_choices():
    with pytest.raises(
        UnknownBackboneError,
        match=r"unknown backbone 'litex'; choose one of lite0 \(sm\), lite1 \(md\), lite2 \(lg\)",
    ):
        create_backbone("litex")
    with pytest.raises(UnknownBackboneError, match="timm has no model"):
        create_backbone("timm/not_a_model")
    with pytest.raises(UnknownBackboneError, match="torchvision has no classification model"):
        create_backbone("torchvision/not_a_model")


@pytest.mark.parametrize("name, dim, size", [("lite0", 1280, 224), ("md", 1280, 240), ("lite2", 1280, 260)])
def test_lite_backbones_load_offline(name, dim, size):
    bb = create_backbone(name).eval()
    assert bb.feat_dim == dim
    assert bb.preprocess.input_size == size
    assert bb.preprocess.mean == bb.preprocess.std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        f = bb.forward_features(torch.zeros(1, 3, 64, 64))
    assert f.shape[:2] == (1, dim) and f.ndim == 4


def _top5(bb, image) -> list[int]:
    x = bb.preprocess.to_tensor(image)[None]
    with torch.no_grad():
        return bb.classify(bb.forward_features(x))[0].topk(5).indices.tolist()


def test_lite0_weights_really_load_imagenet_sanity():
    """chelsea() is a tabby cat (ImageNet 281-285 are the domestic cats); coffee() is an espresso (967)."""
    import skimage.data

    bb = create_backbone("lite0", classifier=True).eval()
    cat_top5 = _top5(bb, skimage.data.chelsea())
    assert set(cat_top5) & {281, 282, 283, 284, 285}, cat_top5
    assert 967 in _top5(bb, skimage.data.coffee())
    random_bb = create_backbone("lite0", pretrained=False, classifier=True).eval()
    assert not set(_top5(random_bb, skimage.data.chelsea())[:1]) & {281, 282, 283, 284, 285}


def test_classifier_is_dropped_by_default():
    bb = create_backbone("lite0", pretrained=False)
    assert not bb.has_classifier
    assert not any(k.startswith("body.classifier") and v.numel() > 0 for k, v in bb.state_dict().items())


def test_timm_model_without_cached_weights_fails_fast(empty_caches):
    with pytest.raises(
        BackboneUnavailableError,
        match=r"timm/mobilenetv3_small_050: pretrained weights are not in the local cache",
    ):
        create_backbone("timm/mobilenetv3_small_050")
    with pytest.raises(
        BackboneUnavailableError,
        match="torchvision/mobilenet_v3_small: pretrained weights are not in the local cache",
    ):
        create_backbone("mobilenet_v3_small")


def test_timm_model_loads_from_torch_hub_cache(empty_caches):
    import timm

    ref = timm.create_model("mobilenetv3_small_050", pretrained=False)
    url = ref.pretrained_cfg["url"]
    ckpt = empty_caches / "torch_hub" / "checkpoints" / os.path.basename(url)
    ckpt.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpt)
    bb = create_backbone("timm/mobilenetv3_small_050")
    w = dict(bb.body.named_parameters())["conv_stem.weight"]
    assert torch.equal(w, ref.conv_stem.weight)


def test_timm_model_loads_from_hf_cache(empty_caches):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("mobilenetv3_small_050", pretrained=False)
    hub_id = ref.pretrained_cfg["hf_hub_id"]
    repo = empty_caches / "hf_hub" / ("models--" + hub_id.replace("/", "--"))
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(snap / "model.safetensors"))
    bb = create_backbone("mobilenetv3_small_050")
    assert bb.name == "timm/mobilenetv3_small_050"
    assert torch.equal(dict(bb.body.named_parameters())["conv_stem.weight"], ref.conv_stem.weight)


def test_torchvision_model_loads_from_torch_hub_cache(empty_caches):
    import torchvision

    ref = torchvision.models.mobilenet_v3_small()
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    ckpt = empty_caches / "torch_hub" / "checkpoints" / os.path.basename(url)
    ckpt.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpt)
    bb = create_backbone("torchvision/mobilenet_v3_small", classifier=True).eval()
    assert bb.feat_dim == 576
    assert bb.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(bb.classify(bb.forward_features(x)), ref.eval()(x), atol=1e-5)


def test_torchvision_resnet_feature_map():
    bb = create_backbone("torchvision/resnet18", pretrained=False)
    with torch.no_grad():
        assert bb.forward_features(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)
