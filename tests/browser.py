"""Headless Debian Chromium for the report's browser tests and benchmarks/report_browser.py.

``chromium(tmp)`` starts Chromium through chromedriver (selenium) with no network use of
its own, a fresh profile and downloads allowed into ``tmp/downloads``; ``open_report``
loads a page and waits until its scripts are ready, returning the seconds that took;
``hover`` moves the mouse onto a point of an element; ``wait_file`` waits for a download; ``severe_logs`` lists console errors.
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


def ready_ms(driver: Any) -> float:
    """Milliseconds from navigation start to the page's ready mark (the browser's own clock)."""
    return float(
        driver.execute_script(
            "var m = performance.getEntriesByName('ka-ready'); return m.length ? m[0].startTime : -1;"
        )
    )


def hover(driver: Any, element: Any, x: float, y: float) -> None:
    """Move the mouse to ``(x, y)`` CSS pixels from ``element``'s top-left corner.

    WebDriver offsets are from the centre of the element's part inside the viewport, so the
    element is scrolled to the top of the view first and the offset computed from that part.
    """
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
    left, top, right, bottom = driver.execute_script(
        "var r = arguments[0].getBoundingClientRect();"
        "return [Math.max(r.left, 0) - r.left, Math.max(r.top, 0) - r.top,"
        " Math.min(r.right, innerWidth) - r.left, Math.min(r.bottom, innerHeight) - r.top];",
        element,
    )
    cx, cy = (left + right) / 2, (top + bottom) / 2
    ActionChains(driver).move_to_element_with_offset(element, int(x - cx), int(y - cy)).perform()


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
