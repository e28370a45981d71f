"""Shared by the suites: timing (medians, taken in turns), memory readings and the repository's data paths.

Timings on a shared 2-core machine are noisy, so figures are medians of repeats, and figures
that are compared take turns (a, b, a, b, ...) so that a change in the machine's load hits
both alike.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = REPO_ROOT / "data_manifests"
SHARED_DATA = Path(os.environ.get("RECOGNIZER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    return interleaved_medians({"fn": fn}, repeats, warmup)["fn"]


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run in turns (a, b, a, b, ...) after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> None:
    """Linux: restart the VmHWM high-water mark (``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_since_reset_mb() -> float:
    """Peak resident memory since :func:`reset_peak_rss` (Linux; else since the process started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def rss_mb() -> float:
    """Current resident memory of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def clustered_vectors(n_items: int, per_item: int, dim: int, seed: int, cosine: float = 0.8) -> np.ndarray:
    """``n_items*per_item x dim`` unit vectors, ``per_item`` around each item centre (like photos of one item)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_items, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sigma = np.sqrt((1.0 / cosine**2 - 1.0) / dim)
    out = np.repeat(centres, per_item, axis=0)
    for i in range(0, len(out), 100_000):  # in place, in chunks, to bound memory
        blk = out[i : i + 100_000]
        blk += rng.standard_normal(blk.shape, dtype=np.float32) * np.float32(sigma)
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
    return out


def protocol_queries(manifest: Path, data_root: Path, query_stride: int, max_queries: int):
    """``(manifest, queries)`` of a real-data protocol (every ``query_stride``-th query, at most
    ``max_queries``; 10 random candidates each where the manifest names none), or ``None`` with the
    reason when its data or manifest is missing."""
    from recognizer.data.manifest import load_manifest

    if not data_root.is_dir() or not manifest.is_file():
        return None, f"no data at {data_root} or no manifest {manifest}"
    m = load_manifest(manifest, data_root)
    return (m, select_queries(m, query_stride, max_queries)), ""


def select_queries(m, query_stride: int, max_queries: int) -> list:
    """Every ``query_stride``-th query row, at most ``max_queries``, each with candidates (10 random
    enrolled items including its own where the manifest names none)."""
    from recognizer.data.candidates import with_candidates

    queries = m.select(role="query")[::query_stride][:max_queries]
    if any(not r.candidates for r in queries):
        queries = with_candidates(queries, sorted({r.item_id for r in m.rows if r.role != "query"}), 10, 0)
    return queries


def protocols_markdown(res: dict[str, Any], table: Callable[[str, dict[str, Any]], list[str]]) -> str:
    """One section per protocol of ``res["by_protocol"]``: its heading, then ``table(name, cell)``'s lines."""
    out: list[str] = []
    for name, cell in res["by_protocol"].items():
        if "skipped" in cell:
            out += [f"### {name}: skipped ({cell['skipped']})", ""]
            continue
        out += [f"### {name}: {cell['items']} items, {cell['queries']} queries", "", *table(name, cell), ""]
    return "\n".join(out)
