"""The bad-input corpus, through every tool: enroll, match, report and train.

Each input must end in a clear error (exit code 2, one message naming the file, row or
gallery) or in a row skipped and reported, never a traceback and never a partial write: after
every run the gallery verifies with its vectors unchanged (or grown only by good rows) and no
temporary file is left behind. The outcome table is written to ``$BAD_INPUT_TABLE`` when set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from recognizer.gallery import Gallery

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))  # its helper, also when this file runs alone
from test_imageio import _png_header_only  # noqa: E402

MODEL = "lite0@64"
OUTCOMES: list[tuple[str, str, str]] = []  # (input, tool, outcome)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, errors="replace"
    )


def _tool(tool: str, *args: str) -> subprocess.CompletedProcess:
    extra = {"enroll": ["--no-progress"], "match": ["--no-progress"], "report": ["--no-progress"]}.get(
        tool, []
    )
    return _run(f"tools/{tool}.py", *args, *extra)


def _record(case: str, tool: str, r: subprocess.CompletedProcess, outcome: str) -> None:
    assert "Traceback" not in r.stderr, f"{case} through {tool} crashed:\n{r.stderr[-3000:]}"
    OUTCOMES.append((case, tool, outcome))


def _error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    return lines[-1][:160] if lines else ""


def _no_temp_files(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    assert not left, f"temporary files left in {folder}: {left}"


def _write_corpus(data: Path, catalog: Path) -> dict[str, str]:
    """Copy the tiny catalog and add one file per bad kind; returns case -> relative path."""
    shutil.copytree(catalog.parent, data, dirs_exist_ok=True)
    bad = data / "bad"
    bad.mkdir()
    rng = np.random.default_rng(0)
    photo = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(bad / "full.jpg", "JPEG")
    raw = (bad / "full.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not an image\n")
    _png_header_only(bad / "bomb.png", 20000, 20000)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(bad / "alpha.png")
    Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(bad / "sixteen.png")
    Image.fromarray(photo).convert("CMYK").save(bad / "cmyk.jpg", "JPEG")
    Image.fromarray(photo).convert("P").save(bad / "palette.gif")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(bad / "one_px.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo).save(bad / "exif.jpg", "JPEG", exif=exif.tobytes())
    Image.fromarray(photo).save(bad / "with space.jpg", "JPEG", quality=80)
    Image.fromarray(photo).save(bad / "ünïcødé.jpg", "JPEG", quality=70)
    return {
        "truncated JPEG": "bad/truncated.jpg",
        "0-byte file": "bad/empty.jpg",
        "text file named .jpg": "bad/text.jpg",
        "20000x20000 header (bomb)": "bad/bomb.png",
        "missing file": "bad/missing.jpg",
        "PNG with alpha": "bad/alpha.png",
        "16-bit PNG": "bad/sixteen.png",
        "CMYK JPEG": "bad/cmyk.jpg",
        "palette GIF": "bad/palette.gif",
        "1x1 image": "bad/one_px.png",
        "EXIF-rotated photo": "bad/exif.jpg",
        "file name with spaces": "bad/with space.jpg",
        "unicode file name": "bad/ünïcødé.jpg",
    }


UNREADABLE = {
    "truncated JPEG",
    "0-byte file",
    "text file named .jpg",
    "20000x20000 header (bomb)",
    "missing file",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_catalog):
    root = tmp_path_factory.mktemp("bad_inputs")
    data = root / "data"
    cases = _write_corpus(data, tiny_catalog)
    good = (data / tiny_catalog.name).read_text(encoding="utf-8").splitlines()
    # bad and odd files as extra photos of item0000 (train split, so training reads them too)
    rows = good + [f'"{p}",item0000,train,query' for p in cases.values()]
    rows.append(good[1])  # a duplicate row
    (data / "corpus.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    enroll_rows = [good[0]] + [f'"{p}",odd,train,gallery' for p in cases.values()]
    enroll_rows.append(enroll_rows[-1])  # a duplicate row
    (data / "corpus_enroll.csv").write_text("\n".join(enroll_rows) + "\n", encoding="utf-8")
    g = root / "gallery"
    r = _tool("enroll", "--gallery", str(g), "--manifest", str(data / tiny_catalog.name), "--model", MODEL)
    assert r.returncode == 0, r.stderr
    return {"root": root, "data": data, "cases": cases, "gallery": g, "good_rows": good}


def _gallery_state(g: Path) -> tuple[int, list[str]]:
    gal = Gallery.open(g)
    gal.verify()
    return len(gal), sorted(gal.item_ids)


def test_image_corpus_through_enroll_match_report_train(corpus):
    data, g, cases = corpus["data"], corpus["gallery"], corpus["cases"]
    # enroll: a copy of the gallery, so the shared one stays as the other tests expect
    g2 = corpus["root"] / "gallery_enroll"
    shutil.copytree(g, g2)
    n0, _ = _gallery_state(g2)
    r = _tool("enroll", "--gallery", str(g2), "--manifest", str(data / "corpus_enroll.csv"))
    assert r.returncode == 0, r.stderr
    n1, _ = _gallery_state(g2)
    out = r.stdout + r.stderr
    for case, path in cases.items():
        if case in UNREADABLE:
            assert Path(path).name in out, (case, out[-2000:])
            _record(case, "enroll", r, "row skipped, reported with the loader's reason")
        else:
            _record(case, "enroll", r, "enrolled")
    assert "duplicate" in out.lower()
    _record("duplicate row", "enroll", r, "row skipped, reported as duplicate")
    # every readable odd file enrolled once; the catalog rows were already there (skipped as identical)
    assert n1 - n0 == 2 * (len(cases) - len(UNREADABLE))  # every readable odd file, once (x the 2 default views)
    _no_temp_files(g2)

    pred = corpus["root"] / "pred.csv"
    r = _tool("match", "--gallery", str(g), "--manifest", str(data / "corpus.csv"), "--out", str(pred))
    assert r.returncode == 0, r.stderr
    lines = pred.read_text(encoding="utf-8").splitlines()
    matched = "\n".join(lines)
    for case, path in cases.items():
        if case in UNREADABLE:
            assert Path(path).name not in matched and Path(path).name in r.stdout + r.stderr, case
            _record(case, "match", r, "row skipped, reported")
        else:
            assert Path(path).name in matched, case
            _record(case, "match", r, "matched")
    _no_temp_files(corpus["root"])

    rep = corpus["root"] / "report"
    r = _tool("report", "--gallery", str(g), "--manifest", str(data / "corpus.csv"), "--out", str(rep))
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    for case, path in cases.items():
        if case in UNREADABLE:
            assert Path(path).name in out, case
            _record(case, "report", r, "row skipped, listed as failed in the report")
        else:
            _record(case, "report", r, "evaluated")
    doc = json.loads((rep / "metrics.json").read_text())
    assert doc["metrics"]["queries"] > 0 and len(doc["skipped"]) == len(UNREADABLE)
    assert _gallery_state(g)[0] == 16  # the 8 catalog photos x 2 views, untouched by the bad queries

    run = corpus["root"] / "train"
    r = _tool("train", "--manifest", str(data / "corpus.csv"), "--out", str(run), "model.input_size=64",
              "stage1.epochs=1", "stage1.copies=0", "data.val_fraction=0.4", "sampler.batch_size=6", "sampler.m=2",
              "data.num_workers=0")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    skipped = json.loads((run / "summary.json").read_text())["skipped"]
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    for case, path in cases.items():
        if case in UNREADABLE:
            assert Path(path).name in reasons, (case, reasons)
            _record(case, "train", r, "image skipped, listed in summary.json")
        else:
            assert Path(path).name not in reasons, (case, reasons)
            _record(case, "train", r, "trained on")
    assert any("duplicate" in s["reason"] for s in skipped)
    _record("duplicate row", "train", r, "row skipped, listed in summary.json")


def test_non_utf8_file_name(corpus):
    """A file whose name is not UTF-8: enrolled by --images (the shell passes bytes); in a manifest the
    raw byte makes line 2 non-UTF-8, and the manifest is refused naming that line (exit 2)."""
    data = corpus["data"]
    name = os.fsencode(str(data / "bad")) + b"/latin\xe9.jpg"
    with open(name, "wb") as f:
        f.write((data / "bad" / "exif.jpg").read_bytes())
    g2 = corpus["root"] / "gallery_nonutf8"
    shutil.copytree(corpus["gallery"], g2)
    r = subprocess.run(
        [sys.executable.encode(), b"tools/enroll.py", b"--gallery", os.fsencode(str(g2)), b"--item", b"latin",
         b"--images", name, b"--no-progress"],
        cwd=ROOT, capture_output=True, timeout=600,
    )  # fmt: skip
    err = r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and r.returncode == 0, err
    assert "latin" in Gallery.open(g2).item_ids
    OUTCOMES.append(("non-UTF-8 file name", "enroll --images", "enrolled"))
    man = data / "nonutf8.csv"
    man.write_bytes(b"path,item_id\n" + name.split(b"/")[-1].join([b"bad/", b",latin\n"]))
    before = _gallery_state(g2)
    r = _tool("enroll", "--gallery", str(g2), "--manifest", str(man))
    assert r.returncode == 2 and "line 2 is not valid UTF-8" in r.stderr, r.stdout + r.stderr
    _record("non-UTF-8 file name", "enroll --manifest", r, f"error: {_error_line(r)}")
    assert _gallery_state(g2) == before
    r = _tool("match", "--gallery", str(g2), "--manifest", str(man), "--out", str(corpus["root"] / "p8.csv"))
    assert r.returncode == 2 and "line 2 is not valid UTF-8" in r.stderr, r.stdout + r.stderr
    assert not (corpus["root"] / "p8.csv").exists()
    _record("non-UTF-8 file name", "match", r, f"error: {_error_line(r)}")


BAD_MANIFESTS = {
    "unknown column": "path,item_id,colour\nx.jpg,a,red\n",
    "no item_id column": "path,label\nx.jpg,a\n",
    "unbalanced quote": 'path,item_id\n"catalog/item0000.png,item0000\n',
    "Latin-1 encoded": "path,item_id\ncatalog/item0000.png,caf\xe9\n",
    "UTF-16 encoded": "path,item_id\ncatalog/item0000.png,item0000\n",
    "empty file": "",
}
# The exit code of each tool on each bad manifest (every one has no usable row). A manifest that cannot be
# read as a whole (header, encoding, empty) is refused: 2. The unbalanced quote spoils only its row: the
# row is skipped and reported by line, then enroll exits 1 (nothing added), report and train exit 2 (no
# usable rows) and match exits 0, writing a predictions file with no rows.
EXIT_CODES = {case: dict.fromkeys(("enroll", "match", "report", "train"), 2) for case in BAD_MANIFESTS}
EXIT_CODES["unbalanced quote"].update(enroll=1, match=1)  # every row bad: non-zero, but no error


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifests_through_every_tool(corpus, case):
    data = corpus["data"]
    p = data / f"m_{case.replace(' ', '_')}.csv"
    text = BAD_MANIFESTS[case]
    if case == "Latin-1 encoded":
        p.write_bytes(text.encode("latin-1"))
    elif case == "UTF-16 encoded":
        p.write_bytes(text.encode("utf-16"))
    else:
        p.write_text(text, encoding="utf-8")
    g = corpus["root"] / f"g_{p.stem}"
    shutil.copytree(corpus["gallery"], g)
    before = _gallery_state(g)
    runs = {
        "enroll": _tool("enroll", "--gallery", str(g), "--manifest", str(p)),
        "match": _tool("match", "--gallery", str(g), "--manifest", str(p), "--out", str(g.parent / f"{p.stem}.pred.csv")),
        "report": _tool("report", "--gallery", str(g), "--manifest", str(p), "--out", str(g.parent / f"{p.stem}.rep")),
        "train": _tool("train", "--manifest", str(p), "--out", str(g.parent / f"{p.stem}.run"), "model.input_size=64"),
    }  # fmt: skip
    for tool, r in runs.items():
        out = r.stdout + r.stderr
        assert r.returncode == EXIT_CODES[case][tool], (tool, r.returncode, out[-1500:])
        assert p.name in out, (tool, out[-1500:])  # the message names the manifest
        if case == "unbalanced quote":
            assert "line 2: malformed CSV" in out and "skipped" in out, (tool, out[-1500:])
        if r.returncode == 2:
            _record(case, tool, r, f"error: {_error_line(r)}")
        else:
            _record(case, tool, r, f"bad row(s) skipped and reported by line (exit {r.returncode})")
    assert _gallery_state(g) == before
    _no_temp_files(g)
    pred = g.parent / f"{p.stem}.pred.csv"
    if runs["match"].returncode == 1:  # nothing matched: a header-only predictions file
        assert pred.read_text(encoding="utf-8").splitlines() == [
            "path,item_id,pred_item_id,score,accepted,topk_ids,topk_scores"
        ]
    else:
        assert not pred.exists()


def test_gallery_problems(corpus, tiny_catalog):
    data, g = corpus["data"], corpus["gallery"]
    root = corpus["root"]
    # unknown candidate ids
    lines = corpus["good_rows"][:1] + [f"{ln},nope;item0001" for ln in corpus["good_rows"][1:4]]
    man = data / "cands.csv"
    man.write_text(lines[0] + ",candidates\n" + "\n".join(lines[1:]) + "\n", encoding="utf-8")
    # match skips each query row naming an unknown id (both query rows here: nothing is matched) and exits 1
    r = _tool("match", "--gallery", str(g), "--manifest", str(man), "--out", str(root / "c.csv"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "matched 0 image(s)" in r.stdout and r.stdout.count("candidate id(s) not in the gallery: nope") == 2
    assert len((root / "c.csv").read_text(encoding="utf-8").splitlines()) == 1  # the header only
    _record("unknown candidate ids", "match", r, "rows skipped, naming the unknown id (exit 1: no row matched)")
    # report refuses the whole manifest
    r = _tool("report", "--gallery", str(g), "--manifest", str(man), "--out", str(root / "c.rep"))
    assert r.returncode == 2 and "not in the gallery: nope" in r.stderr, r.stdout + r.stderr
    _record("unknown candidate ids", "report", r, f"error: {_error_line(r)}")
    # an empty gallery
    empty = root / "empty"
    Gallery.create(empty, Gallery.open(g).model_description, model_spec=MODEL)
    for tool in ("match", "report"):
        r = _tool(
            tool, "--gallery", str(empty), "--manifest", str(tiny_catalog), "--out", str(root / f"e.{tool}")
        )
        assert r.returncode == 2 and "empty" in r.stderr.lower(), r.stderr[-1500:]
        _record("empty gallery", tool, r, f"error: {_error_line(r)}")
    # a gallery from another model
    for tool, args in (
        ("enroll", ["--manifest", str(tiny_catalog), "--model", "lite0@96"]),
        ("match", ["--manifest", str(tiny_catalog), "--model", "lite0@96", "--out", str(root / "o.csv")]),
        ("report", ["--manifest", str(tiny_catalog), "--model", "lite0@96", "--out", str(root / "o.rep")]),
    ):
        r = _tool(tool, "--gallery", str(g), *args)
        assert r.returncode == 2 and "model" in r.stderr, r.stderr[-1500:]
        _record("gallery from another model", tool, r, f"error: {_error_line(r)}")
    assert _gallery_state(g)[0] == 16  # the 8 catalog photos x 2 views, untouched by the bad queries
    # corrupted gallery files: the index, then the database
    for what in ("index file", "database"):
        bad = root / f"corrupt_{what.replace(' ', '_')}"
        shutil.copytree(g, bad)
        if what == "index file":
            idx = Gallery.open(bad).segment_files()[-1]
            idx.write_bytes(idx.read_bytes()[:100])
        else:
            (bad / "gallery.sqlite").write_bytes(b"not a database" * 100)
        for tool, args in (
            ("enroll", ["--manifest", str(tiny_catalog)]),
            ("match", ["--manifest", str(tiny_catalog), "--out", str(root / "x.csv")]),
            ("report", ["--manifest", str(tiny_catalog), "--out", str(root / "x.rep")]),
        ):
            r = _tool(tool, "--gallery", str(bad), *args)
            assert r.returncode == 2 and str(bad.name) in r.stderr, (what, tool, r.stderr[-1500:])
            _record(f"corrupted gallery {what}", tool, r, f"error: {_error_line(r)}")


def test_zz_write_outcome_table():
    """Collects the outcomes of this module (runs last by name) into a Markdown table."""
    if not OUTCOMES:
        pytest.skip("run with the rest of the module")
    lines = ["| input | tool | outcome |", "|---|---|---|"]
    lines += [f"| {c} | {t} | {o.replace('|', '/')} |" for c, t, o in OUTCOMES]
    table = "\n".join(lines) + "\n"
    dest = os.environ.get("BAD_INPUT_TABLE")
    if dest:
        Path(dest).write_text(table, encoding="utf-8")
    assert len({c for c, _, _ in OUTCOMES}) >= 20
