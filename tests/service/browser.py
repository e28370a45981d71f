"""Headless Debian chromium under Selenium, and a fake-camera video for it; nothing is downloaded.

Without chromium and chromedriver the browser tests skip with the reason, except under
``CI=true`` (``.ci/run`` installs them), where they fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import in_ci

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,1000"]  # fmt: skip


def require_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists() and not shutil.which(Path(p).name)]
    if missing:
        msg = f"browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} missing: apt-get install chromium chromium-driver)"
        if in_ci():
            pytest.fail(msg + "; CI=true: the browser tests may not skip", pytrace=False)
        pytest.skip(msg)


def chrome(profile: Path, fake_video: Path | None = None):
    """A headless chromium with a fresh profile; ``fake_video`` (y4m) plays as the camera."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in [*FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    if fake_video is not None:
        opts.add_argument("--use-fake-device-for-media-stream")
        opts.add_argument("--use-fake-ui-for-media-stream")
        opts.add_argument(f"--use-file-for-fake-video-capture={fake_video}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def mp4_to_y4m(src: Path, dest: Path, fps: int) -> Path:
    """Re-encode a video as raw YUV 4:2:0 y4m, the format chromium's fake camera plays (looping)."""
    cap = cv2.VideoCapture(str(src))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    h, w = frames[0].shape[:2]
    with open(dest, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for bgr in frames:
            f.write(b"FRAME\n")
            f.write(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)).tobytes())
    return dest
