"""CSV manifests: the single entry point for every dataset the recognizer reads.

A manifest is a CSV with a header. The schema lives in the constants below and one
validator, :func:`validate_row`, checks every row; loading reports each bad row by its
line number and keeps the good ones, so a batch tool can skip and report.

Paths are relative to a data root (by default the manifest's own folder) and may not
escape it unless the caller allows it explicitly.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..fileio import write_csv_atomic

REQUIRED_COLUMNS: tuple[str, ...] = ("path", "item_id")
OPTIONAL_COLUMNS: tuple[str, ...] = ("split", "role", "candidates", "bbox")
ALL_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
SPLITS: tuple[str, ...] = ("train", "val", "test")
ROLES: tuple[str, ...] = ("gallery", "query")
CANDIDATE_SEP = ";"


class ManifestError(Exception):
    """The manifest as a whole is unusable (unreadable, bad header), or strict loading found bad rows."""


@dataclass(frozen=True)
class RowError:
    """One rejected row: ``line`` is the 1-based line number in the CSV file (the header is line 1)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class ManifestRow:
    """One validated row. ``item_id`` may be empty only for unlabelled queries (``role=query``)."""

    line: int
    path: str
    item_id: str
    split: str = ""
    role: str = ""
    candidates: tuple[str, ...] | None = None
    bbox: tuple[float, float, float, float] | None = None


@dataclass
class Manifest:
    """Validated rows plus the rows that were rejected, and the folder paths are relative to."""

    source: str
    data_root: Path
    rows: list[ManifestRow]
    errors: list[RowError] = field(default_factory=list)
    columns: tuple[str, ...] = REQUIRED_COLUMNS

    def resolve(self, row: ManifestRow) -> Path:
        """The absolute file path of ``row``."""
        return self.data_root / row.path

    def select(self, *, split: str | None = None, role: str | None = None) -> list[ManifestRow]:
        """Rows with the given split and/or role."""
        return [
            r for r in self.rows if (split is None or r.split == split) and (role is None or r.role == role)
        ]

    @property
    def item_ids(self) -> list[str]:
        """Distinct labelled item ids, in first-seen order."""
        return list(dict.fromkeys(r.item_id for r in self.rows if r.item_id))

    def error_report(self, limit: int = 20) -> str:
        lines = [f"{self.source}: {len(self.errors)} bad row(s) skipped"]
        lines += [f"  {e}" for e in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"  ... and {len(self.errors) - limit} more")
        return "\n".join(lines)


def parse_candidates(text: str) -> tuple[str, ...]:
    """``"a;b;c"`` -> ``("a", "b", "c")``; raises ValueError on empty ids."""
    ids = tuple(s.strip() for s in text.split(CANDIDATE_SEP))
    if any(not s for s in ids):
        raise ValueError(f"candidates {text!r} has an empty id (ids are joined by '{CANDIDATE_SEP}')")
    if len(set(ids)) != len(ids):
        raise ValueError(f"candidates {text!r} repeats an id")
    return ids


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``"x y w h"`` in pixels -> a tuple; raises ValueError when malformed."""
    parts = text.replace(",", " ").split()
    if len(parts) != 4:
        raise ValueError(f"bbox {text!r} must be 4 numbers 'x y w h'")
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"bbox {text!r} must be 4 numbers 'x y w h'") from None
    if not all(map(_finite, (x, y, w, h))) or w <= 0 or h <= 0 or x < 0 or y < 0:
        raise ValueError(f"bbox {text!r} needs x,y >= 0 and w,h > 0")
    return (x, y, w, h)


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


def check_relative_path(path: str, *, allow_outside_root: bool = False) -> str:
    """Normalise a manifest path; refuse absolute paths and ``..`` escapes unless allowed."""
    if not path:
        raise ValueError("empty path")
    if "\x00" in path:
        raise ValueError("path contains a NUL byte")
    norm = path.replace("\\", "/")
    if allow_outside_root:
        return norm
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise ValueError(f"absolute path {path!r} is not allowed (paths are relative to --data-root)")
    depth = 0
    for part in PurePosixPath(norm).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise ValueError(f"path {path!r} escapes the data root")
    return norm


def validate_row(line: int, record: dict[str, str], *, allow_outside_root: bool = False) -> ManifestRow:
    """Validate one CSV record (column -> raw string). Raises ValueError with the reason."""
    path = check_relative_path((record.get("path") or "").strip(), allow_outside_root=allow_outside_root)
    item_id = (record.get("item_id") or "").strip()
    split = (record.get("split") or "").strip()
    role = (record.get("role") or "").strip()
    if split and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if role and role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not item_id and role != "query":
        raise ValueError("item_id is empty (only role=query rows may be unlabelled)")
    if CANDIDATE_SEP in item_id:
        raise ValueError(f"item_id {item_id!r} contains '{CANDIDATE_SEP}', the candidates separator")
    cand_text = (record.get("candidates") or "").strip()
    candidates = parse_candidates(cand_text) if cand_text else None
    bbox_text = (record.get("bbox") or "").strip()
    bbox = parse_bbox(bbox_text) if bbox_text else None
    return ManifestRow(line, path, item_id, split, role, candidates, bbox)


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ManifestError(
            f"{source}: line {line} is not valid UTF-8 (byte {raw[e.start]:#04x}); save the CSV as UTF-8"
        ) from None


def parse_manifest_text(
    text: str,
    *,
    source: str = "<manifest>",
    data_root: str | os.PathLike = ".",
    allow_outside_root: bool = False,
) -> Manifest:
    """Parse manifest CSV text. Bad rows go to ``Manifest.errors``; a bad header raises ManifestError."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(
            f"{source}: empty file, expected a header with {', '.join(REQUIRED_COLUMNS)}"
        ) from None
    except csv.Error as e:
        raise ManifestError(f"{source}: line 1: {e}") from None
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in ALL_COLUMNS]
    if unknown:
        raise ManifestError(
            f"{source}: unknown column(s) {', '.join(map(repr, unknown))}; valid columns: {', '.join(ALL_COLUMNS)}"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ManifestError(f"{source}: missing required column(s) {', '.join(missing)} in header {header}")
    if len(set(header)) != len(header):
        raise ManifestError(f"{source}: header repeats a column: {header}")

    rows: list[ManifestRow] = []
    errors: list[RowError] = []
    seen: dict[tuple[str, str, tuple | None], int] = {}
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            errors.append(RowError(line, f"malformed CSV ({e})"))
            continue
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line
        if len(fields) != len(header):
            errors.append(RowError(line, f"has {len(fields)} fields, the header has {len(header)}"))
            continue
        try:
            row = validate_row(
                line, dict(zip(header, fields, strict=True)), allow_outside_root=allow_outside_root
            )
        except ValueError as e:
            errors.append(RowError(line, str(e)))
            continue
        key = (row.path, row.item_id, row.bbox)
        if key in seen:
            errors.append(
                RowError(line, f"duplicate of line {seen[key]} ({row.path!r}, item {row.item_id!r})")
            )
            continue
        seen[key] = line
        rows.append(row)
    return Manifest(source, Path(data_root), rows, errors, tuple(header))


def load_manifest(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    *,
    strict: bool = False,
    allow_outside_root: bool = False,
) -> Manifest:
    """Load and validate a manifest file.

    ``data_root`` defaults to the manifest's folder. With ``strict=True`` any bad row raises
    :class:`ManifestError` listing them; otherwise they are kept in ``Manifest.errors``.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"{p}: manifest not found")
    root = Path(data_root) if data_root is not None else p.parent
    if not root.is_dir():
        raise ManifestError(f"{root}: data root is not a folder")
    m = parse_manifest_text(
        _decode(p.read_bytes(), str(p)), source=str(p), data_root=root, allow_outside_root=allow_outside_root
    )
    if strict and m.errors:
        raise ManifestError(m.error_report())
    return m


def write_manifest(
    path: str | os.PathLike, rows: Iterable[ManifestRow | dict], columns: Sequence[str] | None = None
) -> int:
    """Write rows (ManifestRow or dicts of column -> value) as a manifest CSV; returns the row count.

    Written to a temp file and renamed, so a reader never sees half a manifest.
    """
    dict_rows = [_row_to_dict(r) for r in rows]
    if columns is None:
        used = {k for d in dict_rows for k, v in d.items() if v not in ("", None)}
        columns = [c for c in ALL_COLUMNS if c in REQUIRED_COLUMNS or c in used]
    bad = [c for c in columns if c not in ALL_COLUMNS]
    if bad:
        raise ManifestError(f"unknown column(s) {bad}; valid columns: {', '.join(ALL_COLUMNS)}")
    write_csv_atomic(path, columns, ([d.get(c, "") for c in columns] for d in dict_rows))
    return len(dict_rows)


def _row_to_dict(r: ManifestRow | dict) -> dict[str, str]:
    if isinstance(r, dict):
        return {k: ("" if v is None else str(v)) for k, v in r.items()}
    return {
        "path": r.path,
        "item_id": r.item_id,
        "split": r.split,
        "role": r.role,
        "candidates": CANDIDATE_SEP.join(r.candidates) if r.candidates else "",
        "bbox": " ".join(f"{v:g}" for v in r.bbox) if r.bbox else "",
    }


def format_skipped(failures: Sequence[tuple[str, str]], limit: int = 20) -> list[str]:
    """Report lines for skipped rows, ``(where, why)`` each; nothing when there are none."""
    if not failures:
        return []
    lines = [f"skipped {len(failures)} bad row(s):"] + [f"  {w}: {why}" for w, why in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more")
    return lines


def manifest_of_files(paths: Sequence[str | os.PathLike], source: str = "command line") -> Manifest:
    """Unlabelled query rows for image files given directly (e.g. on a tool's command line)."""
    rows = [ManifestRow(i, os.fspath(p), "", role="query") for i, p in enumerate(paths, 1)]
    return Manifest(source, Path.cwd(), rows)
