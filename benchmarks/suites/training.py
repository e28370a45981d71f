"""Suite ``training``: one training step at 10,000 classes on synthetic data, cached-feature head vs.
full fine-tuning (and stage 2: only the top block), with the ArcFace weight memory and peak RSS."""

from __future__ import annotations

from typing import Any

from ..common import median_time, peak_since_reset_mb, reset_peak_rss, rss_mb

QUICK = {"n_classes": 100, "batch": 8, "input_size": 64, "steps": 2}


def run(
    n_classes: int = 10_000, batch: int = 32, input_size: int = 160, steps: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Training throughput at ``n_classes`` (synthetic data): cached-feature head vs. full fine-tuning.

    Both use ArcFace (pytorch-metric-learning) with its ``n_classes x dim`` weight matrix,
    whose memory is reported; peak RSS is the suite's own high-water mark (Linux: reset at its start,
    so earlier suites in the same process do not count), with the resident memory at its start.
    """
    import torch
    from pytorch_metric_learning import losses

    from recognizer.models.model import build_model
    from recognizer.train import freeze_backbone, set_train_mode

    rss_start = rss_mb()
    reset_peak_rss()
    torch.manual_seed(seed)
    res: dict[str, Any] = {"n_classes": n_classes, "batch": batch, "input_size": input_size}
    model = build_model(
        {"backbone": "lite0", "head": {"name": "residual", "args": {}}, "input_size": input_size}
    )
    dim = model.embedding_dim
    loss_fn = losses.ArcFaceLoss(num_classes=n_classes, embedding_size=dim)
    res["arcface_weight_mb"] = sum(p.numel() * p.element_size() for p in loss_fn.parameters()) / 2**20
    opt = torch.optim.AdamW(list(model.parameters()), lr=1e-4)
    loss_opt = torch.optim.SGD(loss_fn.parameters(), lr=1e-2)

    def step(inputs: torch.Tensor, labels: torch.Tensor, cached: bool) -> None:
        emb = model.embed_features(inputs) if cached else model(inputs)
        loss = loss_fn(emb, labels)
        opt.zero_grad()
        loss_opt.zero_grad()
        loss.backward()
        opt.step()
        loss_opt.step()

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    feats = torch.randn(batch * 8, dim, generator=g).abs()
    model.train()
    model.backbone.eval()
    t = median_time(lambda: step(feats, labels.repeat(8), True), steps * 4)
    res["cached_head_samples_per_second"] = batch * 8 / t
    images = torch.randn(batch, 3, input_size, input_size, generator=g).contiguous(
        memory_format=torch.channels_last
    )
    model.to(memory_format=torch.channels_last)
    model.train()
    t = median_time(lambda: step(images, labels, False), steps, warmup=1)
    res["full_finetune_step_seconds"] = t
    res["full_finetune_images_per_second"] = batch / t
    res["cached_vs_full_speedup"] = (
        res["cached_head_samples_per_second"] / res["full_finetune_images_per_second"]
    )
    # stage 2 as configured for the grocery recipe: only the top block trains (frozen BatchNorm in eval)
    freeze_backbone(model, 1)
    set_train_mode(model)
    t = median_time(lambda: step(images, labels, False), steps, warmup=1)
    res["stage2_top1_block_step_seconds"] = t
    res["stage2_top1_block_images_per_second"] = batch / t
    res["rss_at_start_mb"] = rss_start
    res["peak_rss_mb"] = peak_since_reset_mb()
    return res
