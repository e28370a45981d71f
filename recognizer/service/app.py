"""The FastAPI application: the versioned JSON API, the web app, JSON errors, metrics.

Every error a client can cause answers JSON ``{"error": message, "status": code}`` with
400 (bad image, bad item id), 401 (token), 404 (unknown item), 409 (empty gallery, only
duplicates), 413 (upload too large) or 422 (missing or invalid field, unknown candidate);
a 500 is a bug. No CORS headers are sent: the web app is served by the same origin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..gallery import GalleryError, GalleryLockedError, UnknownItemError
from ..matching.camera_config import CameraConfig
from .config import ServiceConfig
from .core import PHOTO_PX, THUMB_PX, Service
from .live import LiveSessions
from .metrics import Metrics
from .security import BodySizeLimit, ServiceError, check_bearer
from .uploads import decode_image, describe

log = logging.getLogger("recognizer.service")
API_VERSION = "v1"
TOP_K_MAX = 50
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN", "Referrer-Policy": "no-referrer"}


class ItemUpdate(BaseModel):
    """PATCH body: a new display name and/or attributes (replacing the old ones)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200)
    attributes: dict[str, Any] | None = None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        msg = "missing" if e.get("type") == "missing" else e.get("msg", "invalid")
        parts.append(f"{where or 'request'}: {msg}")
    return "invalid request: " + "; ".join(parts)


def parse_candidates(text: str | None) -> list[str] | None:
    """``A,B,C`` or a JSON list -> ids (None when empty)."""
    if text is None or not text.strip():
        return None
    if text.lstrip().startswith("["):
        try:
            ids = json.loads(text)
        except json.JSONDecodeError as e:
            raise ServiceError(422, f"candidates: not a JSON list ({e})") from None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ServiceError(422, "candidates: a JSON list of item id strings expected")
    else:
        ids = [c.strip() for c in text.split(",")]
    return list(dict.fromkeys(i for i in ids if i)) or None


def web_file(name: str) -> tuple[bytes, str]:
    """A file of the web app shipped in ``recognizer/service/web`` (importlib.resources, no file paths)."""
    root = resources.files(__package__).joinpath("web")
    known = {p.name for p in root.iterdir() if p.is_file()}
    if name not in known:
        raise ServiceError(404, f"no page {name!r}; pages: {', '.join(sorted(known))}")
    return root.joinpath(name).read_bytes(), mimetypes.guess_type(name)[0] or "application/octet-stream"


def create_app(cfg: ServiceConfig, service: Service | None = None) -> FastAPI:
    """The application over ``cfg.gallery`` (pass ``service`` to share one in tests)."""
    svc = service or Service(cfg, Metrics())
    live = LiveSessions(cfg.gallery, svc.model, svc.metrics, cfg.live_sessions)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        svc.close()

    app = FastAPI(title="recognizer", version=API_VERSION, description=__doc__, lifespan=lifespan, docs_url=None)
    app.state.service = svc
    _install_docs(app)

    def need_write(request: Request) -> None:
        check_bearer(request.headers.get("authorization"), svc.token)

    def need_read(request: Request) -> None:
        if cfg.protect_reads:
            check_bearer(request.headers.get("authorization"), svc.token)

    _install_handlers(app, svc, cfg)
    write, read = [Depends(need_write)], [Depends(need_read)]

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/app/items.html")

    @app.get("/app/{name}", include_in_schema=False)
    def app_file(name: str) -> Response:
        data, ctype = web_file(name)
        return Response(data, media_type=ctype, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        g = svc.reader
        return {"status": "ok", "items": len(g.item_ids), "vectors": len(g), "generation": g.generation,
                "model": g.fingerprint, "protect_reads": cfg.protect_reads,
                "batching": {"max_images": cfg.batch_max_images, "wait_ms": cfg.batch_wait_ms}}  # fmt: skip

    @app.get("/metrics", tags=["ops"], dependencies=read)
    def metrics() -> Response:
        return Response(svc.metrics.render(), media_type=svc.metrics.content_type)

    @app.post(f"/{API_VERSION}/match", tags=["match"], dependencies=read)
    async def match(
        images: Annotated[list[UploadFile], File(description="one or more photos")],
        candidates: Annotated[str | None, Form(description="item ids to choose among: A,B,C or a JSON list")] = None,
        top_k: Annotated[int, Form(ge=1, le=TOP_K_MAX)] = 5,
        explain: Annotated[bool, Form(description="add the enrolled photo each top-k item matched best")] = False,
    ) -> dict[str, Any]:
        """Match photos; per image: item, display name, score, accepted (else label ``unknown``), top-k."""
        if len(images) > cfg.max_images_per_request:
            raise ServiceError(422, f"{len(images)} images in one request; the limit is {cfg.max_images_per_request}")
        cands = parse_candidates(candidates)
        t0 = time.perf_counter()
        arrays = []
        for i, f in enumerate(images):
            data = await f.read()
            arrays.append(await run_in_threadpool(decode_image, data, describe(f.filename, i)))
        svc.metrics.stage.labels("decode").observe(time.perf_counter() - t0)
        results = await asyncio.wrap_future(svc.match(arrays, cands, top_k, explain))
        return {"matches": [dict(r, image=f.filename) for r, f in zip(results, images, strict=True)],
                "threshold": svc.reader.threshold, "margin": svc.reader.margin}  # fmt: skip

    _item_routes(app, svc, write, read)

    @app.post(f"/{API_VERSION}/live/frame", tags=["live"], dependencies=read)
    def live_frame(
        frame: Annotated[UploadFile, File()], session: Annotated[str, Form()],
        candidates: Annotated[str | None, Form()] = None, proposals: Annotated[str, Form()] = CameraConfig.proposals,
    ) -> dict[str, Any]:  # fmt: skip
        """One camera frame (JPEG) of a Live session; returns the visible tracks' boxes and labels."""
        rgb = decode_image(frame.file.read(), describe(frame.filename, 0))
        return live.frame(session, parse_candidates(candidates), proposals, rgb)

    @app.get(f"/{API_VERSION}/report", tags=["report"], dependencies=read)
    def report() -> dict[str, Any]:
        """The latest batch report (``tools/report.py --out DIR``, served with ``--report DIR``)."""
        if cfg.report_dir is None:
            raise ServiceError(404, "no report folder configured: start the service with --report DIR")
        p = cfg.report_dir / "metrics.json"
        if not p.is_file():
            raise ServiceError(404, f"no report yet: {p} is missing (run tools/report.py --out {cfg.report_dir})")
        html = (cfg.report_dir / "report.html").is_file()
        return {"metrics": json.loads(p.read_text()), "modified": p.stat().st_mtime,
                "html": f"/{API_VERSION}/report/file/report.html" if html else None}  # fmt: skip

    @app.get(f"/{API_VERSION}/report/file/{{name:path}}", include_in_schema=False, dependencies=read)
    def report_file(name: str) -> Response:
        root = cfg.report_dir.resolve() if cfg.report_dir else None
        p = (root / name).resolve() if root else None
        if p is None or not p.is_relative_to(root) or not p.is_file():
            raise ServiceError(404, f"no report file {name!r}")
        return Response(p.read_bytes(), media_type=mimetypes.guess_type(p.name)[0] or "application/octet-stream")

    return app


def _item_routes(app: FastAPI, svc: Service, write: list, read: list) -> None:
    v = API_VERSION

    @app.get(f"/{v}/items", tags=["items"], dependencies=read)
    def list_items() -> dict[str, Any]:
        """Every item: id, display name, attributes, vector count, thumbnail URL."""
        return {"items": svc.items()}

    @app.get(f"/{v}/items/{{item_id:path}}/thumbnail", tags=["items"], dependencies=read)
    def thumbnail(item_id: str) -> Response:
        return Response(svc.photo(item_id, None, THUMB_PX), media_type="image/jpeg")

    @app.get(f"/{v}/items/{{item_id:path}}/photos/{{vid}}", tags=["items"], dependencies=read)
    def photo(item_id: str, vid: int) -> Response:
        return Response(svc.photo(item_id, vid, PHOTO_PX), media_type="image/jpeg")

    @app.post(f"/{v}/items/{{item_id:path}}/photos", tags=["items"], dependencies=write, status_code=201)
    def enrol(
        item_id: str, photos: Annotated[list[UploadFile], File()],
        name: Annotated[str | None, Form(max_length=200)] = None,
    ) -> dict[str, Any]:
        """Enrol photos of an item (created when new); crash-safe like ``tools/enroll.py``."""
        return svc.enrol(item_id, [(f.filename or "", f.file.read()) for f in photos], name)

    @app.get(f"/{v}/items/{{item_id:path}}", tags=["items"], dependencies=read)
    def get_item(item_id: str) -> dict[str, Any]:
        return svc.item(item_id)

    @app.patch(f"/{v}/items/{{item_id:path}}", tags=["items"], dependencies=write)
    def update_item(item_id: str, body: ItemUpdate) -> dict[str, Any]:
        """Change the display name and/or attributes."""
        return svc.update(item_id, body.name, body.attributes)

    @app.delete(f"/{v}/items/{{item_id:path}}", tags=["items"], dependencies=write)
    def remove_item(item_id: str) -> dict[str, Any]:
        return svc.remove(item_id)


def _endpoint(app: FastAPI, scope) -> str:
    for r in app.router.routes:
        m, _ = r.matches(scope)
        if m == Match.FULL:
            return getattr(r, "path", "other")
    return "unmatched"


def _install_docs(app: FastAPI) -> None:
    """``/docs`` with Swagger UI served from the swagger-ui-bundle package: FastAPI's default page loads it
    from a CDN, which an offline machine cannot reach."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title="recognizer API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js", swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png",
        )  # fmt: skip


def _install_handlers(app: FastAPI, svc: Service, cfg: ServiceConfig) -> None:
    app.add_middleware(BodySizeLimit, limit=cfg.max_upload_bytes)  # inside the metrics middleware below
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(UnknownItemError)
    async def unknown_item(_: Request, exc: UnknownItemError) -> JSONResponse:
        return _error(404, str(exc).replace(f" {cfg.gallery}", ""))

    @app.exception_handler(GalleryLockedError)
    async def locked(_: Request, exc: GalleryLockedError) -> JSONResponse:
        return _error(503, f"the gallery is busy (another writer holds its lock): {exc}", {"Retry-After": "5"})

    @app.exception_handler(GalleryError)
    async def gallery_error(_: Request, exc: GalleryError) -> JSONResponse:
        return _error(409, str(exc).replace(f" {cfg.gallery}", ""))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return _error(exc.status_code, msg, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - answered as JSON by the handler above in normal flow
            log.exception("unhandled error")
            response = _error(500, f"internal error ({type(exc).__name__}); see the server log")
        for k, val in _SECURITY_HEADERS.items():
            response.headers.setdefault(k, val)
        svc.metrics.observe_request(_endpoint(app, request.scope), request.method, response.status_code,
                                    time.perf_counter() - t0)  # fmt: skip
        return response


def serve(cfg: ServiceConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:  # fmt: skip
    """Run the service with uvicorn until interrupted (HTTPS with a certificate: phones' browsers
    give a page the camera only on https or on localhost)."""
    import uvicorn

    svc = Service(cfg, Metrics())
    where = f"{cfg.token_file} (mode 0600)"
    print(f"write token {'generated in' if svc.token_created else 'read from'} {where}", flush=True)
    scheme = "https" if ssl_certfile else "http"
    print(f"serving {cfg.gallery} ({len(svc.reader.item_ids)} items) on {scheme}://{host}:{port}/ "
          f"(API docs /docs, web app /app/items.html)", flush=True)  # fmt: skip
    uvicorn.run(create_app(cfg, svc), host=host, port=port, log_level=log_level, ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile)  # fmt: skip
