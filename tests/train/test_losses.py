from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recognizer.train.losses import (
    EmbeddingDistillation,
    LossConfigError,
    build_loss,
    build_miner,
    class_weights,
)


def test_class_weights_weigh_rare_classes_up_with_mean_sample_weight_one():
    labels = np.array([0] * 90 + [1] * 10)
    w = class_weights(labels, 2, power=1.0)
    assert torch.allclose(w[labels].mean(), torch.tensor(1.0))
    assert torch.isclose(w[1] / w[0], torch.tensor(9.0))  # power 1: each class counts equally
    assert torch.allclose(class_weights(labels, 2, power=0.0), torch.ones(2))


@pytest.mark.parametrize(
    "loss,miner",
    [
        ({"name": "ArcFaceLoss", "args": {}}, None),
        ({"name": "SubCenterArcFaceLoss", "args": {"sub_centers": 2}}, None),
        ({"name": "TripletMarginLoss", "args": {"margin": 0.1}}, {"name": "TripletMarginMiner", "args": {"type_of_triplets": "semihard"}}),
        ({"name": "TripletMarginLoss", "args": {}}, {"name": "BatchHardMiner", "args": {}}),
        ({"name": "MultiSimilarityLoss", "args": {}}, {"name": "MultiSimilarityMiner", "args": {}}),
    ],
)  # fmt: skip
def test_each_recipe_loss_builds_and_decreases_on_a_toy_problem(loss, miner):
    torch.manual_seed(0)
    y = torch.arange(4).repeat_interleave(4)
    x = torch.randn(16, 8) + 2 * F.one_hot(y, 8).float()
    cfg = {"loss": loss, "class_weights": {"power": 0.5}}
    fn = build_loss(cfg, num_classes=4, embedding_size=8, labels=y.numpy())
    mn = build_miner(miner)
    head = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(list(head.parameters()) + list(fn.parameters()), lr=0.1)
    losses = []
    for _ in range(30):
        e = F.normalize(head(x), dim=1)
        val = fn(e, y, mn(e, y)) if mn else fn(e, y)
        opt.zero_grad()
        val.backward()
        opt.step()
        losses.append(float(val.detach()))
    assert losses[-1] < losses[0]


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises(LossConfigError, match="unknown loss 'ArcFace'; valid: .*ArcFaceLoss"):
        build_loss({"loss": {"name": "ArcFace"}}, num_classes=2, embedding_size=4)
    with pytest.raises(LossConfigError, match="loss ArcFaceLoss: .*bogus"):
        build_loss({"loss": {"name": "ArcFaceLoss", "args": {"bogus": 1}}}, num_classes=2, embedding_size=4)


def test_distillation_is_zero_at_the_teacher_and_relational_works_across_sizes():
    torch.manual_seed(0)
    t = F.normalize(torch.randn(6, 8), dim=1)
    cos = EmbeddingDistillation("cosine")
    assert float(cos(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(cos(F.normalize(torch.randn(6, 8), dim=1), t)) > 0.1
    rel = EmbeddingDistillation("relational")
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    assert float(rel(t @ q, t)) == pytest.approx(0.0, abs=1e-6)  # a rotation keeps the geometry
    assert float(rel(F.normalize(torch.randn(6, 4), dim=1), t)) > 0  # other size: fine
    with pytest.raises(LossConfigError, match="use mode: relational"):
        cos(torch.randn(6, 4), t)
    with pytest.raises(LossConfigError, match="valid: cosine, relational"):
        EmbeddingDistillation("l2")
