from __future__ import annotations

import numpy as np
import pytest

from recognizer.matching.options import QueryOptions, pool_view_scores
from recognizer.models.embed import pool_view_embeddings


def test_views_by_hand():
    img = np.zeros((100, 200, 3), np.uint8)
    assert [v.shape for v in QueryOptions().views(img)] == [(100, 200, 3)]
    assert [v.shape for v in QueryOptions(aspect="crop").views(img)] == [(100, 100, 3)]
    assert [v.shape for v in QueryOptions(aspect="crop", zoom=0.6).views(img)] == [(60, 60, 3)]
    assert [v.shape for v in QueryOptions(zoom=0.5).views(img)] == [(50, 100, 3)]
    grid = QueryOptions(multicrop="grid").views(img)
    assert len(grid) == 6 and grid[0].shape == (100, 200, 3) and grid[2].shape == (60, 120, 3)
    img[40:60, 90:110] = 255  # the centre crop is centred
    c = QueryOptions(aspect="crop", zoom=0.2).views(img)[0]
    assert c.shape == (20, 20, 3) and c.min() == 255


def test_bad_options_name_the_choices():
    with pytest.raises(ValueError, match="aspect 'stretch' is not one of squash, crop"):
        QueryOptions(aspect="stretch")
    with pytest.raises(ValueError, match="zoom must be in"):
        QueryOptions(zoom=0.0)
    with pytest.raises(ValueError, match="pool 'median'"):
        QueryOptions(pool="median")


def test_pooling():
    emb = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    pooled = pool_view_embeddings(emb, [2, 1])
    np.testing.assert_allclose(pooled, [[0.7071068, 0.7071068], [1, 0]], atol=1e-6)
    sc = np.array([[0.1, 0.9], [0.5, 0.2], [0.3, 0.3]], np.float32)
    np.testing.assert_allclose(pool_view_scores(sc, [2, 1]), [[0.5, 0.9], [0.3, 0.3]])
