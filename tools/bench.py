#!/usr/bin/env python
"""Benchmarks with baselines measured in the same run; writes bench.json and bench.md.

python tools/bench.py --out bench_out                 # full size (gallery: 10,000 items x 100 = 1M x 256)
python tools/bench.py --out bench_out --quick         # small sizes, for a smoke run
python tools/bench.py --suite gallery --items 2000 --per-item 50
python tools/bench.py --suite commit --quick          # add-one-item commit time at 1k and 10k vectors
python tools/bench.py --suite unseen --model head=runs/grocery_head/model   # trained vs off-the-shelf lite0
python tools/bench.py --suite deploy --model student=runs/s1_student/model --size 224 --query-stride 2

The suites live in benchmarks/ (benchmarks/run.py, one module per suite in benchmarks/suites/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks.run import SUITES, markdown_table, run_bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--suite", action="append", choices=list(SUITES), help="suite(s) to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--items", type=int, help="gallery suite: number of items")
    ap.add_argument("--per-item", type=int, help="gallery suite: vectors per item")
    ap.add_argument("--dim", type=int, help="gallery and commit suites: embedding dimension")
    ap.add_argument(
        "--datasets",
        help="query_options suite: comma-separated (covers, grocery_packages, grocery_unseen, coil_unseen)",
    )
    ap.add_argument("--configs", help="query_options suite: comma-separated option names (default: all)")
    ap.add_argument("--query-stride", type=int, help="query_options and deploy suites: keep every n-th query")
    ap.add_argument(
        "--model", action="append", metavar="LABEL=SPEC",
        help="unseen and deploy suites: a model to compare with the off-the-shelf lite0 (repeatable), "
        "e.g. head=runs/x/model; a backbone name works too (lite2=lite2)",
    )  # fmt: skip
    ap.add_argument(
        "--size", type=int, action="append", help="deploy suite: input size(s) (default 160 and 224)"
    )
    ap.add_argument(
        "--gallery-size", type=int, action="append", metavar="N",
        help="commit suite: gallery size(s) in vectors (default 10k, 100k, 1M; --quick: 1k, 10k)",
    )  # fmt: skip
    ap.add_argument("--max-queries", type=int, help="unseen suite: evaluate at most this many queries")
    ap.add_argument("--camera-backend", choices=("torch", "onnx"),
                    help="camera_table suite: embed crops with torch or a verified fp32 ONNX export made in the run")  # fmt: skip
    ap.add_argument("--threads", type=int, help="camera_table suite: threads for torch / ONNX Runtime")
    ap.add_argument("--camera-seeds", type=int, help="camera_table suite: render each scene with this many seeds (a summary over them)")
    ap.add_argument("--camera-configs", help="camera_table suite: comma-separated configurations (default: all)")
    ap.add_argument("--camera-evidence", help="camera_table suite: a folder for the annotated video and per-frame states of `table`")
    ap.add_argument("--camera-budget", type=int, help="camera_table suite: crops a frame for every configuration (default: measured once per run)")
    args = ap.parse_args(argv)
    unseen_over: dict = {}
    deploy_over: dict = {k: v for k, v in (("sizes", args.size), ("query_stride", args.query_stride)) if v}
    if args.model:
        bad = [m for m in args.model if "=" not in m]
        if bad:
            ap.error(f"--model takes LABEL=SPEC, got {bad[0]!r}")
        unseen_over["models"] = {
            "lite0 (off the shelf)": "lite0",
            **dict(m.split("=", 1) for m in args.model),
        }
        deploy_over["models"] = ["lite0", *args.model]
    if args.max_queries:
        unseen_over["max_queries"] = args.max_queries
    query_over = {
        k: v
        for k, v in (
            ("datasets", tuple(args.datasets.split(",")) if args.datasets else None),
            ("configs", tuple(args.configs.split(",")) if args.configs else None),
            ("query_stride", args.query_stride),
        )
        if v
    }
    gallery_over = {
        k: v for k, v in (("n_items", args.items), ("per_item", args.per_item), ("dim", args.dim)) if v
    }
    commit_over = {
        k: v for k, v in (("sizes", tuple(args.gallery_size or ()) or None), ("dim", args.dim)) if v
    }
    camera_over = {k: v for k, v in (("backend", args.camera_backend), ("threads", args.threads), ("seeds", args.camera_seeds),
                                     ("configs", tuple(args.camera_configs.split(",")) if args.camera_configs else None),
                                     ("evidence", args.camera_evidence), ("budget", args.camera_budget)) if v}  # fmt: skip
    doc = run_bench(
        args.suite or list(SUITES), args.out, quick=args.quick, gallery=gallery_over, query_options=query_over,
        unseen=unseen_over, deploy=deploy_over, commit=commit_over, camera_table=camera_over,
    )  # fmt: skip
    print(markdown_table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
