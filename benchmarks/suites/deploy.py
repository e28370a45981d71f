"""Suite ``deploy``: backbone x backend (torch, ONNX fp32, ONNX int8) x input size: images/s, latency,
MB and grocery-unseen top-1; JSON and Markdown (:func:`deploy_markdown`, :func:`write_deploy_table`).

The measurements are the package's (``recognizer.deploy``: ``export_model``, ``measure_speeds``,
``evaluate_top1``, ``tune_cpu``); this module picks what to measure and where the data lies
(``data_manifests/`` and ``../shared/data`` of this repository). All timings of one table are
taken in one process, one configuration after the other; on a shared machine they are medians,
and the machine's load is recorded with them.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..common import MANIFESTS, REPO_ROOT, SHARED_DATA

BACKEND_NAMES = ("torch", "onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static")
DEFAULT_MANIFEST = MANIFESTS / "grocery_unseen.csv"
DEFAULT_DATA_ROOT = SHARED_DATA / "grocery"
# static int8 calibrates on the training items' photos: never on the images it is evaluated on
DEFAULT_CALIBRATION = MANIFESTS / "grocery_train.csv"
QUICK = {"quick": True}


def split_label(entry: str) -> tuple[str, str]:
    """``LABEL=SPEC`` -> (label, spec); a bare spec is labelled by its name (a folder called
    ``model`` by its parent, e.g. ``runs/student/model`` -> ``student``)."""
    if "=" in entry:
        label, spec = entry.split("=", 1)
        return label, spec
    p = Path(entry)
    if not p.is_dir():
        return entry, entry
    return (p.parent.name if p.name == "model" and p.parent.name else p.name), entry


def _load_at_size(spec: str, size: int):
    """The model of ``spec`` at input ``size``: ``name@size`` for a backbone name, else the
    checkpoint with its preprocessing resized (as the demo does)."""
    from recognizer.models.model import load_model

    if Path(spec).is_dir():
        m = load_model(spec)
        m.preprocess = m.preprocess.with_size(size)
        return m, str(Path(spec).resolve())
    name = spec.split("@")[0]
    return load_model(f"{name}@{size}"), f"{name}@{size}"


def run_deploy_table(
    models: Sequence[str] | None = None,
    *,
    sizes: Sequence[int] | None = None,
    backends: Sequence[str] = ("torch", "onnx-fp32", "onnx-int8-dynamic"),
    manifest: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    calibration: str | os.PathLike | None = None,
    query_stride: int = 1,
    batch: int = 32,
    repeats: int = 5,
    latency_runs: int = 30,
    n_verify: int = 32,
    n_calibration: int = 64,
    threads: int | None = None,
    quick: bool = False,
    workdir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    tune: bool = False,
    single_thread: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Backbone x backend x input size: img/s at ``batch``, single-image latency, model MB, top-1.

    ``models``: backbone names (``lite0``, ``lite1``, ``lite2``) and/or trained model folders
    (e.g. the distilled student), each optionally ``LABEL=SPEC``; default lite0, lite1, lite2. ``sizes``: default 160, 224.
    ``backends``: any of :data:`BACKEND_NAMES`. Accuracy: top-1 on ``manifest`` (default the
    grocery unseen items, data root ``../shared/data/grocery``; skipped with a note when the
    data is absent), gallery = ``role=gallery`` rows, queries = every ``query_stride``-th
    ``role=query`` row, the same query options (``recognizer.deploy.EVAL_QUERY_OPTIONS``) for all.
    Each int8 row reports its top-1 loss against the fp32 ONNX row (else torch).

    ``quick``: a smoke run in seconds: one model (``lite0`` unless given), size 64, a
    6-item synthetic catalog for accuracy and verification, few timing runs.
    ``single_thread``: also time every backend with one thread (torch and ONNX Runtime): on a
    shared machine a 2-thread team waits at every operator for a descheduled thread, so the
    one-thread figures are the steadier comparison of the backends themselves.
    ``tune``: also run ``recognizer.deploy.tune_cpu`` on the first model at the largest size (torch threads
    1..N x batch 1/32 x channels_last, ``torch.compile``, ONNX Runtime threads).
    Writes ``deploy.json`` and ``deploy.md`` into ``out_dir`` when given.
    """
    import torch

    from recognizer.data.manifest import load_manifest
    from recognizer.deploy import (
        EVAL_QUERY_OPTIONS_TEXT,
        ExportError,
        evaluate_top1,
        export_model,
        machine_info,
        measure_speeds,
        model_size_mb,
        parameter_count,
        tune_cpu,
    )
    from recognizer.models.onnx import OnnxEmbedder

    say = log or (lambda msg: None)
    unknown = [b for b in backends if b not in BACKEND_NAMES]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKEND_NAMES)}")
    tmp = Path(tempfile.mkdtemp(prefix="deploy_table_", dir=workdir))
    notes: list[str] = []
    try:
        if quick:
            models = list(models or ["lite0"])[:1]
            sizes = list(sizes or [64])
            repeats, latency_runs, n_verify, n_calibration = 1, 3, 4, 4
            if manifest is None:
                from recognizer.data.synthetic import generate_catalog

                manifest = generate_catalog(tmp / "catalog", n_items=6, n_wild=2, seed=0, size=96)
                data_root = None
        models = list(models or ["lite0", "lite1", "lite2"])
        sizes = list(sizes or [160, 224])
        if manifest is None:
            manifest, data_root = DEFAULT_MANIFEST, DEFAULT_DATA_ROOT
            if calibration is None and DEFAULT_CALIBRATION.is_file():
                calibration = DEFAULT_CALIBRATION
        ev_manifest = None
        if Path(manifest).is_file() and (data_root is None or Path(data_root).is_dir()):
            ev_manifest = load_manifest(manifest, data_root)
            verify_src = (str(manifest), data_root)
            calibration = str(calibration or manifest)
        else:
            notes.append(f"accuracy skipped: no data at {manifest} / {data_root}")
            verify_src, calibration = (None, None), None
        doc: dict[str, Any] = {
            "suite": "deploy",
            "quick": quick,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(threads),
            "settings": {
                "models": models,
                "sizes": sizes,
                "backends": list(backends),
                "batch": batch,
                "repeats": repeats,
                "latency_runs": latency_runs,
                "n_verify": n_verify,
                "n_calibration": n_calibration,
                "query_stride": query_stride,
                "manifest": str(manifest),
                "calibration": None if ev_manifest is None else calibration,
                "data_root": str(ev_manifest.data_root) if ev_manifest else None,
                "query_options": EVAL_QUERY_OPTIONS_TEXT,
                "threads": int(threads or torch.get_num_threads()),
            },  # fmt: skip
            "rows": [],
            "notes": notes,
        }
        t_all = time.perf_counter()
        fp32_files: dict[tuple[str, int], Path] = {}
        for entry in models:
            label, spec = split_label(entry)
            for size in sizes:
                model, mspec = _load_at_size(spec, size)
                exports: dict[str, Any] = {}
                onnx_backends = [b for b in backends if b != "torch"]
                if onnx_backends:
                    modes = [b.rsplit("-", 1)[1] for b in onnx_backends if "int8" in b]
                    t0 = time.perf_counter()
                    try:
                        for e in export_model(
                            model, tmp / f"{label}_{size}", int8=modes, calibration=calibration,
                            data_root=verify_src[1], verification=verify_src[0], verification_data_root=verify_src[1],
                            n_verify=n_verify, n_calibration=n_calibration,
                            threads=threads, strict=False, model_spec=mspec,
                        ):  # fmt: skip
                            exports["onnx-fp32" if e.precision == "fp32" else f"onnx-{e.precision}"] = e
                            if e.precision == "fp32":
                                fp32_files[(spec, size)] = e.path
                    except ExportError as err:
                        notes.append(f"{label}@{size}: export failed: {err}")
                    say(f"{label}@{size}: exported {sorted(exports)} in {time.perf_counter() - t0:.0f} s")
                group: dict[str, Any] = {}
                rows: dict[str, dict[str, Any]] = {}
                for b in backends:
                    row: dict[str, Any] = {"model": label, "spec": mspec, "input_size": size, "backend": b}
                    rows[b] = row
                    if b == "torch":
                        group[b] = model
                        row.update(precision="fp32", runtime=f"torch {torch.__version__}")
                    elif b in exports:
                        e = exports[b]
                        group[b] = emb = OnnxEmbedder(e.path, threads=threads)
                        row.update(
                            precision=e.precision, runtime=f"onnxruntime {emb.providers[0]}",
                            exporter=e.sidecar["exporter"], verification=e.verification,
                            equivalent=emb.equivalent, quantization=e.sidecar.get("quantization"),
                        )  # fmt: skip
                    else:
                        row["error"] = "no export"
                load = list(os.getloadavg())
                speeds = measure_speeds(group, batch=batch, repeats=repeats, latency_runs=latency_runs)
                one = _single_thread_speeds(group, batch, repeats, latency_runs) if single_thread else {}
                for b, emb in group.items():
                    row = rows[b]
                    row.update(speeds[b], load_average=load, size_mb=model_size_mb(emb))
                    if b in one:
                        row["single_thread"] = one[b]
                    row["parameters"] = parameter_count(model)
                    if ev_manifest is not None:
                        row["accuracy"] = evaluate_top1(
                            emb, ev_manifest, query_stride=query_stride, workdir=tmp
                        )
                    say(
                        f"{label}@{size} {b}: {row['images_per_second']:.1f} img/s, {row['latency_ms']:.1f} ms, "
                        f"{row['size_mb']:.1f} MB"
                        + (f", top-1 {row['accuracy']['top1']:.3f}" if "accuracy" in row else "")
                    )
                doc["rows"].extend(rows.values())
                del group
        _add_int8_loss(doc["rows"])
        if tune:
            (label, spec), size = split_label(models[0]), max(sizes)
            t0 = time.perf_counter()
            n = int(threads or torch.get_num_threads())
            doc["tuning"] = {
                "model": f"{label}@{size}",
                "rows": tune_cpu(
                    _load_at_size(spec, size)[0],
                    threads=sorted({1, n}),
                    batch_sizes=(1, batch),
                    channels_last=(False, True),
                    compile=not quick,
                    onnx=fp32_files.get((spec, size)),
                    repeats=repeats if quick else 3,
                ),  # fmt: skip
                "load_average": list(os.getloadavg()),
            }
            say(f"tuning {doc['tuning']['model']}: {time.perf_counter() - t0:.0f} s")
        doc["seconds"] = time.perf_counter() - t_all
        doc["machine"]["load_average_end"] = list(os.getloadavg())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if out_dir is not None:
        write_deploy_table(doc, out_dir)
    return doc


def _single_thread_speeds(
    group: dict[str, Any], batch: int, repeats: int, latency_runs: int
) -> dict[str, Any]:
    """:func:`measure_speeds` with one thread: torch's thread count set to 1 meanwhile, ONNX
    Runtime through one-thread sessions of the same files."""
    import torch

    from recognizer.deploy import measure_speeds
    from recognizer.models.onnx import OnnxEmbedder

    one = {
        b: OnnxEmbedder(e.path, threads=1) if getattr(e, "backend", "torch") == "onnx" else e
        for b, e in group.items()
    }
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure_speeds(one, batch=batch, repeats=repeats, latency_runs=latency_runs)
    finally:
        torch.set_num_threads(old)


def _add_int8_loss(rows: list[dict[str, Any]]) -> None:
    """Top-1 points lost by each int8 row against fp32 ONNX of the same model and size (else torch),
    with McNemar's exact test on the same queries; then drops the per-query hits from the rows."""
    from recognizer.evaluation.metrics import mcnemar_exact

    by_key = {(r["model"], r["input_size"], r["backend"]): r for r in rows}
    for r in rows:
        if "int8" not in r["backend"] or "accuracy" not in r:
            continue
        for ref in ("onnx-fp32", "torch"):
            base = by_key.get((r["model"], r["input_size"], ref))
            if base is not None and "accuracy" in base:
                r["int8_top1_loss"] = base["accuracy"]["top1"] - r["accuracy"]["top1"]
                r["int8_loss_vs"] = ref
                a, b = base["accuracy"]["hits_by_line"], r["accuracy"]["hits_by_line"]
                common = sorted(set(a) & set(b))
                if common:
                    n01, n10, p = mcnemar_exact(
                        np.array([a[q] for q in common]), np.array([b[q] for q in common])
                    )
                    r["int8_mcnemar"] = {"fp32_only_correct": n01, "int8_only_correct": n10, "p": p}
                break
    for r in rows:
        if "accuracy" in r:
            r["accuracy"].pop("hits_by_line", None)


def deploy_markdown(doc: dict[str, Any]) -> str:
    """The table as Markdown, with the settings and machine it was measured on."""
    from recognizer.deploy.model_card import verification_cell

    st, mc = doc["settings"], doc["machine"]
    acc0 = next((r["accuracy"] for r in doc["rows"] if r.get("accuracy")), None)
    n_items = acc0["items"] if acc0 else "-"
    if st["query_stride"] == 1:
        queries = f"all {acc0['queries'] if acc0 else ''} role=query rows"
    else:
        nth = {2: "2nd", 3: "3rd"}.get(st["query_stride"], f"{st['query_stride']}th")
        queries = f"every {nth} role=query row ({acc0['queries'] if acc0 else '-'} queries)"
    lines = [
        f"# Deployment speed and accuracy ({'quick smoke run' if doc.get('quick') else 'full table'})",
        "",
        f"Measured {doc['date']} on {mc['cpu']} ({mc['cores']} cores, {st['threads']} threads for torch and "
        f"ONNX Runtime); load average {', '.join(f'{x:.2f}' for x in mc['load_average'])} at start, "
        f"{', '.join(f'{x:.2f}' for x in mc.get('load_average_end', []))} at end (the machine is shared: "
        "timings are medians, compare rows measured together). "
        f"Versions: {', '.join(f'{k} {v}' for k, v in mc['versions'].items())}.",
        "",
        f"- img/s: embedding only (preprocessed input, no decoding), batch {st['batch']}, median of "
        f"{st['repeats']} batches; latency: one image, median of {st['latency_runs']} runs; the backends of one "
        "model and size take turns call by call. The 1-thread columns repeat this with one thread each.",
        "- MB: the .onnx file; for torch the float32 weights.",
        f"- top-1: `{_rel(st['manifest'])}` (data root `{_rel(st['data_root'])}`), gallery = the role=gallery rows "
        f"({n_items} items), queries = {queries}, "
        f"query options: {st['query_options']}; each backend enrolls and matches with its own embeddings "
        "(an int8 export gets a gallery of its own: the gallery rule refuses it for an fp32 gallery).",
        f"- verify: min / mean cosine of the export vs PyTorch on {st['n_verify']} images of the same manifest; "
        f"static int8 calibrated on {st.get('n_calibration')} images of `{_rel(st.get('calibration'))}`; "
        "fp32 must reach 0.999 (min), int8 0.98 (mean) and 0.95 (min).",
        "- int8 top-1 loss: fp32 top-1 minus int8 top-1 in points (negative: int8 scored higher); in brackets the "
        "queries only fp32 / only int8 got right and McNemar's exact p on the same queries.",
        "",
        "| backbone | input | backend | img/s (b32) | latency ms (b1) | img/s, 1 thread | latency ms, 1 thread | MB "
        "| top-1 | top-1 within candidates | int8 top-1 loss (points) | verify min / mean cos |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['input_size']} | {r['backend']} | {r['error']} | | | | | | | | |"
            )
            continue
        acc = r.get("accuracy") or {}
        top1 = f"{acc['top1']:.3f}" if acc else "-"
        wc = acc.get("top1_within_candidates")
        ver = verification_cell(r.get("verification"), failed=" (below bound)")
        one = r.get("single_thread")
        st1 = f"{one['images_per_second']:.1f} | {one['latency_ms']:.1f}" if one else "- | -"
        loss = ""
        if "int8_top1_loss" in r:
            loss = f"{100 * r['int8_top1_loss']:.1f} vs {r['int8_loss_vs']}"
            if "int8_mcnemar" in r:
                mn = r["int8_mcnemar"]
                loss += f" ({mn['fp32_only_correct']}/{mn['int8_only_correct']}, p={mn['p']:.2f})"
        lines.append(
            f"| {r['model']} | {r['input_size']} | {r['backend']} | {r['images_per_second']:.1f} | "
            f"{r['latency_ms']:.1f} | {st1} | {r['size_mb']:.1f} | {top1} | {'-' if wc is None else f'{wc:.3f}'} | "
            f"{loss} | {ver} |"
        )
    if doc.get("tuning"):
        tu = doc["tuning"]
        lines += [
            "",
            f"## CPU tuning: {tu['model']} (load average {', '.join(f'{x:.2f}' for x in tu['load_average'])})",
            "",
            "| backend | threads | channels_last | torch.compile | batch | img/s |",
            "|---|---|---|---|---|---|",
        ]
        for r in tu["rows"]:
            speed = (
                f"{r['images_per_second']:.1f}" if "images_per_second" in r else f"failed: {r.get('error')}"
            )
            if r.get("compile_seconds"):
                speed += f" (compiling took {r['compile_seconds']:.0f} s)"
            cl = {True: "yes", False: "no"}.get(r.get("channels_last"), "-")
            comp = "yes" if r.get("compile") else ("no" if r["backend"] == "torch" else "-")
            lines.append(
                f"| {r['backend']} {r.get('precision', '')} | {r['threads']} | {cl} | {comp} | {r['batch']} | {speed} |"
            )
    if doc.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in doc["notes"]]]
    lines += ["", f"Total {doc.get('seconds', 0):.0f} s.", ""]
    return "\n".join(lines)


def _rel(path: Any) -> str:
    """A path relative to the repository root where it lies near it (``../shared/...``), else as given."""
    if path is None:
        return "-"
    try:
        return os.path.relpath(path, REPO_ROOT)
    except ValueError:
        return str(path)


def write_deploy_table(doc: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``deploy.json`` and ``deploy.md`` in ``out_dir`` (atomic writes)."""
    from recognizer.fileio import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    return (
        write_json_atomic(out / "deploy.json", doc),
        write_text_atomic(out / "deploy.md", deploy_markdown(doc)),
    )
