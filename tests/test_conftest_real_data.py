"""The real-data guard of tests/conftest.py: skip without the data, fail under CI=true, mark real-data tests."""

from __future__ import annotations

import os
import subprocess
import sys

import conftest
import pytest
from conftest import ROOT


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """Point the shared-data folder at a path that does not exist."""
    missing = tmp_path / "no-shared-data"
    monkeypatch.setattr(conftest, "SHARED_DATA", missing)
    return missing


def test_missing_real_data_skips_outside_ci(no_data, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    helper = conftest.shared_path
    with pytest.raises(pytest.skip.Exception, match="real data not available at .*no-shared-data/grocery"):
        helper("grocery")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        helper("grocery")


@pytest.mark.parametrize("value", ["true", "True", "1"])
def test_missing_real_data_fails_under_ci(no_data, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    helper = conftest.shared_path
    with pytest.raises(pytest.fail.Exception) as e:
        helper("grocery", "train.txt")
    assert str(no_data / "grocery" / "train.txt") in str(e.value)


def test_present_real_data_is_returned(tmp_path, monkeypatch):
    (tmp_path / "coil").mkdir()
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.setenv("CI", "true")
    helper = conftest.shared_path
    assert helper("coil") == tmp_path / "coil"


# samples for the detector (module level: a test's own source would hold them, and be marked)
def _reads():
    return shared_path("grocery")  # noqa: F821 (never run: only its source is inspected)


def _reads_constant():
    return SHARED_DATA / "coil"  # noqa: F821


def _mentions():
    """shared_path( and SHARED_DATA in a docstring do not count."""
    return "SHARED_DATA", conftest.shared_path


def test_detector_finds_calls_not_mentions():
    assert conftest.uses_real_data(_reads) and conftest.uses_real_data(_reads_constant)
    assert not conftest.uses_real_data(_mentions)


def _collect(*args: str) -> set[str]:
    env = {**os.environ, "RECOGNIZER_SHARED_DATA": "/nonexistent", "CI": "true"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--continue-on-collection-errors", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    ids = {ln.strip() for ln in r.stdout.splitlines() if "::" in ln}
    assert ids, r.stdout[-2000:] + r.stderr[-2000:]
    return ids


def test_real_data_marker_selects_the_real_data_tests():
    """``-m real_data`` selects every test calling shared_path (marked centrally by conftest.py) and nothing else."""
    files = ["tests/test_enroll.py", "tests/data/test_datasets.py"]
    selected = _collect("-m", "real_data", *files)
    rest = _collect("-m", "not real_data", *files)
    real = {
        "tests/test_enroll.py::test_grocery_unseen_items_enroll_then_match_within_candidates",
        "tests/data/test_datasets.py::test_grocery_split_is_coarse_class_disjoint",
        "tests/data/test_datasets.py::test_coil_split_is_object_disjoint",
        "tests/data/test_datasets.py::test_combined_training_manifest_is_current",
    }
    assert real <= selected, sorted(selected)
    assert sum("test_committed_manifests_are_current" in i for i in selected) == 6  # every parametrization
    assert not selected & rest
    assert "tests/data/test_datasets.py::test_manifests_folder_holds_no_images" in rest  # no real data: unmarked
    assert "tests/test_enroll.py::test_enroll_and_match_tools_end_to_end" in rest
