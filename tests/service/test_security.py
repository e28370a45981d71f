"""Token file, item-id rules, protected reads, the body limit on chunked uploads."""

from __future__ import annotations

import os

import httpx
import pytest

from recognizer.service import ServiceConfig, create_app
from recognizer.service.core import Service
from recognizer.service.security import ServiceError, check_bearer, check_item_id, load_or_create_token

from .conftest import Server, make_gallery


def test_token_generated_0600_then_reused_and_refused_when_readable(tmp_path):
    p = tmp_path / "sub" / "token"
    tok, created = load_or_create_token(p)
    assert created and (p.stat().st_mode & 0o777) == 0o600 and len(tok) >= 32
    assert load_or_create_token(p) == (tok, False)
    os.chmod(p, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_token(p)


@pytest.mark.parametrize("bad", ["", " ", "a/b", "a\\b", "a;b", "a\x00b", "a\nb", "tab\there", " lead", "..", "x" * 129])
def test_bad_item_ids_are_refused_with_a_reason(bad):
    with pytest.raises(ServiceError) as e:
        check_item_id(bad)
    assert e.value.status == 400 and "item id" in e.value.message


@pytest.mark.parametrize("good", ["cola-330", "Vine-Tomato", "käse 200 g", "x" * 128, "a.b_c"])
def test_good_item_ids_pass(good):
    assert check_item_id(good) == good


def test_bearer_check_names_the_problem():
    for header, words in ((None, "missing"), ("Basic abc", "malformed"), ("Bearer nope", "wrong")):
        with pytest.raises(ServiceError, match=words) as e:
            check_bearer(header, "s3cret-token-0123456789")
        assert e.value.status == 401 and e.value.headers["WWW-Authenticate"] == "Bearer"
    check_bearer("Bearer s3cret-token-0123456789", "s3cret-token-0123456789")


def test_protected_reads_and_chunked_oversized_upload(tmp_path, svc_model, items):
    make_gallery(tmp_path / "g", svc_model, items, 2)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text('{"top1": 0.5}')
    (tmp_path / "secret.txt").write_text("not for the web")
    cfg = ServiceConfig(gallery=tmp_path / "g", protect_reads=True, max_upload_bytes=64 * 1024,
                        report_dir=tmp_path / "report")  # fmt: skip
    srv = Server(create_app(cfg, Service(cfg)))
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/healthz").status_code == 200  # liveness stays open
            r = c.get("/v1/items")
            assert r.status_code == 401 and "bearer token" in r.json()["error"]
            assert c.get("/metrics").status_code == 401
            tok = (tmp_path / "g" / "service.token").read_text().strip()
            auth = {"Authorization": f"Bearer {tok}"}
            assert c.get("/v1/items", headers=auth).status_code == 200
            assert c.get("/v1/report", headers=auth).json()["metrics"] == {"top1": 0.5}
            r = c.get("/v1/report/file/..%2Fsecret.txt", headers=auth)
            assert r.status_code == 404 and "not for the web" not in r.text

            def chunks():  # no Content-Length: counted as it arrives
                for _ in range(20):
                    yield b"x" * 8192

            r = c.post("/v1/match", content=chunks(), headers={"Authorization": f"Bearer {tok}",
                                                              "Content-Type": "multipart/form-data; boundary=zz"})  # fmt: skip
            assert r.status_code == 413 and "65536" in r.json()["error"]
    finally:
        srv.stop()
