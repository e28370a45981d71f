"""The identity curve's pieces: its points, the recipe config, and training sets assembled from cached map sets."""

import numpy as np
import pytest

from recognizer.train.config import ConfigError
from recognizer.train.curve import curve_points, training_set
from recognizer.train.map_data import MapSet
from recognizer.train.top_trainer import load_top_config


def test_curve_points_sizes_and_shares():
    pts = curve_points((100, 1000), shares=True, synthetic_only=True)
    assert pts["56 real"] == {"synthetic": False}
    assert pts["100 (56 real + 44 syn)"] == {"n_identities": 100}
    assert pts["1,000, real share 0.5"]["shares"]["synthetic"] == 0.5
    assert pts["1,000 syn only"]["real"] is False


def test_recipe_config_loads_and_refuses_unknown_keys(tmp_path):
    cfg = load_top_config("configs/items_10k.yaml")
    assert cfg.loss["name"] == "ArcFaceLoss" and cfg.input_size == 160 and cfg.shares["synthetic"] == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        load_top_config(str(bad))


def _set(items, source, aug=""):
    n = len(items)
    return MapSet(np.zeros((n, 4), np.float16), np.array(items), np.array([source] * n),
                  np.array([f"{i}/{k}{aug}" for k, i in enumerate(items)]))


def test_training_set_counts_identities(tmp_path):
    _set(["g1", "g1", "c1"], "grocery").save(tmp_path / "pooled_train_real_clean.npz")
    _set(["g1", "g1", "c1"], "grocery", "|aug").save(tmp_path / "pooled_train_real_aug_bgoff.npz")
    _set([f"syn{j:05d}" for j in range(5) for _ in range(3)], "synthetic").save(tmp_path / "pooled_train_syn.npz")
    ts = training_set(tmp_path, 4, background=False, pooled=True)
    assert len(set(ts.items.tolist())) == 4 and (ts.sources == "synthetic").sum() == 6
    only_real = training_set(tmp_path, None, background=False, synthetic=False, pooled=True)
    assert set(only_real.items.tolist()) == {"g1", "c1"}
