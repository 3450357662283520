"""The search page in a real headless browser (Debian's chromium through chromium-driver and Selenium),
against a real uvicorn server over the toy colour index: type a query and see the result images
load, upload an image and see captions, click a result for more like it, errors shown, nothing
fetched from outside the server.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from retrieval import Retriever
from retrieval.server import create_app
from retrieval.server.live import LiveServer
from retrieval.server.screenshot import browser_missing, chromium_driver, wait_for_results
from toy_encoder import COLORS, ToyEncoder, solid_images

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))

NAMES = list(COLORS)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("page-images")
    solid_images(directory)
    return directory


@pytest.fixture(scope="module")
def server(image_dir: Path):
    import faiss

    faiss.omp_set_num_threads(1)
    paths = [str(image_dir / f"{n}.png") for n in NAMES]
    retriever = Retriever.build(
        images=paths, texts=[f"a {n} square" for n in NAMES], encoder=ToyEncoder(), bits=16,
        image_payloads=[{"name": n} for n in NAMES], fit_pairs=(np.arange(len(NAMES)), np.arange(len(NAMES))))
    with LiveServer(create_app(retriever)) as live:
        yield live


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    d = chromium_driver(profile)
    d.set_page_load_timeout(60)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


def texts(driver, selector: str) -> list[str]:
    return [e.text for e in driver.find_elements("css selector", selector)]


def test_typed_query_shows_loaded_result_images_and_goes_into_the_url(driver, server):
    from selenium.webdriver.common.keys import Keys

    driver.get(server.url + "/")
    box = driver.find_element("id", "q")
    box.send_keys("navy", Keys.ENTER)
    widths = wait_for_results(driver)
    assert len(widths) == 12 and min(widths) > 0  # every thumbnail decoded
    assert texts(driver, "#results .hit .caption")[0] == "navy.png"
    assert parse_qs(urlparse(driver.current_url).query)["q"] == ["navy"]
    status = driver.find_element("id", "status").text
    assert "stage 1" in status and "stage 2" in status and "ms" in status


def test_page_reads_its_query_from_the_url(driver, server):
    driver.get(server.url + "/?q=orange&k=5")
    widths = wait_for_results(driver)
    assert len(widths) == 5 and min(widths) > 0
    assert texts(driver, "#results .hit .caption")[0] == "orange.png"
    assert driver.find_element("id", "q").get_attribute("value") == "orange"


def test_uploaded_image_shows_captions(driver, server, image_dir):
    driver.get(server.url + "/")
    driver.find_element("id", "file").send_keys(str(image_dir / "yellow.png"))
    wait_for_results(driver)
    captions = texts(driver, "#results .hit.text .caption")
    assert captions and captions[0] == "a yellow square"
    assert "yellow.png" in driver.find_element("id", "status").text
    driver.execute_script("document.body.dataset.state = 'clicked'")
    driver.find_element("css selector", "#results .hit.text").click()  # a caption: search with its text
    widths = wait_for_results(driver)
    assert min(widths) > 0 and texts(driver, "#results .hit .caption")[0] == "yellow.png"
    assert parse_qs(urlparse(driver.current_url).query)["q"] == ["a yellow square"]


def test_clicking_a_result_searches_for_more_like_it(driver, server):
    driver.get(server.url + "/?q=green")
    wait_for_results(driver)
    first = driver.find_element("css selector", "#results .hit.image")
    clicked_id = first.get_attribute("data-id")
    driver.execute_script("document.body.dataset.state = 'clicked'")
    first.click()
    widths = wait_for_results(driver)
    assert min(widths) > 0
    query = parse_qs(urlparse(driver.current_url).query)
    assert query["item"] == [clicked_id] and query["target"] == ["image"]
    assert driver.find_element("css selector", "#results .hit").get_attribute("data-id") == clicked_id
    driver.back()  # the previous search comes back from the URL
    wait_for_results(driver)
    assert texts(driver, "#results .hit .caption")[0] == "green.png"


def test_a_bad_request_is_shown_as_the_servers_message(driver, server):
    driver.get(server.url + "/?q=red&k=500")
    wait_for_results(driver, state="error")
    error = driver.find_element("id", "error")
    assert error.is_displayed() and "'k'" in error.text
    assert not driver.find_elements("css selector", "#results .hit")


def test_nothing_is_fetched_from_outside_the_server_and_the_console_is_clean(driver, server):
    driver.get(server.url + "/?q=pink")
    wait_for_results(driver)
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(url.startswith(server.url) for url in resources), resources
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
              and "k=500" not in entry["message"]]  # the previous test's 422, logged by the browser
    assert not severe, severe


def test_screenshot_is_a_real_picture_of_the_results(driver, server, tmp_path):
    driver.get(server.url + "/?q=purple")
    wait_for_results(driver)
    out = tmp_path / "page.png"
    assert driver.save_screenshot(str(out))
    with Image.open(out) as shot:
        assert shot.size == (1280, 900) or shot.size[0] >= 800
        pixels = np.asarray(shot.convert("RGB"))
    purple = np.array([127, 0, 255])
    assert (np.abs(pixels.astype(int) - purple).sum(axis=2) < 40).sum() > 1000  # the top hit's thumbnail shows


def test_with_a_token_the_page_sends_it_and_still_shows_thumbnails(driver, server, tmp_path):
    retriever = server.app.state.service.retriever
    with LiveServer(create_app(retriever, token="page-s3cret", warm_up=False)) as guarded:
        driver.get(guarded.url + "/?q=cyan#token=page-s3cret")
        widths = wait_for_results(driver)
        assert min(widths) > 0 and texts(driver, "#results .hit .caption")[0] == "cyan.png"
        assert "token" not in driver.current_url  # kept out of bookmarks and history
        assert driver.execute_script("return sessionStorage.getItem('crossmodal-token')") == "page-s3cret"
