"""The HTTP API through a real uvicorn server: matching, items, enrolment seen at once, errors as JSON."""

from __future__ import annotations

import io
import os
import stat

import httpx
import pytest
from PIL import Image

from recognizer.data.synthetic import catalog_image
from recognizer.gallery import Gallery

from .conftest import jpeg, wild


@pytest.fixture(scope="module")
def client(served):
    srv, svc, root = served
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def auth(served):
    return {"Authorization": f"Bearer {served[1].token}"}


def test_token_file_is_private_and_reused(served):
    _, svc, root = served
    p = root / "service.token"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert p.read_text().strip() == svc.token and len(svc.token) >= 32


def test_healthz_docs_and_no_cors(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["items"] >= 4
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # no CDN: the machine may be offline
    assert "/docs-static/swagger-ui-bundle.js" in docs.text
    js = client.get("/docs-static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    api = client.get("/openapi.json").json()
    assert {"/v1/match", "/v1/items", "/healthz", "/metrics"} <= set(api["paths"])
    r = client.options("/v1/match", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/v1/items", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_match_photos_with_and_without_candidates(client, items):
    files = [("images", (f"{i}.jpg", jpeg(wild(items, i, seed=1)), "image/jpeg")) for i in ("item0000", "item0002")]
    r = client.post("/v1/match", files=files, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    ms = r.json()["matches"]
    assert [m["image"] for m in ms] == ["item0000.jpg", "item0002.jpg"]
    for m in ms:
        assert set(m) >= {"item_id", "name", "score", "accepted", "label", "top_k"} and len(m["top_k"]) == 3
    # a catalog photo is its own enrolled image: top-1 within candidates, with the enrolled photo explained
    files = [("images", ("c.png", jpeg(catalog_image(items["item0001"], 160), 95), "image/jpeg"))]
    r = client.post("/v1/match", files=files, data={"candidates": "item0001,item0003", "top_k": "5", "explain": "true"})
    m = r.json()["matches"][0]
    assert m["item_id"] == "item0001" and [t["item_id"] for t in m["top_k"]][0] == "item0001"
    assert {t["item_id"] for t in m["top_k"]} == {"item0001", "item0003"}
    assert "photo" in m["top_k"][0]


def test_items_list_get_thumbnail(client):
    its = client.get("/v1/items").json()["items"]
    assert [i["item_id"] for i in its][:4] == ["item0000", "item0001", "item0002", "item0003"]
    one = client.get("/v1/items/item0001").json()
    assert one["vectors"] == 1 and one["name"] == "item0001"
    # enrolled from arrays (no source file): the thumbnail says so, as JSON
    r = client.get(one["thumbnail"])
    assert r.status_code == 404 and "item0001" in r.json()["error"]
    assert client.get("/v1/items/nope").status_code == 404


def test_enrol_is_matched_at_once_then_rename_and_remove(client, auth, items, served):
    _, svc, root = served
    photos = [("photos", (f"p{k}.jpg", jpeg(catalog_image(items["item0004"], 160 + 8 * k), 95), "image/jpeg"))
              for k in range(2)]  # fmt: skip
    r = client.post("/v1/items/new-item/photos", files=photos, data={"name": "New item"}, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["created"] and r.json()["images_added"] == 2
    probe = [("images", ("q.jpg", jpeg(catalog_image(items["item0004"], 160), 95), "image/jpeg"))]
    m = client.post("/v1/match", files=probe).json()["matches"][0]
    assert m["item_id"] == "new-item" and m["name"] == "New item"
    assert client.get("/v1/items/new-item/thumbnail").headers["content-type"] == "image/jpeg"
    # the same photos again are duplicates, reported, nothing added
    r = client.post("/v1/items/new-item/photos", files=photos, headers=auth)
    assert r.status_code == 201 and r.json()["images_added"] == 0 and len(r.json()["duplicates"]) == 2
    r = client.patch("/v1/items/new-item", json={"name": "Renamed", "attributes": {"shelf": 3}}, headers=auth)
    assert r.status_code == 200 and r.json()["name"] == "Renamed" and r.json()["attributes"] == {"shelf": 3}
    assert Gallery.open(root).items()[-1].name == "Renamed"  # committed to disk
    assert client.delete("/v1/items/new-item", headers=auth).json()["removed_vectors"] == 2
    assert "new-item" not in [i["item_id"] for i in client.get("/v1/items").json()["items"]]
    m = client.post("/v1/match", files=probe).json()["matches"][0]
    assert m["item_id"] != "new-item"


def test_another_process_enrolment_is_seen_without_restart(client, served, svc_model, items):
    _, svc, root = served
    g = Gallery.open(root)  # another writer: like tools/enroll.py
    from recognizer.models.embed import embed_arrays

    g.add(["item0005"], embed_arrays(svc_model, [catalog_image(items["item0005"], 160)]))
    probe = [("images", ("q.jpg", jpeg(catalog_image(items["item0005"], 160), 95), "image/jpeg"))]
    assert client.post("/v1/match", files=probe).json()["matches"][0]["item_id"] == "item0005"
    g.remove_item("item0005")


def test_metrics_are_prometheus_text(client):
    text = client.get("/metrics").text
    assert 'recognizer_requests_total{endpoint="/v1/match",method="POST",status="200"}' in text
    assert 'recognizer_request_seconds_bucket{endpoint="/v1/match"' in text
    for stage in ("decode", "embed", "score", "queue_wait"):
        assert f'recognizer_stage_seconds_count{{stage="{stage}"}}' in text
    assert "recognizer_gallery_items " in text and "recognizer_gallery_vectors " in text


def _png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_bad_inputs_are_json_errors_and_store_nothing(client, auth, items, served):
    from .badinputs import bad_input_table

    _, svc, root = served
    snapshot = lambda: (len(Gallery.open(root)), Gallery.open(root).item_ids, sorted(os.listdir(root)),  # noqa: E731
                        sorted(os.listdir(root / "uploads")) if (root / "uploads").exists() else [])
    before = snapshot()
    rows = bad_input_table(client, auth["Authorization"].split()[1], jpeg(catalog_image(items["item0000"], 160)),
                           limit=2 * 1024 * 1024)  # fmt: skip
    for row in rows:
        assert row["status"] == row["expected"], row
        assert row["message"] and row["status"] != 500 and str(root) not in row["message"]
    assert snapshot() == before
