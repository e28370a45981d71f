"""Enrollment-time adaptation: refine item prototypes on the enrolled items' own photos.

No retraining of the embedder: a multinomial logistic regression ("linear classifier on CNN
codes") is fitted on the gallery's vectors, starting from the items' mean vectors
(prototypes) and pulled back toward them by weight decay. With one photo per item it stays
the prototype; with several it learns which directions tell *these* items apart. Fitted in
milliseconds for a candidate set or a gallery of a few hundred items, on CPU.

Numpy in, numpy out: scores are ``q @ W.T + b``, in the same units as cosine similarity
(the logits times the temperature), so the open-set threshold keeps its meaning roughly
(recalibrate it after switching score modes all the same).
"""

from __future__ import annotations

import numpy as np

PROBE_TEMPERATURE = 0.05
PROBE_WEIGHT_DECAY = 1e-3
PROBE_MAX_ITER = 100
# vectors x items x dim above which a probe is not fitted on the fly (about 10 s on 2 cores)
PROBE_MAX_WORK = 10_000_000_000


def fit_probe(
    vectors: np.ndarray,
    item_col: np.ndarray,
    n_items: int,
    *,
    temperature: float = PROBE_TEMPERATURE,
    weight_decay: float = PROBE_WEIGHT_DECAY,
    max_iter: int = PROBE_MAX_ITER,
) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)``: ``n_items x D`` weights and ``n_items`` biases for L2-normalised ``vectors``.

    ``item_col[i]`` is the item (0..n_items-1) of ``vectors[i]``; every item needs a vector.
    Minimises cross-entropy of ``X W^T / T + b/T`` plus ``weight_decay * |W - P|^2``, where ``P``
    are the normalised prototypes, with L-BFGS (deterministic on CPU).
    """
    import torch

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    col = np.asarray(item_col, dtype=np.int64)
    if x.ndim != 2 or len(col) != len(x):
        raise ValueError(f"vectors {x.shape} and item_col {col.shape} do not match")
    counts = np.bincount(col, minlength=n_items)
    if len(counts) != n_items or (counts == 0).any():
        raise ValueError(f"every one of the {n_items} items needs at least one vector")
    protos = np.zeros((n_items, x.shape[1]), np.float32)
    np.add.at(protos, col, x)
    protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    if n_items < 2:
        return protos, np.zeros(n_items, np.float32)
    X, y, P = torch.from_numpy(x), torch.from_numpy(col), torch.from_numpy(protos)
    W = torch.nn.Parameter(P.clone())
    b = torch.nn.Parameter(torch.zeros(n_items))
    opt = torch.optim.LBFGS([W, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy((X @ W.T + b) / temperature, y)
        loss = loss + weight_decay * ((W - P) ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32)
