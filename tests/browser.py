"""Headless Debian Chromium for the report's browser tests and benchmarks/report_browser.py.

``chromium(tmp)`` starts Chromium through chromedriver (selenium) with no network use of
its own, a fresh profile and downloads allowed into ``tmp/downloads``; ``open_report``
loads a page and waits until its scripts are ready, returning the seconds that took;
``hover`` moves the mouse onto a point of an element; ``wait_file`` waits for a download;
``severe_logs`` lists console errors; ``phone`` gives the page a phone's viewport.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return "Chromium is missing: run `make setup` (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is missing: pip install -e '.[test]'"
    return None


def chromium(tmp: Path, *, width: int = 1280, height: int = 1800) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--no-first-run", "--disable-extensions", f"--window-size={width},{height}",
              f"--user-data-dir={tmp / 'profile'}"):  # fmt: skip
        opts.add_argument(a)
    opts.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(120)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior",
        {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
    )
    driver.downloads = downloads  # type: ignore[attr-defined]
    return driver


def open_report(driver: Any, page: Path, *, timeout: float = 60.0) -> float:
    """Load ``page`` from disk; seconds until its scripts said they were ready."""
    t0 = time.perf_counter()
    driver.get(page.resolve().as_uri())
    while time.perf_counter() - t0 < timeout:
        if driver.execute_script("return document.documentElement.getAttribute('data-ka-ready')"):
            return time.perf_counter() - t0
        time.sleep(0.01)
    raise TimeoutError(f"{page} did not become ready in {timeout} s")


def phone(driver: Any, width: int = 390, height: int = 844) -> None:
    """Make the page's viewport a phone's (``width`` CSS pixels, touch-sized, as Chrome's
    device mode does; a window cannot be made narrower than 500 px)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True},
    )


def ready_ms(driver: Any) -> float:
    """Milliseconds from navigation start to the page's ready mark (the browser's own clock)."""
    return float(
        driver.execute_script(
            "var m = performance.getEntriesByName('ka-ready'); return m.length ? m[0].startTime : -1;"
        )
    )


def hover(driver: Any, element: Any, x: float, y: float, *, scroll: bool = True) -> Any:
    """Move the mouse to ``(x, y)`` CSS pixels from ``element``'s top-left corner (returns
    the action chain, to click there too).

    WebDriver offsets are from the centre of the element's part inside the viewport, so the
    element is scrolled to the top of the view first (unless ``scroll`` is false) and the
    offset computed from its visible part.
    """
    from selenium.webdriver.common.action_chains import ActionChains

    if scroll:
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
    left, top, right, bottom = driver.execute_script(
        "var r = arguments[0].getBoundingClientRect();"
        "return [Math.max(r.left, 0) - r.left, Math.max(r.top, 0) - r.top,"
        " Math.min(r.right, innerWidth) - r.left, Math.min(r.bottom, innerHeight) - r.top];",
        element,
    )
    cx, cy = (left + right) / 2, (top + bottom) / 2
    chain = ActionChains(driver).move_to_element_with_offset(element, int(x - cx), int(y - cy))
    chain.perform()
    return chain


def wait_file(folder: Path, name: str, *, timeout: float = 30.0) -> Path:
    path = folder / name
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if path.exists() and not list(folder.glob("*.crdownload")) and path.stat().st_size > 0:
            return path
        time.sleep(0.05)
    raise TimeoutError(
        f"no download {name} in {folder} after {timeout} s: {list(folder.iterdir())}"
    )


def severe_logs(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def exercise_report(
    driver: Any, run_dir: Path, page: Path, *, shots: Path | None = None
) -> dict[str, Any]:
    """Open ``page`` (a copy of ``run_dir/index.html``) and check it against ``run_dir``:
    every image inline and loaded, nothing fetched; the explorer filtered by model, size and
    family; a hovered kernel's details equal to its kernels.parquet row; the CSV of the
    filtered kernels, of all of them, and summary.json downloaded and checked; 3x3 kernels
    drawn at >= 12 screen pixels per weight; the layer table sorted; no console error.
    Saves screenshots into ``shots`` when given. Returns what was measured."""
    import json

    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    from selenium.webdriver.support.ui import Select

    table = pq.read_table(run_dir / "kernels.parquet")  # a folder of parts
    table = table.drop([c for c in ("weights",) if c in table.column_names]).to_pandas()
    doc = json.loads((run_dir / "summary.json").read_text())
    out: dict[str, Any] = {"page_bytes": page.stat().st_size}
    out["open_s"] = open_report(driver, page)
    out["ready_ms"] = ready_ms(driver)
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.src.slice(0, 22), i.complete, i.naturalWidth]);"
    )
    assert len(images) == len(list((run_dir / "figures").glob("*.png"))) >= 6, len(images)
    assert all(src == "data:image/png;base64," and done and w > 0 for src, done, w in images)
    fetched = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert all(u.startswith(("data:", "blob:")) for u in fetched), fetched
    meta = driver.execute_script(
        "var x = window.kernelatlas.data.explorer; return [x.n, x.total, x.sampled, x.sources.map(s => s.source)]"
    )
    n_page, n_total, sampled, sources = meta
    out.update(kernels_in_page=n_page, kernels=n_total, sampled=sampled)
    assert n_total == len(table) and (sampled or n_page == n_total)
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shots / "report-top.png"))

    # Filter: the source with the most kernels of the most common size, its centre kernels.
    size = table.groupby(["kh", "kw"]).size().idxmax()
    key = f"{size[0]}x{size[1]}"
    sel_size = (table["kh"] == size[0]) & (table["kw"] == size[1])
    source = table.loc[sel_size, "source"].value_counts().idxmax()
    Select(driver.find_element("id", "ka-f-source")).select_by_value(str(sources.index(source)))
    Select(driver.find_element("id", "ka-f-size")).select_by_value(key)
    Select(driver.find_element("id", "ka-f-family")).select_by_value("center")
    want = table[sel_size & (table["source"] == source) & (table["family"] == "center")]
    shown_rows = driver.execute_script(
        "var e = window.kernelatlas.explorer; return Array.from(e.matches()).map(i => e.kernelInfo(i).row)"
    )
    if sampled:
        assert set(shown_rows) <= set(want.index) and len(set(shown_rows)) == len(shown_rows)
    else:
        assert shown_rows == list(want.index)
    status = driver.find_element("id", "ka-status").text
    assert status.startswith(f"{len(shown_rows):,} kernels match"), status
    out["filtered"] = len(shown_rows)

    # Hover the third kernel shown: its details are kernels.parquet's row.
    grid = driver.find_element("id", "ka-grid")
    cell, cols = int(grid.get_attribute("data-cell")), int(grid.get_attribute("data-cols"))
    k = min(2, len(shown_rows) - 1)
    hover(driver, grid, (k % cols + 0.5) * cell, (k // cols + 0.5) * cell)
    dl = driver.find_element("id", "ka-dl")
    row = int(dl.get_attribute("data-row"))
    assert row == shown_rows[k]
    r = table.iloc[row]

    def shown(name: str) -> str:
        return dl.find_element("css selector", f"dd[data-k='{name}']").text

    assert shown("layer") == r["layer"] and shown("channel") == str(r["channel"])
    assert shown("family") == "center" and shown("size") == key
    assert shown("source").endswith(source) or shown("source") == source
    assert shown("score") == f"{r['score']:.3f}"
    if "fit_r2" in table:
        assert shown("fit_r2") == f"{r['fit_r2']:.3f}"
    assert shown("scale") == f"{r['scale']:.2f} px"
    assert shown("polarity") == {1: "+1 (on)", -1: "−1 (off)"}[int(r["polarity"])]
    assert shown("classified") == "yes" and shown("orientation") == "–"
    thr = next(t["threshold"] for t in doc["thresholds"]
               if (t["kh"], t["kw"], t["family"]) == (*size, "center") and t["method"] == "atlas")  # fmt: skip
    explain = driver.find_element("id", "ka-explain").text
    assert f"threshold for {key} center: {thr:.3f}" in explain and "cosine" in explain
    # The colour bar says the hovered kernel's range.
    assert (
        float(driver.find_element("id", "ka-cb-hi").text)
        > 0
        > float(driver.find_element("id", "ka-cb-lo").text)
    )
    if shots:  # the explorer with this kernel pinned (clicked)
        driver.execute_script("document.getElementById('sec-explorer').scrollIntoView()")
        hover(
            driver, grid, (k % cols + 0.5) * cell, (k // cols + 0.5) * cell, scroll=False
        ).click().perform()
        driver.save_screenshot(str(shots / "report-explorer.png"))
        hover(
            driver, grid, (k % cols + 0.5) * cell, (k // cols + 0.5) * cell, scroll=False
        ).click().perform()

    # Downloads from inside the file.
    driver.find_element("css selector", "button[data-download='csv-filtered']").click()
    csv = pd.read_csv(wait_file(driver.downloads, "kernels-filtered.csv"))
    ref = table.iloc[shown_rows]
    assert list(csv["row"]) == shown_rows and "weights" not in csv.columns
    assert (csv["layer"] == ref["layer"].to_numpy()).all()
    assert (csv["channel"] == ref["channel"].to_numpy()).all()
    assert (csv["source"] == source).all() and (csv["family"] == "center").all()
    np.testing.assert_allclose(csv["score"], ref["score"], rtol=1e-6)
    if "fit_r2" in table:
        np.testing.assert_allclose(csv["fit_r2"], ref["fit_r2"], rtol=1e-6)
    driver.find_element("css selector", "button[data-download='csv-all']").click()
    assert len(pd.read_csv(wait_file(driver.downloads, "kernels.csv"))) == n_page
    driver.find_element("css selector", "button[data-download='summary']").click()
    assert json.loads(wait_file(driver.downloads, "summary.json").read_text()) == doc

    # 3x3 kernels are drawn at a readable size (>= 12 screen pixels per weight).
    if ((table["kh"] == 3) & (table["kw"] == 3)).any():
        Select(driver.find_element("id", "ka-f-source")).select_by_value("")
        Select(driver.find_element("id", "ka-f-size")).select_by_value("3x3")
        assert int(grid.get_attribute("data-min-px")) >= 12

    # The per-layer table sorts by a column (kernels).
    th = driver.find_element("css selector", "#ka-layer-table thead th:nth-child(6)")
    th.click()
    vals = driver.execute_script(
        "return Array.from(document.querySelectorAll('#ka-layer-table tbody tr'))"
        ".map(r => Number(r.cells[5].getAttribute('data-v')))"
    )
    assert vals == sorted(vals) and len(vals) == len(doc["layers"])
    if shots:
        driver.execute_script("document.getElementById('sec-atlas').scrollIntoView()")
        driver.save_screenshot(str(shots / "report-atlas.png"))
    assert not severe_logs(driver), severe_logs(driver)
    return out
