"""Re-embedding: move a gallery to a new model without enrolling its items again by hand.

``tools/enroll.py --gallery G --reembed --model SPEC`` calls :func:`reembed`. From the photos the gallery
kept (``recognizer.gallery.images``; with the ``thumbnails`` option, the source paths) it builds, in a new
version folder ``G/v<n>.building`` beside the active one, the new model's vectors for every enrolled
(photo, view) pair, the local features (keypoints, colour histograms) the old version had, and a fresh
self-calibration; it copies item names, attributes, the open-set and query settings and the enrolment
views. Then it switches ``G/CURRENT`` to the new version in one atomic rename
(``recognizer.gallery.versions``). A ``kill -9`` at any moment leaves the old version active and whole, or
the finished new one. The old version's writer lock is held throughout, so no enrolment into it is lost.
"""

from __future__ import annotations

import ast
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.imageio import ImageLoadError
from .enroll import store_features_for
from .gallery import Gallery, GalleryCorruptError, GalleryError, MissingImagesError, photo_hash, versions
from .gallery.images import DEFAULT_STORE_MODE
from .matching.options import parse_view
from .models.embed import embed_paths

# settings that belong to the old model's measurements are replaced by the new calibration (if it runs)
_MEASURED = ("calibration",)


@dataclass
class ReembedReport:
    """What a re-embed did."""

    gallery: str
    old_fingerprint: str
    new_fingerprint: str
    old_version: str
    new_version: str
    items: int = 0
    photos: int = 0
    vectors: int = 0
    copies_added: int = 0  # photos enrolled before the image store, copied in from their sources now
    features: dict[str, int] = field(default_factory=dict)
    calibration: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        feats = ", ".join(f"{m} {n}" for m, n in self.features.items()) or "none"
        return (f"re-embedded {self.gallery}: {self.items} items, {self.photos} photos, {self.vectors} vectors "
                f"with model {self.new_fingerprint} (was {self.old_fingerprint}) in {self.seconds:.1f} s; "
                f"version {self.new_version} is active (previous: {self.old_version}); local features: {feats}"
                + (f"; {self.copies_added} photo(s) copied into the image store" if self.copies_added else "")
                + (f"\n{self.calibration}" if self.calibration else ""))  # fmt: skip


@dataclass
class _Photo:
    key: str  # the photo's hash as its vectors carry it: sha256, or sha256:(bbox) for a crop
    item_id: str
    source: str  # where it was enrolled from
    readable: str  # where it is read now: the kept copy, else the source
    vectors: list[tuple[int, str, float]] = field(default_factory=list)  # (old vid, view name, added)

    @property
    def bbox(self) -> tuple | None:
        _, sep, bb = self.key.partition(":")
        return ast.literal_eval(bb) if sep else None


def reembed(
    home: str | Path, model: Any, *, model_spec: str, batch_size: int = 32, num_workers: int | None = None,
    calibrate: bool = True, progress: bool = True, log: Callable[[str], None] = print,
    after_build: Callable[[Path], None] | None = None,
) -> ReembedReport:  # fmt: skip
    """Re-embed gallery ``home`` with ``model`` (loadable again as ``model_spec``) and make that version active.

    Raises :class:`MissingImagesError` naming every photo that cannot be read (or changed since it was
    enrolled) before anything is built; nothing is switched then. ``after_build`` (tests) runs just before
    the switch.
    """
    t0 = time.perf_counter()
    home = Path(home)
    old = Gallery.open(home)
    old_name = versions.active_name(home)
    with old.store.writer():  # no commit to the old version from now on; a waiting writer is refused after the switch
        old.refresh()
        old.require_items()
        gone = versions.remove_unfinished(home)  # a killed re-embed's build
        if gone:
            log(f"removed unfinished version(s) {', '.join(gone)} left by an interrupted re-embed")
        settings = old.settings
        mode = settings.get("store_images", DEFAULT_STORE_MODE)
        photos, image_rows = _photos(old), {r[0]: r for r in old.images.rows()}
        _check_readable(home, photos)  # every photo, before anything is written
        n = versions.next_number(home)
        build = home / f"v{n}{versions.BUILDING_SUFFIX}"
        rep = ReembedReport(str(home), old.fingerprint, model.fingerprint, old_name, f"v{n}")
        new = _create(old, model, model_spec, build, settings)
        rep.copies_added = _carry_images(new, photos, image_rows, mode)
        vid_map = _embed(new, model, photos, old, batch_size, num_workers, progress)
        _carry_items(old, new, photos, vid_map)
        for method in old.features.methods():
            firsts = [(vid_map[_first_vid(p)], p.readable, p.bbox) for p in photos]
            rep.features[method] = store_features_for(new, method, firsts)
        if calibrate and len(new.item_ids) >= 2:
            rep.calibration = _calibrate(new, model)
        _check_complete(old, new)
        rep.items, rep.photos, rep.vectors = len(new.item_ids), len(photos), len(new)
        if after_build is not None:
            after_build(build)
        final = home / f"v{n}"
        build.rename(final)
        versions.switch(home, final.name, old_name, model_spec=model_spec, fingerprint=model.fingerprint)  # the commit
        versions.remove_older(home, versions.number(old_name))  # keep the version just replaced (readers on it)
    rep.seconds = time.perf_counter() - t0
    return rep


def reembed_gallery(home: str | Path, model_spec: str, **kwargs: Any) -> ReembedReport:
    """:func:`reembed` with the model ``model_spec`` (``lite0@160``, ``items``, or a trained model folder)."""
    from .models.model import load_model

    model = load_model(model_spec)
    spec = str(Path(model_spec).resolve()) if Path(model_spec).is_dir() else str(model_spec)
    return reembed(home, model, model_spec=spec, **kwargs)


def _photos(old: Gallery) -> list[_Photo]:
    """The old version's photos in enrolment order, with their vectors' views."""
    photos: dict[str, _Photo] = {}
    for r in old.records():
        key, _, view = str(r["sha256"]).partition("#")
        if len(key) < 64:
            raise GalleryError(f"{old.root}: vector {r['vid']} has no photo hash ({r['sha256']!r}): it was added as a "
                               "bare vector, not from an image, and cannot be re-embedded")  # fmt: skip
        p = photos.setdefault(key, _Photo(key, r["item_id"], r["source"], r["path"]))
        p.vectors.append((int(r["vid"]), view or "whole", float(r["added"])))
    return list(photos.values())


def _check_readable(home: Path, photos: list[_Photo]) -> None:
    """Every photo must be there with the bytes it was enrolled with; otherwise name them all and stop."""
    bad = []
    for p in photos:
        try:
            data = Path(p.readable).read_bytes()
        except OSError as e:
            bad.append(f"{p.readable} (item {p.item_id}): {e.strerror or e}")
            continue
        if hashlib.sha256(data).hexdigest() != photo_hash(p.key):
            bad.append(f"{p.readable} (item {p.item_id}): changed since it was enrolled (SHA-256 differs)")
    if bad:
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise MissingImagesError(
            f"{home}: cannot re-embed: {len(bad)} enrolled photo(s) cannot be read as enrolled: "
            + "; ".join(bad[:20]) + more + ". Nothing was changed: restore them (or remove their items) and run again"
        )


def _create(old: Gallery, model: Any, model_spec: str, build: Path, settings: dict) -> Gallery:
    Gallery.create(build, model.describe(), model_spec=model_spec, threshold=old.threshold, margin=old.margin,
                   score_mode=old.score_mode, top_n=old.top_n)  # fmt: skip
    new = Gallery(old.root, version_dir=build)
    carried = {k: v for k, v in settings.items() if k not in _MEASURED}
    carried["reembedded_from"] = {"fingerprint": old.fingerprint, "model_spec": old.model_spec, "at": time.time()}
    new.update_settings(carried)
    return new


def _carry_images(new: Gallery, photos: list[_Photo], rows: dict[str, tuple], mode: str) -> int:
    """List the kept photos in the new version; in ``full`` mode, copy in those enrolled before the image store."""
    have = {photo_hash(p.key) for p in photos}
    new.images.record([r for s, r in rows.items() if s in have])
    todo = {}
    for p in photos:
        if photo_hash(p.key) not in rows and mode == "full":
            todo.setdefault(photo_hash(p.key), p.source)
    failed = new.images.keep(list(todo.items()), mode)
    if failed:  # _check_readable just read them: only a change in between gets here
        raise MissingImagesError(f"{new.root}: cannot re-embed: {'; '.join(failed.values())}")
    return len(todo)


def _embed(new: Gallery, model: Any, photos: list[_Photo], old: Gallery, batch_size: int,
           num_workers: int | None, progress: bool) -> dict[int, int]:  # fmt: skip
    """Every (photo, view) pair of the old version, embedded with the new model: ``old vid -> new vid``."""
    order: dict[str, list[tuple[_Photo, int]]] = {}
    for p in photos:
        for vid, view, _ in p.vectors:
            order.setdefault(view, []).append((p, vid))
    names = {it.item_id: it.name for it in old.items()}
    vid_map: dict[int, int] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(map(len, order.values())), desc="re-embedding", unit="img")
    for view, pairs in order.items():  # the whole view first, as enrolment does
        opt = parse_view(view)
        for i in range(0, len(pairs), 256):
            part = pairs[i : i + 256]
            res = embed_paths(model, [p.readable for p, _ in part], bboxes=[p.bbox for p, _ in part],
                              batch_size=batch_size, num_workers=num_workers,
                              view_fn=None if opt.is_default else opt.views)  # fmt: skip
            if res.failures:
                raise MissingImagesError(f"{old.root}: cannot re-embed: " + "; ".join(
                    f"{part[j][0].readable} (item {part[j][0].item_id}): {msg}" for j, msg in res.failures))  # fmt: skip
            got = [part[j] for j in res.indices]
            added = new.add([p.item_id for p, _ in got], res.embeddings, paths=[p.source for p, _ in got],
                            hashes=[p.key if view == "whole" else f"{p.key}#{view}" for p, _ in got],
                            names=names, fingerprint=model.fingerprint)  # fmt: skip
            if added.duplicates:
                raise GalleryCorruptError(f"{old.root}: duplicate photo hashes while re-embedding: {added.duplicates[:3]}")
            vid_map.update({got[pos][1]: vid for vid, pos in zip(added.vids, added.positions, strict=True)})
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    return vid_map


def _first_vid(p: _Photo) -> int:
    """The vector a photo's local features hang on: its whole view, else its first."""
    return next((vid for vid, view, _ in p.vectors if view == "whole"), p.vectors[0][0])


def _carry_items(old: Gallery, new: Gallery, photos: list[_Photo], vid_map: dict[int, int]) -> None:
    """Attributes, item creation times and photo enrolment times, as the old version had them (one transaction)."""
    with old.store.reading() as conn:
        items = conn.execute("SELECT item_id, name, attributes, created FROM items").fetchall()
    added = [(a, vid_map[v]) for p in photos for v, _, a in p.vectors]
    with new.store.writer() as conn:
        new.store.transaction(conn, [
            ("UPDATE items SET name=?, attributes=?, created=? WHERE item_id=?", [(n, a, c, i) for i, n, a, c in items]),
            ("UPDATE vectors SET added=? WHERE vid=?", added),
        ], bump=("items_epoch",))  # fmt: skip
    new.refresh()


def _calibrate(new: Gallery, model: Any) -> str:
    from .matching.calibrate import calibrate

    try:
        cal = calibrate(new, model)
    except (ValueError, ImageLoadError) as e:
        return f"calibration skipped: {e}"
    cal.apply(new)
    return cal.summary()


def _check_complete(old: Gallery, new: Gallery) -> None:
    """The new version holds every item and vector hash of the old one, and passes its integrity check."""
    new.verify()
    a = {(r["item_id"], r["sha256"]) for r in old.records()}
    b = {(r["item_id"], r["sha256"]) for r in new.records()}
    if a != b:
        raise GalleryCorruptError(f"{new.data_root}: the re-embedded version differs from the old one "
                                  f"({len(a - b)} vectors missing, {len(b - a)} extra); not switching")  # fmt: skip
