from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECOGNIZER_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data; skips the test (with the reason) when the data is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available at {p}")
    return p


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
