from __future__ import annotations

import ast
import inspect
import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECOGNIZER_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _export_cache(tmp_path_factory):
    """The camera tool's ONNX exports (made once per model) go to a folder of this run, never the user's cache."""
    old = os.environ.get("RECOGNIZER_CACHE")
    os.environ["RECOGNIZER_CACHE"] = str(tmp_path_factory.mktemp("recognizer_cache"))
    yield
    if old is None:
        os.environ.pop("RECOGNIZER_CACHE", None)
    else:
        os.environ["RECOGNIZER_CACHE"] = old


def in_ci() -> bool:
    """True under ``CI=true`` (set by CI services): real data must be there, a missing path fails."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data. When it is absent the test is skipped with the reason, or,
    under ``CI=true``, fails naming the path (CI must never pass by skipping the real-data tests)."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        if in_ci():
            pytest.fail(f"real data not available at {p} (CI=true: real-data tests may not skip)", pytrace=False)
        pytest.skip(f"real data not available at {p}")
    return p


def uses_real_data(fn) -> bool:
    """Does ``fn``'s source call ``shared_path(...)`` or read ``SHARED_DATA``? (Names in strings or
    comments do not count, nor does merely referring to ``shared_path`` without calling it.)"""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "SHARED_DATA":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "SHARED_DATA":
            return True
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name == "shared_path":
                return True
    return False


def _fixture_functions(item: pytest.Item) -> list:
    """The functions of the fixtures ``item`` requests (best effort: pytest's fixture info is internal)."""
    info = getattr(item, "_fixtureinfo", None)
    out = []
    for defs in getattr(info, "name2fixturedefs", {}).values():
        out += [getattr(d, "func", None) for d in defs]
    return [f for f in out if f is not None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that reads ../shared/data (its function, or one of its fixtures, calls
    ``shared_path`` or uses ``SHARED_DATA``) with ``real_data``, so ``-m real_data`` selects them all;
    tests marked explicitly keep their marker."""
    for item in items:
        if item.get_closest_marker("real_data") is not None:
            continue
        fn = getattr(item, "function", None)
        if fn is None:
            continue
        if uses_real_data(fn) or any(uses_real_data(f) for f in _fixture_functions(item)):
            item.add_marker(pytest.mark.real_data)


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory) -> Path:
    """A small synthetic catalog (8 items x 1 catalog + 2 wild photos), generated once per session."""
    from recognizer.data.synthetic import generate_catalog

    return generate_catalog(tmp_path_factory.mktemp("catalog"), n_items=8, n_wild=2, seed=3, size=96)


@pytest.fixture(scope="session")
def tiny_model():
    """lite0 architecture at 64 px with random weights: fast, for plumbing tests."""
    import torch

    from recognizer.models.model import build_model

    torch.manual_seed(0)
    return build_model({"backbone": "lite0", "input_size": 64}, pretrained=False).eval()


def tiny_exportable_model(seed: int):
    """timm's test EfficientNet at 64 px (exports in ~4 s), its BatchNorm statistics measured on real
    images: random-init statistics make activations no trained model has, which int8 cannot hold."""
    import torch

    from recognizer.deploy import sample_images
    from recognizer.models.model import build_model

    torch.manual_seed(seed)
    m = build_model({"backbone": "timm/test_efficientnet", "input_size": 64}, pretrained=False)
    imgs, _ = sample_images(m.preprocess, n=16, seed=5)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = None  # cumulative average over the batch
            mod.reset_running_stats()
    m.train()
    with torch.no_grad():
        m(torch.from_numpy(imgs))
    return m.eval()
