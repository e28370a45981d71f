"""Closing evidence for the service, measured on loopback: load with enrolment, micro-batching on and
off, and ``kill -9`` during an enrolment (``tools/service_load.py``).

Each scenario starts ``tools/serve.py`` as a separate process on a fresh copy of a base gallery
(the grocery items held out from training, enrolled from their catalog images), so the server
and its clients never share an interpreter. Clients are plain HTTP (httpx).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``tools/serve.py`` in a child process (its own process group, so ``kill -9`` hits only it)."""

    def __init__(self, serve_py: Path, gallery: Path, *, batch_max_images: int = 16, log: Path | None = None,
                 extra: list[str] | None = None):  # fmt: skip
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, str(serve_py), "--gallery", str(gallery), "--port", str(self.port),
                     "--batch-max-images", str(batch_max_images), "--log-level", "warning", *(extra or [])]  # fmt: skip
        self.log = open(log or os.devnull, "ab")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> ServerProcess:
        import httpx

        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log, start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError("server did not come up")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


def grocery_sets(manifests: Path, data_root: Path, n_enrol: int = 20, photos_per_item: int = 3, seed: int = 0):
    """``(base gallery rows, query photos, items to enrol during the load)`` from the grocery manifests.

    The base gallery holds the held-out items (``grocery_unseen.csv``, catalog images); the
    queries are their shelf photos; the items enrolled under load are ``n_enrol`` training
    items, each from its catalog image and ``photos_per_item - 1`` shelf photos.
    """
    unseen = list(csv.DictReader(open(manifests / "grocery_unseen.csv")))
    base = [(r["item_id"], data_root / r["path"]) for r in unseen if r["role"] == "gallery"]
    queries = [(r["item_id"], data_root / r["path"]) for r in unseen if r["role"] == "query"]
    by_item: dict[str, list[Path]] = {}
    for r in csv.DictReader(open(manifests / "grocery_train.csv")):
        by_item.setdefault(r["item_id"], []).append(data_root / r["path"])
    rng = random.Random(seed)
    names = sorted(i for i, ps in by_item.items() if len(ps) >= photos_per_item)
    rng.shuffle(names)
    enrol = {f"load-{i}": sorted(by_item[i], key=lambda p: "Iconic" not in p.name)[:photos_per_item] for i in names[:n_enrol]}
    return base, queries, enrol


def _percentiles(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    a = np.asarray(lat) * 1000
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)}


def run_load(url: str, token: str, queries: list, enrol: dict[str, list[Path]], *, clients: int = 8,
             seconds: float = 60.0, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """``clients`` threads send one shelf photo per match request for ``seconds`` while one more client
    enrols ``enrol``'s items (one request per item); then every enrolled item is checked."""
    import httpx

    photos = [(item, p.read_bytes(), p.name) for item, p in queries]
    lat: list[float] = []
    errors: list[str] = []
    correct = [0, 0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def matcher(k: int) -> None:
        rng = random.Random(seed + k)
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.perf_counter() < stop:
                item, data, name = rng.choice(photos)
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/match", files=[("images", (name, data, "image/jpeg"))])
                    ok = r.status_code == 200
                    top = r.json()["matches"][0]["item_id"] if ok else None
                except httpx.HTTPError as e:
                    ok, top, r = False, None, e
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        lat.append(dt)
                        correct[0] += top == item
                        correct[1] += 1
                    else:
                        errors.append(str(getattr(r, "status_code", r)))

    enrol_log: list[dict[str, Any]] = []

    def enroller() -> None:
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=300) as c:
            for item, paths in enrol.items():
                files = [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
                t0 = time.perf_counter()
                r = c.post(f"/v1/items/{item}/photos", files=files, headers=auth)
                enrol_log.append({"item": item, "status": r.status_code, "seconds": round(time.perf_counter() - t0, 2),
                                  "added": r.json().get("images_added") if r.status_code == 201 else r.text})  # fmt: skip

    threads = [threading.Thread(target=matcher, args=(k,)) for k in range(clients)]
    threads.append(threading.Thread(target=enroller))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    match_wall = min(wall, seconds + max(lat, default=0.0))
    return {"clients": clients, "seconds": round(match_wall, 1), "requests": len(lat), "errors": len(errors),
            "error_kinds": sorted(set(errors))[:5], "req_per_s": round(len(lat) / match_wall, 2),
            **_percentiles(lat), "top1_during_load": round(correct[0] / max(1, correct[1]), 3),
            "enrolments": enrol_log, "enrol_errors": sum(e["status"] != 201 for e in enrol_log),
            "after": check_enrolled(url, enrol)}  # fmt: skip


def check_enrolled(url: str, enrol: dict[str, list[Path]]) -> dict[str, Any]:
    """Every enrolled item listed, and each of its own photos matched to it (top-1 over the whole gallery)."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as c:
        listed = {i["item_id"] for i in c.get("/v1/items").json()["items"]}
        hits, total, misses = 0, 0, []
        for item, paths in enrol.items():
            files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
            for p, m in zip(paths, c.post("/v1/match", files=files).json()["matches"], strict=True):
                total += 1
                hits += m["item_id"] == item
                if m["item_id"] != item:
                    misses.append(f"{p.name} -> {m['item_id']}")
    return {"items_present": sum(i in listed for i in enrol), "items_enrolled": len(enrol),
            "own_photos_top1": f"{hits}/{total}", "misses": misses[:10]}  # fmt: skip


def crash_enrolment(serve_py: Path, gallery: Path, token: str, photos: list[Path], *, kill_after: float | None,
                    log: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Send one enrolment, ``kill -9`` the server ``kill_after`` s later, restart it, retry: what survived.

    ``kill_after=None`` kills as soon as the server has stored the first uploaded photo, i.e. while
    it embeds and commits the enrolment.
    """
    import httpx

    from ..gallery import Gallery

    before = Gallery.open(gallery).verify()
    srv = ServerProcess(serve_py, gallery, log=log).start()
    files = [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    auth = {"Authorization": f"Bearer {token}"}
    first: dict[str, Any] = {}

    def send() -> None:
        try:
            r = httpx.post(srv.url + "/v1/items/crash-item/photos", files=files, headers=auth, timeout=300)
            first["status"] = r.status_code
        except httpx.HTTPError as e:
            first["status"] = f"{type(e).__name__} (connection lost)"

    uploads = gallery / "uploads"
    t = threading.Thread(target=send)
    t0 = time.perf_counter()
    t.start()
    if kill_after is None:
        while not (uploads.is_dir() and any(uploads.iterdir())) and t.is_alive():
            time.sleep(0.005)
    else:
        time.sleep(kill_after)
    killed_at = time.perf_counter() - t0
    srv.kill9()
    t.join()
    after_kill = Gallery.open(gallery).verify()  # opens at the last commit, integrity checked
    srv = ServerProcess(serve_py, gallery, log=log).start()
    try:
        r = httpx.post(srv.url + "/v1/items/crash-item/photos", files=files, headers=auth, timeout=300)
        retry = {"status": r.status_code, **{k: r.json().get(k) for k in ("images_added", "vectors")},
                 "duplicates": len(r.json().get("duplicates", []))}  # fmt: skip
        item = httpx.get(srv.url + "/v1/items/crash-item", timeout=30).json()
    finally:
        srv.stop()
    return {"kill_after_s": kill_after if kill_after is not None else "first photo stored",
            "killed_at_s": round(killed_at, 2), "first_request": first.get("status"), "before": before,
            "after_kill": after_kill, "retry": retry, "item_vectors_after_retry": item.get("vectors"),
            "final": Gallery.open(gallery).verify()}  # fmt: skip


# (name, micro-batch size, photo-query override): the gallery's own settings (geometric re-ranking when it
# stores local features), then embedding only, where batching matters most
SCENARIOS = (("stored_batching_on", 16, ""), ("stored_batching_off", 1, ""),
             ("embed_only_batching_on", 16, "rerank=none"), ("embed_only_batching_off", 1, "rerank=none"))


def main_run(out: Path, serve_py: Path, manifests: Path, data_root: Path, *, seconds: float = 60.0,
             clients: int = 8, n_enrol: int = 20, model: str = "lite0") -> dict[str, Any]:  # fmt: skip
    """Every scenario; writes ``service_load.json`` and ``service_load.md`` into ``out``."""
    from ..enroll import enroll_files
    from ..gallery import Gallery
    from ..session import open_or_create_gallery
    from .security import load_or_create_token

    out.mkdir(parents=True, exist_ok=True)
    base_rows, queries, enrol = grocery_sets(manifests, data_root, n_enrol)
    base = out / "base_gallery"
    if not (base / "gallery.sqlite").exists():
        g, m = open_or_create_gallery(base, model)
        enroll_files(g, m, [(i, str(p), None) for i, p in base_rows], progress=False)
    results: dict[str, Any] = {"queries": len(queries), "base_items": len({i for i, _ in base_rows})}
    results["stored_photo_query"] = Gallery.open(base).settings.get("photo_query", {})
    results["local_features"] = Gallery.open(base).features.methods()
    for name, bmax, query in SCENARIOS:
        g = out / f"g_{name}"
        shutil.rmtree(g, ignore_errors=True)
        shutil.copytree(base, g)
        token, _ = load_or_create_token(g / "service.token")
        extra = ["--photo-query", query] if query else []
        srv = ServerProcess(serve_py, g, batch_max_images=bmax, log=out / f"server_{name}.log", extra=extra).start()
        try:
            results[name] = run_load(srv.url, token, queries, enrol, clients=clients, seconds=seconds)
            results[name].update(batch_max_images=bmax, photo_query=query or "the gallery's stored settings")
        finally:
            srv.stop()
    crash_photos = [p for ps in list(enrol.values())[:8] for p in ps][:24]
    results["crash"] = []
    for k, delay in enumerate((None, 0.8, 1.6, 2.4)):
        g = out / f"g_crash{k}"
        shutil.rmtree(g, ignore_errors=True)
        shutil.copytree(base, g)
        token, _ = load_or_create_token(g / "service.token")
        results["crash"].append(crash_enrolment(serve_py, g, token, crash_photos, kill_after=delay,
                                                log=out / "server_crash.log"))  # fmt: skip
    (out / "service_load.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "service_load.md").write_text(markdown(results))
    return results


def markdown(res: dict[str, Any]) -> str:
    lines = ["| photo query | micro-batching | clients | s | requests | req/s | p50 ms | p95 ms | p99 ms | errors | enrolled (errors) | "
             "items present | own photos top-1 |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, bmax, _ in SCENARIOS:
        r = res.get(name)
        if not r:
            continue
        lines.append(f"| {r['photo_query']} | {'on (16 images, 5 ms)' if bmax > 1 else 'off (one at a time)'} | {r['clients']} | "
                     f"{r['seconds']} | {r['requests']} | {r['req_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
                     f"{r['errors']} | {len(r['enrolments'])} ({r['enrol_errors']}) | "
                     f"{r['after']['items_present']}/{r['after']['items_enrolled']} | {r['after']['own_photos_top1']} |")  # fmt: skip
    lines += ["", "| kill -9 after | first request | vectors before | after kill (integrity ok) | retry | photos added on retry | final vectors |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in res.get("crash", []):
        lines.append(f"| {c['kill_after_s']} ({c['killed_at_s']} s) | {c['first_request']} | {c['before']['vectors']} | {c['after_kill']['vectors']} | "
                     f"{c['retry']['status']} | {c['retry']['images_added']} (+{c['retry']['duplicates']} already there) | "
                     f"{c['final']['vectors']} |")  # fmt: skip
    return "\n".join(lines) + "\n"
