"""A small gallery of synthetic items, served by a real uvicorn server on a free loopback port."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recognizer.data.synthetic import catalog_image, load_backgrounds, render_item, wild_photo
from recognizer.gallery import Gallery
from recognizer.models.embed import embed_arrays
from recognizer.models.model import load_model

MODEL = "lite0@96"  # pretrained, small input: fast on 2 cores, and tells synthetic items apart
N_ITEMS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def svc_model():
    return load_model(MODEL)


@pytest.fixture(scope="session")
def items() -> dict[str, np.ndarray]:
    """item id -> RGBA render of N_ITEMS synthetic items."""
    return {f"item{i:04d}": render_item(i, seed=5) for i in range(N_ITEMS)}


def make_gallery(root: Path, model, items: dict[str, np.ndarray], n: int, spec: str = MODEL) -> Gallery:
    """A gallery of the first ``n`` items, each enrolled from its catalog image (one vector); ``model`` is ``spec``."""
    g = Gallery.create(root, model.describe(), model_spec=spec)
    ids = list(items)[:n]
    if ids:
        g.add(ids, embed_arrays(model, [catalog_image(items[i], 160) for i in ids]))
    return g


def wild(items: dict[str, np.ndarray], item_id: str, seed: int = 0) -> np.ndarray:
    return wild_photo(items[item_id], np.random.default_rng(seed), load_backgrounds(), size=160, hard=0.3)


class Server:
    """uvicorn serving ``app`` on a free loopback port in a thread: tests talk real HTTP to it."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 30 or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="module")
def served(tmp_path_factory, svc_model, items):
    """``(server, service, gallery root)``: 4 of the 6 items enrolled, batching on."""
    from recognizer.service import ServiceConfig, create_app
    from recognizer.service.core import Service

    root = tmp_path_factory.mktemp("svc") / "g"
    make_gallery(root, svc_model, items, 4)
    cfg = ServiceConfig(gallery=root, max_upload_bytes=2 * 1024 * 1024, batch_wait_ms=5)
    svc = Service(cfg)
    srv = Server(create_app(cfg, svc))
    yield srv, svc, root
    srv.stop()
