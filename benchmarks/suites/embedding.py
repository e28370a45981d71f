"""Suite ``embedding``: the tools' file-to-embedding path (decoding in workers) against a bare timm
forward on in-memory tensors, and enrollment images/s."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..common import interleaved_medians, median_time

QUICK = {"model": "lite0@64", "n_images": 32, "photo_size": 96, "batch": 8}


def run(
    model: str = "lite0", n_images: int = 256, photo_size: int = 480, batch: int = 32, seed: int = 0
) -> dict[str, Any]:
    """The tools' embedding path against a bare timm forward pass, and enrollment throughput.

    Baseline: the same timm network (``forward_features`` + average pooling) on tensors already
    decoded and resized in memory, in timm's default memory format and in channels_last. The
    tools' path (``embed_paths``) starts from JPEG files on disk: decoding, resizing and
    normalising happen in DataLoader workers, and it must still reach >= 0.9 of the bare forward.
    Enrollment adds SHA-256 dedupe and the gallery's atomic commits.
    """
    import torch

    from recognizer.data.imageio import load_image
    from recognizer.data.synthetic import generate_catalog
    from recognizer.enroll import enroll_files
    from recognizer.gallery import Gallery
    from recognizer.models.embed import embed_paths
    from recognizer.models.model import load_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        man = generate_catalog(tmp / "cat", n_items=-(-n_images // 4), n_wild=4, seed=seed, size=photo_size)
        paths = sorted((man.parent / "wild").glob("*.jpg"))[:n_images]
        net = load_model(model)
        size = net.preprocess.input_size
        res: dict[str, Any] = {"model": model, "input_size": size, "images": len(paths), "batch": batch,
                               "photo_size": photo_size, "torch_threads": torch.get_num_threads()}  # fmt: skip
        x = torch.stack([net.preprocess.to_tensor(load_image(p)) for p in paths])
        body = net.backbone.body

        def bare(inp: torch.Tensor) -> None:
            with torch.inference_mode():
                for i in range(0, len(inp), batch):
                    body.forward_features(inp[i : i + batch]).mean((2, 3))

        res["bare_timm_images_per_second"] = len(x) / median_time(lambda: bare(x), 2)
        xc = x.contiguous(memory_format=torch.channels_last)

        def bare_cl() -> None:
            body.to(memory_format=torch.channels_last)
            bare(xc)

        # the two compared figures take turns, so drift on a shared machine hits both alike
        times = interleaved_medians(
            {"bare": bare_cl, "tools": lambda: embed_paths(net, paths, batch_size=batch)}, repeats=3
        )
        res["bare_timm_channels_last_images_per_second"] = len(x) / times["bare"]
        res["tools_embed_images_per_second"] = len(paths) / times["tools"]
        res["tools_vs_bare_timm"] = res["tools_embed_images_per_second"] / res["bare_timm_images_per_second"]
        res["tools_vs_bare_timm_channels_last"] = (
            res["tools_embed_images_per_second"] / res["bare_timm_channels_last_images_per_second"]
        )
        g = Gallery.create(tmp / "g", net.describe(), model_spec=model)
        items = [p.stem.split("_")[0] for p in paths]
        t0 = time.perf_counter()
        # one view and no keypoints: the enrolment pipeline's own throughput against the tools' embedding
        enroll_files(g, net, [(it, p, None) for it, p in zip(items, paths, strict=True)], progress=False,
                     views=["whole"], local_features=None)  # fmt: skip
        res["enroll_seconds"] = time.perf_counter() - t0
        res["enroll_images_per_second"] = len(paths) / res["enroll_seconds"]
        res["enroll_vs_tools_embed"] = res["enroll_images_per_second"] / res["tools_embed_images_per_second"]
        res["enrolled_vectors"] = len(g)
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
