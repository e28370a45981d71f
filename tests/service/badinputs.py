"""The bad-input table: each wrong request the API must answer with a JSON error naming the problem.

Used by ``test_api.py`` and, for the closing evidence, runnable against a live server:
``python -m tests.service.badinputs URL TOKEN PHOTO LIMIT_BYTES`` prints a markdown table.
"""

from __future__ import annotations

import struct
import sys
import zlib

import httpx


def huge_png(w: int = 20000, h: int = 20000) -> bytes:
    """A valid PNG header claiming ``w x h`` pixels (a decompression bomb's header), a few bytes long."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def cases(token: str, photo: bytes, limit: int) -> list[tuple[str, str, str, dict, int]]:
    """``(what, method, path, httpx kwargs, expected status)``."""
    ok = {"Authorization": f"Bearer {token}"}
    img = lambda name, data: {"files": [("images", (name, data, "image/jpeg"))]}  # noqa: E731
    enrol = lambda data, name="p.jpg": {"files": [("photos", (name, data, "image/jpeg"))], "headers": ok}  # noqa: E731
    return [
        ("corrupt image (random bytes)", "POST", "/v1/match", img("corrupt.jpg", b"\x13\x37" * 500), 400),
        ("truncated JPEG", "POST", "/v1/match", img("half.jpg", photo[: len(photo) // 2]), 400),
        ("0-byte image", "POST", "/v1/match", img("empty.jpg", b""), 400),
        ("huge image (20000x20000 header)", "POST", "/v1/match", img("bomb.png", huge_png()), 400),
        ("over the loader's pixel limit (9000x9000 header)", "POST", "/v1/match", img("big.png", huge_png(9000, 9000)), 400),
        ("missing field (no images)", "POST", "/v1/match", {"data": {"top_k": "3"}}, 422),
        ("top_k out of range", "POST", "/v1/match", {**img("ok.jpg", photo), "data": {"top_k": "0"}}, 422),
        ("unknown candidate", "POST", "/v1/match", {**img("ok.jpg", photo), "data": {"candidates": "item0000,ghost"}}, 422),
        ("corrupt photo in an enrolment", "POST", "/v1/items/bad-photo/photos", enrol(b"not an image"), 400),
        ("bad item id (';')", "POST", "/v1/items/a;b/photos", enrol(photo), 400),
        ("bad item id (path separator)", "POST", "/v1/items/..%2Fetc/photos", enrol(photo), 400),
        ("bad item id (control character)", "POST", "/v1/items/a%01b/photos", enrol(photo), 400),
        ("bad item id (300 characters)", "POST", "/v1/items/" + "x" * 300 + "/photos", enrol(photo), 400),
        ("enrolment without photos", "POST", "/v1/items/no-photos/photos", {"data": {"name": "x"}, "headers": ok}, 422),
        ("no token", "POST", "/v1/items/no-token/photos", {"files": [("photos", ("p.jpg", photo, "image/jpeg"))]}, 401),
        ("wrong token", "POST", "/v1/items/wrong-token/photos",
         {**enrol(photo), "headers": {"Authorization": "Bearer " + "x" * 43}}, 401),  # fmt: skip
        ("wrong token on delete", "DELETE", "/v1/items/item0000", {"headers": {"Authorization": "Bearer nope"}}, 401),
        ("rename an unknown item", "PATCH", "/v1/items/ghost", {"json": {"name": "x"}, "headers": ok}, 404),
        ("rename with an unknown field", "PATCH", "/v1/items/item0000", {"json": {"colour": "red"}, "headers": ok}, 422),
        ("delete an unknown item", "DELETE", "/v1/items/ghost", {"headers": ok}, 404),
        ("oversized upload", "POST", "/v1/items/too-big/photos", enrol(photo + b"\x00" * (limit + 1)), 413),
        ("oversized match upload", "POST", "/v1/match", img("big.jpg", b"\xff" * (limit + 1)), 413),
    ]


def bad_input_table(client: httpx.Client, token: str, photo: bytes, limit: int) -> list[dict]:
    rows = []
    for what, method, path, kw, expected in cases(token, photo, limit):
        r = client.request(method, path, **kw)
        try:
            body = r.json()
            message = body.get("error")
        except ValueError:
            message = None
        rows.append({"case": what, "request": f"{method} {path[:60]}", "status": r.status_code,
                     "expected": expected, "message": message, "json": r.headers.get("content-type", "")})  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| case | request | status | message |", "|---|---|---|---|"]
    for r in rows:
        msg = (r["message"] or "").replace("|", "\\|")
        lines.append(f"| {r['case']} | `{r['request']}` | {r['status']} | {msg[:220]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    url, token, photo_path, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with httpx.Client(base_url=url, timeout=60) as c, open(photo_path, "rb") as f:
        print(markdown(bad_input_table(c, token, f.read(), limit)))
