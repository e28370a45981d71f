"""How well the camera named what was on the table: metrics of one scene against its truth.

``frame_log`` is what the camera showed per frame (``CameraMatcher.labels()``: box, label,
score); the truth comes from :mod:`recognizer.data.scenes`. Definitions:

* **recall**: share of (frame, item) pairs labelled right, counted after each item's first
  ``settle_seconds`` on the table, while it is at rest (not being lifted or put down) and at
  least ``min_visible`` of it can be seen. Right: a shown box carries the item's id and
  overlaps its truth box by IoU >= ``min_iou``.
* **wrong-label frames**: share of frames showing any wrong name: a label of an item that is
  not there, a box with IoU < ``wrong_iou`` to the named item's truth box (a phantom on empty
  table, on the hand, or on a neighbour), or a second box with the same name.
* **switches per item**: how often the name on an item's box (shown boxes matched one-to-one to
  the items by IoU) changed to another name.
* **time to first label**: seconds from an item's arrival to its first right label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.scenes import FrameTruth
from .camera import UNKNOWN, Box, iou


def scene_metrics(
    truth: Sequence[FrameTruth],
    frame_log: Sequence[tuple[int, list[tuple[Box, str, float]]]],
    fps: float,
    *,
    settle_seconds: float = 1.0,
    min_visible: float = 0.5,
    min_iou: float = 0.3,
    wrong_iou: float = 0.2,
) -> dict[str, Any]:
    """The metrics of the module docstring, plus per-item details."""
    shown = dict(frame_log)
    first: dict[str, int] = {}
    for tr in truth:
        for it in tr.items:
            first.setdefault(it.item_id, tr.frame)
    settle = int(round(settle_seconds * fps))
    right = total = 0
    wrong_frames = frames = 0
    last_label: dict[str, str] = {}
    switches: dict[str, int] = {k: 0 for k in first}
    first_ok: dict[str, int] = {}
    per_item: dict[str, list[int]] = {}
    for tr in truth:
        if tr.frame not in shown:
            continue
        out = [o for o in shown[tr.frame] if o[1] != UNKNOWN]
        boxes = {it.item_id: it.box for it in tr.items}
        frames += 1
        wrong = False
        for i, (box, label, _) in enumerate(out):
            if label not in boxes or iou(box, boxes[label]) < wrong_iou:
                wrong = True
            elif any(o[1] == label and iou(o[0], boxes[label]) > iou(box, boxes[label]) for o in out[:i] + out[i + 1 :]):
                wrong = True  # a duplicate of a better box
        wrong_frames += wrong
        on = _match_boxes([o[0] for o in out], [it.box for it in tr.items], min_iou)
        for k, it in enumerate(tr.items):
            if k in on:  # the box one-to-one matched to this item: which name does it carry?
                label = out[on[k]][1]
                if it.item_id in last_label and last_label[it.item_id] != label:
                    switches[it.item_id] += 1
                last_label[it.item_id] = label
            ok = any(o[1] == it.item_id and iou(o[0], it.box) >= min_iou for o in out)
            if ok:
                first_ok.setdefault(it.item_id, tr.frame)
            if it.moving or it.visible < min_visible or tr.frame < first[it.item_id] + settle:
                continue
            right += ok
            total += 1
            per_item.setdefault(it.item_id, [0, 0])
            per_item[it.item_id][0] += ok
            per_item[it.item_id][1] += 1
    ttl = {k: (first_ok[k] - first[k]) / fps if k in first_ok else float("inf") for k in first}
    return {
        "recall": right / total if total else float("nan"),
        "pairs": total,
        "wrong_label_frames": wrong_frames / frames if frames else float("nan"),
        "switches_max": max(switches.values(), default=0),
        "switches_mean": float(np.mean(list(switches.values()))) if switches else 0.0,
        "first_label_s_max": max(ttl.values(), default=float("nan")),
        "first_label_s_mean": float(np.mean(list(ttl.values()))) if ttl else float("nan"),
        "per_item": {
            k: {"recall": per_item[k][0] / per_item[k][1] if k in per_item else float("nan"),
                "switches": switches[k], "first_label_s": ttl[k]}
            for k in first
        },  # fmt: skip
    }


def _match_boxes(shown: list[Box], items: list[Box], min_iou: float) -> dict[int, int]:
    """Truth item index -> shown box index, one-to-one by IoU (Hungarian), pairs under ``min_iou`` left out."""
    if not shown or not items:
        return {}
    from scipy.optimize import linear_sum_assignment

    m = np.array([[iou(b, t) for b in shown] for t in items])
    rows, cols = linear_sum_assignment(-m)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True) if m[r, c] >= min_iou}
