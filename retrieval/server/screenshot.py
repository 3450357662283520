"""A picture of the page as a browser shows it: Debian's chromium, headless, driven by Selenium.

    python -m retrieval.server.screenshot INDEX --query "a dog running on the beach" --out docs/server.png

Starts the server on a loopback port in this process, opens ``/?q=...`` (twice: the second, warm,
answer is shot), waits until every result image has decoded (``naturalWidth > 0``) and saves a PNG. ``tests/test_server_page.py`` drives the
page with the same driver settings. Chromium runs with a fresh profile and with everything that
would reach outside this machine off (sync, component updates, background networking, QUIC).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1")


def browser_missing() -> str | None:
    """Why the page cannot be driven here, or None; ``make test`` installs both with apt-get."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found (apt-get install {package})"
    return None


def chromium_driver(user_data_dir: str | os.PathLike, width: int = 1280, height: int = 900) -> Any:
    """A headless chromium with a fresh profile in ``user_data_dir``; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


IMAGES_LOADED = """
const imgs = [...document.querySelectorAll('#results .hit img')];
const settled = (i) => (i.getAttribute('src') && i.complete) || i.dataset.failed;  // no src yet: still fetching
return document.body.dataset.state === arguments[0] && imgs.every(settled)
  ? imgs.map(i => i.naturalWidth) : null;
"""


def wait_for_results(driver: Any, state: str = "done", timeout: float = 60.0) -> list[int]:
    """Waits for the page's answer (``body[data-state]``) and for every result image to finish
    loading; returns the images' natural widths (0 for one that failed to decode)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        widths = driver.execute_script(IMAGES_LOADED, state)
        if widths is not None:
            return widths
        time.sleep(0.05)
    raise TimeoutError(f"the page did not reach state {state!r} with its images loaded within {timeout:.0f} s "
                       f"(state: {driver.execute_script('return document.body.dataset.state')!r}, "
                       f"error: {driver.find_element('id', 'error').text!r})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", help="an index directory")
    parser.add_argument("--query", default="a dog running on the beach")
    parser.add_argument("--out", default="docs/server.png")
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--rerank", nargs="+", default=None, help="the server's --rerank choices")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    if (why := browser_missing()) is not None:
        print(f"screenshot: {why}", file=sys.stderr)
        return 2
    from urllib.parse import urlencode

    from retrieval import Retriever

    from .app import create_app
    from .live import LiveServer

    app = create_app(Retriever.from_pretrained(args.index), rerank=args.rerank, index_name=Path(args.index).name)
    profile = tempfile.mkdtemp(prefix="crossmodal-chromium-")
    try:
        with LiveServer(app) as server:
            driver = chromium_driver(profile, args.width, args.height)
            try:
                page = f"{server.url}/?{urlencode({'q': args.query, 'k': args.k})}"
                # loaded twice, the second shot: the timings shown are a warm server's (rerankers
                # such as the cross-encoder featurise a candidate the first time they see it)
                for _ in range(2):
                    driver.get(page)
                    widths = wait_for_results(driver)
                if not widths or min(widths) == 0:
                    print(f"screenshot: result images did not load (widths {widths})", file=sys.stderr)
                    return 1
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.out))
            finally:
                driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    print(f"wrote {args.out} ({len(widths)} results for {args.query!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
