"""No unpickling of untrusted files (source checks and a planted payload), no shell commands built from strings."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

SOURCES = sorted([*(ROOT / "recognizer").rglob("*.py"), *(ROOT / "tools").rglob("*.py")])


def test_no_pickle_and_every_torch_load_is_weights_only():
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(
            r"^\s*import pickle|^\s*from pickle|cloudpickle|dill\b|joblib\.load", text, re.M
        ), path
        assert "allow_pickle=True" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:  # every call on one line, with weights_only=True on it
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_no_shell_commands():
    for path in SOURCES:
        text = path.read_text()
        assert "shell=True" not in text and "os.system(" not in text and "os.popen(" not in text, path


def test_configs_and_manifests_are_parsed_safely():
    for path in SOURCES:
        text = path.read_text()
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text, path  # safe_load only
        assert "eval(" not in re.sub(r"\.eval\(|_eval\(|model\.eval|literal_eval\(", "", text), path


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings(
    "ignore:Detected pickle protocol"
)  # torch notes the foreign protocol, then refuses
def test_a_planted_pickle_payload_in_a_checkpoint_or_weights_never_runs(tmp_path):
    import pickle

    import torch

    from recognizer.models.model import ModelLoadError, load_model
    from recognizer.train import ConfigError, load_checkpoint

    marker = tmp_path / "pwned"
    ck = tmp_path / "checkpoint.pt"
    torch.save(
        {"config_hash": "x", "model": _Payload(str(marker))}, ck, pickle_protocol=pickle.HIGHEST_PROTOCOL
    )
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_checkpoint(ck, {})
    assert not marker.exists()
    # a model folder whose weights file is a pickle, not safetensors: refused, nothing runs
    from recognizer.models.model import build_model

    m = build_model({"backbone": "lite0", "input_size": 64}, pretrained=False)
    m.save(tmp_path / "model")
    weights = next(p for p in (tmp_path / "model").iterdir() if p.suffix == ".safetensors")
    with open(weights, "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path / "model"))
    assert not marker.exists()
