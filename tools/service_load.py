#!/usr/bin/env python
"""Closing evidence for the service on loopback: 8 clients matching shelf photos for 60 s while a
9th enrols 20 items, with micro-batching on and off; then kill -9 during an enrolment and a retry.

  python tools/service_load.py --out service_load_out [--seconds 60] [--clients 8]

Needs the grocery data (../shared/data/grocery) and the manifests in data_manifests/. Writes
service_load.json and service_load.md into --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recognizer.service.loadtest import main_run

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--enrol-items", type=int, default=20)
    ap.add_argument("--model", default="lite0", help="model of the base gallery")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "grocery"))
    ap.add_argument("--manifests", default=str(ROOT / "data_manifests"))
    args = ap.parse_args(argv)
    if not Path(args.data_root).is_dir():
        print(f"error: no grocery data at {args.data_root} (--data-root)", file=sys.stderr)
        return 2
    main_run(Path(args.out), ROOT / "tools" / "serve.py", Path(args.manifests), Path(args.data_root),
             seconds=args.seconds, clients=args.clients, n_enrol=args.enrol_items, model=args.model)  # fmt: skip
    print((Path(args.out) / "service_load.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
