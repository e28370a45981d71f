"""Gallery versions: one gallery folder, several embeddings of it over time, one of them active.

A re-embed (``tools/enroll.py --reembed``) builds a gallery for a new model beside the old one and then
switches to it in one atomic step. The gallery folder ``G`` stays a real folder (its image store,
service token and uploads are shared by every version); what changes is which *version* of the
database and vector segments is active:

* version 1 is the gallery as it always was: ``G/gallery.sqlite`` and ``G/vectors.*.faiss``;
* version ``n`` (2, 3, ...) lives in ``G/v<n>/``, built first as ``G/v<n>.building/``;
* ``G/CURRENT`` (JSON: ``{"version": "v3", "previous": "v2", ...}``) names the active one; without
  it, version 1 is active. It is replaced by :func:`~recognizer.fileio.fsync_replace` (temp file,
  fsync, rename), so a reader, or a crash, sees the old pointer or the new one, never half of one:
  that rename is the commit of a re-embed.

``Gallery.open(G)`` follows the pointer. A process that opened an older version keeps reading it
(consistently, with its own model) until it reopens; its writes are refused
(:class:`~.errors.GallerySupersededError`), so nothing is committed to a version no one will read.
The version just replaced is kept (a reader may still be on it); older ones, and unfinished builds
left by a killed re-embed, are removed by the next re-embed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ..fileio import write_text_atomic
from .errors import GalleryCorruptError

POINTER = "CURRENT"
ROOT_VERSION = "."  # version 1: the gallery folder itself
BUILDING_SUFFIX = ".building"
_DIR = re.compile(r"v(\d+)(\.building)?")
# what a version keeps directly in its folder (version 1's files sit among the shared ones in G)
_VERSION_FILES = re.compile(r"gallery\.sqlite(-wal|-shm|\.tmp)?|vectors\.\d+\.faiss(\.tmp)?|ann\..*")


def read_pointer(home: str | os.PathLike) -> dict[str, Any] | None:
    """The ``CURRENT`` document of gallery folder ``home``, or None (version 1 is active)."""
    p = Path(home) / POINTER
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise GalleryCorruptError(f"{p}: unreadable version pointer ({e})") from None
    if not isinstance(doc, dict) or not _DIR.fullmatch(str(doc.get("version", ""))):
        raise GalleryCorruptError(f"{p}: bad version pointer {doc!r}")
    return doc


def active_name(home: str | os.PathLike) -> str:
    """The active version's folder name (``"."`` for version 1)."""
    doc = read_pointer(home)
    return ROOT_VERSION if doc is None else doc["version"]


def active_dir(home: str | os.PathLike) -> Path:
    """Where the active version's database and segments are."""
    name = active_name(home)
    return Path(home) if name == ROOT_VERSION else Path(home) / name


def number(name: str) -> int:
    """A version folder's number: ``"."`` is 1, ``v3`` and ``v3.building`` are 3."""
    if name == ROOT_VERSION:
        return 1
    m = _DIR.fullmatch(name)
    if not m:
        raise ValueError(f"{name!r} is not a gallery version folder (v<n>)")
    return int(m.group(1))


def name_of(home: str | os.PathLike, data_root: str | os.PathLike) -> str | None:
    """``data_root``'s version name within ``home`` (None when it is no version of ``home``)."""
    home, data_root = Path(home).absolute(), Path(data_root).absolute()
    if data_root == home:
        return ROOT_VERSION
    if data_root.parent == home and _DIR.fullmatch(data_root.name):
        return data_root.name
    return None


def is_superseded(home: str | os.PathLike, data_root: str | os.PathLike) -> str | None:
    """The active version's name when ``data_root`` is an older version of ``home`` (writes to it would be lost)."""
    mine = name_of(home, data_root)
    if mine is None:
        return None
    act = active_name(home)
    return act if number(act) > number(mine) else None


def listing(home: str | os.PathLike) -> dict[str, int]:
    """Every version folder in ``home`` (finished or not), name -> number; version 1 when its database is there."""
    home = Path(home)
    out = {ROOT_VERSION: 1} if (home / "gallery.sqlite").exists() else {}
    for p in home.iterdir() if home.is_dir() else ():
        if p.is_dir() and _DIR.fullmatch(p.name):
            out[p.name] = number(p.name)
    return out


def next_number(home: str | os.PathLike) -> int:
    """The number a new version gets: above every version folder present and the active one."""
    return max([number(active_name(home)), *listing(home).values()]) + 1


def switch(home: str | os.PathLike, version: str, previous: str, **extra: Any) -> None:
    """Make ``version`` (a finished folder in ``home``) active: one atomic replacement of ``CURRENT``."""
    home = Path(home)
    if not (home / version / "gallery.sqlite").is_file():
        raise GalleryCorruptError(f"{home / version}: no finished gallery version to switch to")
    doc = {"version": version, "previous": previous, "switched": time.time(), **extra}
    write_text_atomic(home / POINTER, json.dumps(doc, sort_keys=True) + "\n")


def remove_version(home: str | os.PathLike, name: str) -> None:
    """Delete one version's files (never the active one; version 1 leaves the shared files in ``home``)."""
    home = Path(home)
    if name == active_name(home):
        raise ValueError(f"{home}: refusing to remove the active version {name}")
    if name != ROOT_VERSION:
        shutil.rmtree(home / name, ignore_errors=True)
        return
    for p in home.iterdir():
        if p.is_file() and _VERSION_FILES.fullmatch(p.name):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def remove_unfinished(home: str | os.PathLike) -> list[str]:
    """Remove versions newer than the active one (builds of a killed re-embed). Call under the active
    version's writer lock: a running re-embed holds it, so its build is never taken for a leftover."""
    act = number(active_name(home))
    gone = [n for n, k in listing(home).items() if k > act]
    for n in gone:
        remove_version(home, n)
    return gone


def remove_older(home: str | os.PathLike, keep_from: int) -> list[str]:
    """Remove versions numbered below ``keep_from`` (never the active one)."""
    act = active_name(home)
    gone = [n for n, k in listing(home).items() if k < keep_from and n != act]
    for n in gone:
        remove_version(home, n)
    return gone
