"""Static checks: no unpickling of untrusted files, no shell commands built from strings."""

from __future__ import annotations

import re

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
