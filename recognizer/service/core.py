"""The service's state: one gallery, its model, the locks, and the operations behind the routes.

Two :class:`~recognizer.gallery.Gallery` objects over the same folder: a *reader* that
matching, listing and thumbnails use (brought up to date by :meth:`Gallery.refresh` before
each batch, so new items, from this service or from ``tools/enroll.py``, are matched without
a restart) and a *writer* that enrolment, removal and renames use under the gallery's own
writer lock (crash-safe commits: ``kill -9`` leaves the last commit). Embedding happens
outside every lock; only scoring holds the reader's lock.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from ..data.imageio import ImageLoadError, load_image
from ..enroll import enroll_files
from ..gallery import EmptyGalleryError, Gallery, Match, UnknownItemError
from ..matching.pipeline import Recognizer, Views
from ..matching.settings import resolve_query
from ..models.embed import prepare_for_inference
from ..session import load_gallery_embedder
from .batching import Job, MicroBatcher
from .config import ServiceConfig
from .metrics import Metrics
from .security import ServiceError, check_item_id, load_or_create_token
from .uploads import decode_image, store_upload

THUMB_PX = 160
PHOTO_PX = 640


class Service:
    """See the module docstring. :meth:`close` stops the batcher."""

    def __init__(self, cfg: ServiceConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.writer = Gallery.open(cfg.gallery)
        self.reader = Gallery.open(cfg.gallery)
        self.model = load_gallery_embedder(self.writer, cfg.model_spec, backend=cfg.backend, onnx=cfg.onnx,
                                           threads=cfg.threads)  # fmt: skip
        prepare_for_inference(self.model)  # once, before threads share the model
        self.token, self.token_created = load_or_create_token(cfg.token_file)
        self.read_lock = threading.RLock()
        self.write_lock = threading.Lock()
        self._settings_key: tuple | None = None
        self.rec = self._recognizer()
        self._thumbs: dict[tuple[str, int], bytes] = {}
        self.batcher = MicroBatcher(self._run_batch, max_images=cfg.batch_max_images, wait_ms=cfg.batch_wait_ms,
                                    on_batch=self._on_batch)  # fmt: skip
        self._update_size()

    def close(self) -> None:
        self.batcher.close()

    # ------------------------------------------------------------------ reading

    def _recognizer(self) -> Recognizer:
        """The photo-query recognizer with the gallery's stored (calibrated) settings, rebuilt when they change."""
        key = (self.reader.meta.get("settings"), tuple(self.reader.features.methods()))
        if key != self._settings_key:
            query, rerank = resolve_query(self.reader, "photo", self.cfg.photo_query)
            self.rec = Recognizer(self.reader, self.model, query, rerank)
            self._settings_key = key
        return self.rec

    def refresh(self) -> Recognizer:
        """Catch up with every commit so far (call under ``read_lock``)."""
        with self.metrics.timed("refresh"):
            changed = self.reader.refresh()
            if changed:
                self._update_size()
            if changed or self._settings_key is None or self._settings_key[0] != self.reader.meta.get("settings"):
                return self._recognizer()  # new vectors may bring stored local features; settings may change
            return self.rec

    def _unknown(self, ids: Sequence[str]) -> str:
        """The gallery's "not in gallery" message, without the server's folder path."""
        return self.reader.unknown_message(list(ids)).replace(f" {self.reader.root}", "")

    def _update_size(self) -> None:
        self.metrics.gallery_size(len(self.reader.item_ids), len(self.reader))

    def _on_batch(self, images: int, waited: float) -> None:
        self.metrics.batch_images.observe(images)
        self.metrics.stage.labels("queue_wait").observe(waited)

    def match(self, images: Sequence[np.ndarray], candidates: list[str] | None, top_k: int, explain: bool):
        """A future of one dict per image (see :meth:`_match_json`); runs on the micro-batcher."""
        return self.batcher.submit(images, candidates=candidates, top_k=top_k, explain=explain)

    def _run_batch(self, jobs: list[Job]) -> list[Any]:
        with self.read_lock:
            rec = self.refresh()
        images = [im for j in jobs for im in j.images]
        with self.metrics.timed("embed"):
            views = rec.embed_arrays(images)
        starts = np.cumsum([0] + [len(j.images) for j in jobs])

        def score(k: int) -> Any:
            try:
                return self._score_job(rec, views, list(range(starts[k], starts[k + 1])), jobs[k])
            except (ServiceError, UnknownItemError, EmptyGalleryError, ValueError) as e:
                return e

        # one job after another: a Gallery's in-memory state is not safe for concurrent readers (it folds
        # new rows in lazily), so scoring and geometric verification stay on this thread
        with self.read_lock, self.metrics.timed("score"):
            return [score(k) for k in range(len(jobs))]

    def _score_job(self, rec: Recognizer, views: Views, idx: list[int], job: Job) -> list[dict[str, Any]]:
        p = job.params
        if not self.reader.item_ids:
            raise ServiceError(409, "the gallery is empty: enrol items first (POST /v1/items/{id}/photos)")
        cands = p["candidates"]
        if cands:
            missing = [c for c in cands if c not in self.reader]
            if missing:
                raise ServiceError(422, "unknown candidate(s): " + self._unknown(missing))
        sub = Views(views.emb[views.rows_of(idx)], views.n_views[idx], indices=list(range(len(idx))))
        matches = rec.match(sub, cands, lambda i: job.images[i], p["top_k"])
        pooled = sub.pooled() if p["explain"] else None
        return [self._match_json(m, None if pooled is None else pooled[i]) for i, m in enumerate(matches)]

    def _match_json(self, m: Match, emb: np.ndarray | None) -> dict[str, Any]:
        names = {i.item_id: i.name for i in self.reader.items()} if m.topk else {}
        top = []
        for item, score in m.topk:
            entry: dict[str, Any] = {"item_id": item, "name": names.get(item, item), "score": round(float(score), 5)}
            if emb is not None:
                entry["photo"] = self._best_photo(item, emb)
            top.append(entry)
        return {"item_id": m.item_id, "name": names.get(m.item_id, m.item_id), "label": m.label,
                "accepted": bool(m.accepted), "score": round(float(m.score), 5),
                "margin": None if not np.isfinite(m.margin) else round(float(m.margin), 5), "top_k": top}  # fmt: skip

    def _best_photo(self, item: str, emb: np.ndarray) -> dict[str, Any] | None:
        """The enrolled photo of ``item`` whose vector is closest to the query (vectors and records in vid order)."""
        vecs = self.reader.vectors_of(item)
        recs = self.reader.records(item)[: len(vecs)]
        if not len(vecs) or len(recs) != len(vecs):
            return None
        best = int(np.argmax(vecs @ emb))
        vid = int(recs[best]["vid"])
        return {"vid": vid, "cosine": round(float(vecs[best] @ emb), 5), "url": f"/v1/items/{quote(item, safe='')}/photos/{vid}"}

    def items(self) -> list[dict[str, Any]]:
        with self.read_lock:
            self.refresh()
            return [self._item_json(i) for i in self.reader.items()]

    def item(self, item_id: str) -> dict[str, Any]:
        check_item_id(item_id)
        with self.read_lock:
            self.refresh()
            info = next((i for i in self.reader.items() if i.item_id == item_id), None)
            if info is None:
                raise ServiceError(404, self._unknown([item_id]))
            out = self._item_json(info)
            q = quote(item_id, safe="")
            out["photos"] = [{"vid": r["vid"], "url": f"/v1/items/{q}/photos/{r['vid']}", "added": r["added"]}
                             for r in self.reader.records(item_id)]  # fmt: skip
            return out

    @staticmethod
    def _item_json(info) -> dict[str, Any]:
        return {"item_id": info.item_id, "name": info.name, "attributes": info.attributes, "vectors": info.vectors,
                "thumbnail": f"/v1/items/{quote(info.item_id, safe='')}/thumbnail"}  # fmt: skip

    def photo(self, item_id: str, vid: int | None, size: int) -> bytes:
        """JPEG of an enrolled photo (``vid``; None: the item's first), at most ``size`` px on its long side."""
        check_item_id(item_id)
        with self.read_lock:
            self.refresh()
            if item_id not in self.reader:
                raise ServiceError(404, self._unknown([item_id]))
            recs = self.reader.records(item_id)
        rec = recs[0] if vid is None else next((r for r in recs if r["vid"] == vid), None)
        if rec is None:
            raise ServiceError(404, f"item {item_id!r} has no enrolled photo {vid}")
        key = (rec["path"], size)
        if key not in self._thumbs:
            try:
                im = Image.fromarray(load_image(rec["path"]))
            except ImageLoadError as e:
                raise ServiceError(404, f"the enrolled photo of item {item_id!r} cannot be shown: {e.reason}") from None
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
            if len(self._thumbs) > 2000:
                self._thumbs.clear()
            self._thumbs[key] = buf.getvalue()
        return self._thumbs[key]

    # ------------------------------------------------------------------ writing

    def enrol(self, item_id: str, uploads: Sequence[tuple[str, bytes]], name: str | None = None) -> dict[str, Any]:
        """Enrol uploaded photos as ``item_id`` (created if new); every photo is checked before anything is stored."""
        check_item_id(item_id)
        if not uploads:
            raise ServiceError(422, "no photos: send one or more files in the multipart field 'photos'")
        with self.metrics.timed("decode"):
            for i, (fname, data) in enumerate(uploads):
                decode_image(data, f"photo {i + 1} ({fname!r})")
        with self.write_lock, self.metrics.timed("enrol"):
            existed = item_id in self.writer
            paths = [store_upload(data, self.cfg.uploads_dir) for _, data in uploads]
            feats = self.writer.features.methods()
            rep = enroll_files(self.writer, self.model, [(item_id, str(p), None) for p in paths], progress=False,
                               num_workers=0, local_features=feats[0] if feats else None)  # fmt: skip
            if rep.failures:
                raise ServiceError(400, "; ".join(f"{w}: {r}" for w, r in rep.failures))
            if item_id not in self.writer:
                held = sorted({it for _, it in rep.duplicates})
                raise ServiceError(409, f"every photo is already enrolled (as item(s) {', '.join(held)}); nothing stored")
            if name is not None and not existed:
                self.writer.set_item(item_id, name=name)
        names = dict(zip((str(p) for p in paths), (f for f, _ in uploads), strict=True))
        return {"item_id": item_id, "created": not existed, "images_added": rep.images_added,
                "duplicates": [{"photo": names.get(w, w), "item_id": it} for w, it in rep.duplicates],
                "vectors": len(self.writer.vectors_of(item_id))}  # fmt: skip

    def remove(self, item_id: str) -> dict[str, Any]:
        check_item_id(item_id)
        with self.write_lock:
            self.writer.refresh()
            if item_id not in self.writer:
                raise ServiceError(404, self._unknown([item_id]))
            n = self.writer.remove_item(item_id)
        return {"item_id": item_id, "removed_vectors": n}

    def update(self, item_id: str, name: str | None, attributes: dict[str, Any] | None) -> dict[str, Any]:
        check_item_id(item_id)
        if name is not None and not name.strip():
            raise ServiceError(422, "name must not be empty")
        with self.write_lock:
            self.writer.refresh()
            if item_id not in self.writer:
                raise ServiceError(404, self._unknown([item_id]))
            self.writer.set_item(item_id, name=name, attributes=attributes)
        return self.item(item_id)
