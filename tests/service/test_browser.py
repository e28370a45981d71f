"""The web app in a real headless chromium: Live over a fake-camera video, enrol on Items then Check.

Screenshots land in ``$SVC_SCREENSHOTS`` when set (the closing evidence), else in the test's tmp dir.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PIL import Image

from recognizer.data.synthetic import catalog_image, generate_video
from recognizer.models.model import load_model

from .browser import chrome, mp4_to_y4m, require_chromium
from .conftest import Server, make_gallery, png, wild

LIVE_MODEL = "lite0@160"
FPS = 10
ON_TABLE = ("item0000", "item0001", "item0002")


def shots(tmp_path: Path) -> Path:
    d = Path(os.environ.get("SVC_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def site(tmp_path_factory, items):
    """A server over 5 enrolled items (item0005 is left for the enrolment test) and a table video of 3 of them."""
    require_chromium()
    from recognizer.service import ServiceConfig, create_app
    from recognizer.service.core import Service

    d = tmp_path_factory.mktemp("site")
    make_gallery(d / "g", load_model(LIVE_MODEL), items, 0, spec=LIVE_MODEL)
    truth = generate_video(d / "table.mp4", [(i, items[i]) for i in ON_TABLE], seconds=14, fps=FPS, seed=1,
                           enter_after=4.0)  # fmt: skip
    video = mp4_to_y4m(d / "table.mp4", d / "table.y4m", FPS)
    cfg = ServiceConfig(gallery=d / "g")
    svc = Service(cfg)
    for i in list(items)[:5]:  # enrolled as users do, so the pages have photos to show
        svc.enrol(i, [(f"{i}.png", png(catalog_image(items[i], 200)))], name=f"Item {i[-1]}")
    srv = Server(create_app(cfg, svc))
    yield srv, svc, d, video, truth
    srv.stop()


def wait_for(fn, timeout: float, what: str, poll: float = 0.25):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_live_page_labels_the_fake_camera_video(site, tmp_path):
    from selenium.webdriver.common.by import By

    srv, svc, d, video, truth = site
    in_video = {i for _, vis in truth for i, _ in vis}
    assert in_video == set(ON_TABLE)
    drv = chrome(tmp_path / "profile", fake_video=video)
    try:
        drv.get(srv.url + "/app/live.html")
        wait_for(lambda: len(drv.find_elements(By.CSS_SELECTOR, "input.cand")) == 5, 20, "the candidate list")
        drv.find_element(By.ID, "start").click()
        observed: set[tuple[str, str]] = set()

        def snapshot() -> tuple[list[list[str]], set[str]]:
            # one script reads both lists at once: the page re-renders them every frame, so element
            # handles fetched one call earlier may already be gone (a stale element, not a failure)
            labels, seen = drv.execute_script(
                "const q = s => [...document.querySelectorAll(s)];"
                "return [q('#labels li').map(li => [li.dataset.label, li.dataset.box]),"
                "        q('#seen li').map(li => li.dataset.label)];")
            return labels, set(seen)

        def all_seen():
            labels, seen = snapshot()
            observed.update((lab, box) for lab, box in labels)
            return seen >= in_video and len(labels) >= 2

        try:
            wait_for(all_seen, 90, "every item on the table to be labelled")
        finally:
            status = drv.find_element(By.ID, "live-status").text
            drv.save_screenshot(str(shots(tmp_path) / "live.png"))
        seen = snapshot()[1]
        assert seen == in_video, (seen, status)  # no label of an item that is not on the table
        labels = {lab for lab, _ in observed}
        assert labels - {"unknown"} <= in_video, observed
        # each item glides in its own lane of the table: a labelled box must lie where that item was
        lanes = {i: (min(b[0] for _, vis in truth for j, b in vis if j == i),
                     max(b[0] + b[2] for _, vis in truth for j, b in vis if j == i)) for i in in_video}  # fmt: skip
        for lab, box in observed:
            if lab in lanes:
                x, _, w, _ = map(int, box.split(","))
                assert lanes[lab][0] - 20 <= x + w / 2 <= lanes[lab][1] + 20, (lab, box, lanes[lab])
        assert "frames/s" in status
    finally:
        drv.quit()


def test_enrol_by_upload_on_items_then_find_it_on_check(site, tmp_path, items):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    srv, svc, d, video, truth = site
    photos = []
    for k, size in enumerate((180, 220)):
        p = tmp_path / f"new_{k}.jpg"
        Image.fromarray(catalog_image(items["item0005"], size)).save(p, quality=92)
        photos.append(str(p))
    query = tmp_path / "query.jpg"
    Image.fromarray(wild(items, "item0005", seed=7)).save(query, quality=92)
    drv = chrome(tmp_path / "profile")
    try:
        drv.get(srv.url + "/app/items.html")
        wait_for(lambda: len(drv.find_elements(By.CSS_SELECTOR, ".card")) == 5, 20, "the item cards")
        drv.find_element(By.ID, "token").send_keys(svc.token, Keys.TAB)  # stored for the page's writes
        drv.find_element(By.ID, "enrol-id").send_keys("blue-box")
        drv.find_element(By.ID, "enrol-name").send_keys("Blue box")
        drv.find_element(By.ID, "enrol-files").send_keys("\n".join(photos))
        drv.find_element(By.ID, "enrol-submit").click()
        wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, '.card[data-item-id="blue-box"]'), 60, "the new card")
        assert "enrolled 2 photo(s)" in drv.find_element(By.ID, "enrol-status").text
        wait_for(lambda: drv.execute_script(
            "return [...document.querySelectorAll('.card img')].every(i => i.complete && (i.src || i.alt))"), 10, "thumbnails")
        drv.save_screenshot(str(shots(tmp_path) / "items.png"))

        drv.get(srv.url + "/app/check.html")
        drv.find_element(By.ID, "check-file").send_keys(str(query))
        rows = wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, "#results tr.hit"), 60, "the top-5")
        assert len(rows) == 5
        assert rows[0].get_attribute("data-item-id") == "blue-box", drv.find_element(By.ID, "results").text
        assert "Blue box" in rows[0].text and "Item 0" in drv.find_element(By.ID, "results").text
        wait_for(lambda: drv.execute_script(
            "const i = document.querySelector('#results tr.hit img'); return i.complete && i.naturalWidth > 0"),
            10, "the matched enrolled photo")  # fmt: skip
        drv.save_screenshot(str(shots(tmp_path) / "check.png"))
    finally:
        drv.quit()
    assert "blue-box" in svc.writer.item_ids
