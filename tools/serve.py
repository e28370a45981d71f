#!/usr/bin/env python
"""Serve a gallery over HTTP: the JSON API (docs at /docs) and the web app (Items, Live, Check, Report).

  python tools/serve.py --gallery G [--host 127.0.0.1] [--port 8000] [--protect-reads] [--report reports/grocery]

Writes (enrolment, rename, removal) need the bearer token from --token-file (default
G/service.token; generated with mode 0600 at first start). Matching uses the gallery's
model and stored (calibrated) photo settings; the Live page its camera settings.
--batch-max-images 1 turns micro-batching off; --photo-query KEY=VALUE,... overrides stored settings.
"""

from __future__ import annotations

import argparse
import sys

from recognizer.gallery import GalleryError
from recognizer.matching.settings import parse_query_settings
from recognizer.models.model import ModelLoadError
from recognizer.service import ServiceConfig, serve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--token-file", help="bearer token file for writes (default GALLERY/service.token)")
    ap.add_argument("--protect-reads", action="store_true", help="reads need the token too")
    ap.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit (HTTP 413 above)")
    ap.add_argument("--batch-max-images", type=int, default=16, help="micro-batch size; 1 turns batching off")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    ap.add_argument("--uploads-dir", help="where enrolled photos are kept (default GALLERY/uploads)")
    ap.add_argument("--report", help="a tools/report.py output folder for the Report page")
    ap.add_argument("--photo-query", help="override the gallery's stored photo-query settings, e.g. rerank=none,zoom=0.6")
    ap.add_argument("--model", help="the gallery's model, if its recorded spec moved")
    ap.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    ap.add_argument("--onnx", help="an ONNX export the gallery accepts (--backend onnx)")
    ap.add_argument("--threads", type=int, help="ONNX Runtime threads")
    ap.add_argument("--ssl-certfile", help="serve HTTPS (phones give the Live page their camera only over https)")
    ap.add_argument("--ssl-keyfile", help="the certificate's private key")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    try:
        cfg = ServiceConfig(
            gallery=args.gallery, model_spec=args.model, backend=args.backend, onnx=args.onnx, threads=args.threads,
            token_file=args.token_file, protect_reads=args.protect_reads,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), batch_max_images=args.batch_max_images,
            batch_wait_ms=args.batch_wait_ms, photo_query=parse_query_settings(args.photo_query or ""), uploads_dir=args.uploads_dir, report_dir=args.report,
        )  # fmt: skip
        serve(cfg, args.host, args.port, args.log_level, args.ssl_certfile, args.ssl_keyfile)
    except (GalleryError, ModelLoadError, ValueError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
