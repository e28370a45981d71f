from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from recognizer.data.manifest import load_manifest
from recognizer.models.embed import embed_arrays, embed_manifest, embed_paths


def test_bad_files_are_skipped_and_reported(tmp_path, tiny_model):
    good = []
    for i in range(5):
        p = tmp_path / f"good{i}.png"
        Image.fromarray((np.random.default_rng(i).random((40, 50, 3)) * 255).astype(np.uint8)).save(p)
        good.append(p)
    (tmp_path / "bad.jpg").write_text("not an image")
    paths = [good[0], tmp_path / "missing.jpg", good[1], tmp_path / "bad.jpg", *good[2:]]
    res = embed_paths(tiny_model, paths, batch_size=2, num_workers=0)
    assert res.embeddings.shape == (5, tiny_model.embedding_dim)
    assert res.indices.tolist() == [0, 2, 4, 5, 6]
    assert [i for i, _ in res.failures] == [1, 3]
    assert "missing.jpg: no such file" in res.failures[0][1]
    assert "bad.jpg: not a recognised image format" in res.failures[1][1]
    np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-5)


def test_same_result_with_workers_batches_and_arrays(tiny_catalog, tiny_model):
    m = load_manifest(tiny_catalog)
    rows = m.rows[:6]
    a, _ = embed_manifest(tiny_model, m, rows, batch_size=4, num_workers=0)
    b, _ = embed_manifest(tiny_model, m, rows, batch_size=3, num_workers=2)
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    from recognizer.data.imageio import load_image

    c = embed_arrays(tiny_model, [load_image(m.resolve(r)) for r in rows])
    np.testing.assert_allclose(a.embeddings, c, atol=1e-5)


def test_bbox_crops_before_embedding(tmp_path, tiny_model):
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, 64:] = 255
    p = tmp_path / "two.png"
    Image.fromarray(img).save(p)
    (tmp_path / "m.csv").write_text(
        "path,item_id,bbox\ntwo.png,a,0 0 64 64\ntwo.png,b,64 0 64 64\ntwo.png,c,500 500 5 5\n"
    )
    m = load_manifest(tmp_path / "m.csv")
    res, rows = embed_manifest(tiny_model, m, num_workers=0)
    assert res.indices.tolist() == [0, 1]
    assert not np.allclose(res.embeddings[0], res.embeddings[1])
    assert "outside the 128x64 image" in res.failures[0][1]
    assert rows[res.failures[0][0]].line == 4  # a failure's index leads back to its manifest line


def test_inference_does_not_track_gradients(tiny_model):
    out = embed_arrays(tiny_model, [np.zeros((10, 10, 3), np.uint8)])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert torch.is_grad_enabled()


def test_embedding_never_changes_the_weights():
    """A model left in train mode must not update BatchNorm statistics while embedding."""
    import torch

    from recognizer.models.model import build_model

    torch.manual_seed(0)
    m = build_model({"backbone": "lite0", "input_size": 64}, pretrained=False)
    m.train()
    fp = m.describe()["fingerprint"]
    a = embed_arrays(m, [np.full((20, 20, 3), 200, np.uint8), np.zeros((20, 20, 3), np.uint8)])
    b = embed_arrays(m, [np.full((20, 20, 3), 200, np.uint8)])
    assert m.describe()["fingerprint"] == fp
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)  # no batch statistics: same image, same vector
