"""The visual report in a real browser: headless Chromium renders it without console errors or broken
images, and the screenshot shows what the results say (a twin pair per gallery slot, the thumbnails
where the page puts them).

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``; ``.ci/run``
installs them) and selenium (the ``test`` extra). Skips, saying which is missing, where they are not.
"""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                  None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver "
                    f"(found browser {binary}, driver {driver})")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def _load_all_images(browser) -> None:
    """Make lazy images load (a screenshot only sees the first screen), then wait for every image."""
    browser.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; });")
    browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Promise.all(Array.from(document.images).map(i => i.complete ? null :
            new Promise(r => { i.onload = r; i.onerror = r; }))).then(() => done(true));""")


def test_report_renders_in_headless_chromium(small_world_study, tmp_path):
    from PIL import Image

    from dsi_bench.report import make_report
    from dsi_bench.results import Results

    path = small_world_study.out / "results" / "world-base.json"
    results = Results.load(path)
    cap = 4
    report = make_report(path, tmp_path / "report", max_pairs=cap, progress=False)
    browser = _browser()
    try:
        browser.set_script_timeout(30)
        browser.get(report.index.as_uri())
        _load_all_images(browser)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"console errors: {errors}"
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);")
        assert not broken, f"broken images: {broken}"
        # as many twin pairs as the results have flips and reverse flips, capped per gallery
        expected = sum(min(m[k], cap) for s, m in results.shifts.items() if s != "base"
                       for k in ("flips", "reverse_flips"))
        pairs = browser.execute_script("return document.querySelectorAll('figure.twin').length;")
        images_per_pair = browser.execute_script(
            "return Array.from(document.querySelectorAll('figure.twin')).map(f => f.querySelectorAll('img').length);")
        assert pairs == expected > 0 and set(images_per_pair) == {2}
        # the first pair of the night gallery, scrolled into view: the screenshot shows its two thumbnails
        rect = browser.execute_script("""
            const img = document.querySelector('#flips-at_night img');
            img.scrollIntoView({block: 'center'});
            const r = img.getBoundingClientRect(), s = img.nextElementSibling.getBoundingClientRect();
            return [r.left, r.top, r.width, r.height, s.left, s.top, img.getAttribute('src'),
                    img.nextElementSibling.getAttribute('src')];""")
        shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
        out = os.environ.get("DSI_BENCH_SCREENSHOT")
        if out:
            shot.save(out)
    finally:
        browser.quit()
    assert shot.size[0] >= 1000 and np.asarray(shot).std() > 10  # a page, not a blank
    for left, top, src in ((rect[0], rect[1], rect[6]), (rect[4], rect[5], rect[7])):
        box = tuple(int(round(v)) for v in (left + 4, top + 4, left + rect[2] - 4, top + rect[3] - 4))
        seen = np.asarray(shot.crop(box), float).mean((0, 1))
        thumb = np.asarray(Image.open(report.index.parent / src).convert("RGB"), float).mean((0, 1))
        assert np.abs(seen - thumb).max() < 12, f"{src}: screenshot mean colour {seen} vs thumbnail {thumb}"
    # the base twin (day) is much brighter than its night twin, on screen as in the files
    day, night = (np.asarray(shot.crop(tuple(int(v) for v in (x + 4, y + 4, x + rect[2] - 4, y + rect[3] - 4))),
                             float).mean() for x, y in ((rect[0], rect[1]), (rect[4], rect[5])))
    assert day > night + 40
