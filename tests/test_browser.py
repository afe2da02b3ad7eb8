"""The page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

It loads the page from a real server on a loopback port, types a prefix, presses Generate, waits for
streamed text, and saves a screenshot to the test's temporary directory (and to $CHARLM_SCREENSHOT
when set, which is how docs/img/serve.png was made).
"""

import os
import shutil

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="no headless browser here: apt-get install chromium chromium-driver")

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1200,900", "--lang=zh-CN"]


@pytest.fixture(scope="module")
def server(tiny_run):
    from charlm.web.app import create_app
    from charlm.web.engine import Engine
    from serve_helpers import LiveServer

    with LiveServer(create_app(Engine(tiny_run[0] / "best.pt"))) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium-manager never tries to download one
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_streams_a_generation(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(server.url)
    assert "charlm" in browser.title
    wait.until(lambda d: d.find_element(By.ID, "ck-name").text not in ("", "…"))
    assert browser.find_element(By.ID, "ck-name").text == "run/best.pt"
    assert "hidden 16" in browser.find_element(By.ID, "ck-model").text
    curves = browser.find_elements(By.CSS_SELECTOR, "#chart svg path.line")
    assert len(curves) == 2  # train and validation perplexity, drawn by the page itself

    prefix = browser.find_element(By.ID, "prefix")
    prefix.clear()
    prefix.send_keys("不分开")
    Select(browser.find_element(By.ID, "strategy")).select_by_value("sample")
    assert browser.find_element(By.ID, "temperature").is_displayed()  # sampling controls appear for sampling
    assert not browser.find_element(By.ID, "num_beams").is_displayed()
    for name, value in (("num_samples", "3"), ("length", "60"), ("seed", "5"), ("temperature", "0.8")):
        field = browser.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)
    browser.find_element(By.ID, "go").click()

    wait.until(lambda d: any(e.text for e in d.find_elements(By.CSS_SELECTOR, ".sample .gen")))  # streamed text
    wait.until(lambda d: "ok" in d.find_element(By.ID, "status").get_attribute("class"))
    cards = browser.find_elements(By.CSS_SELECTOR, ".sample")
    assert len(cards) == 3
    for card in cards:
        assert card.find_element(By.CSS_SELECTOR, ".pfx").text == "不分开"
        assert 0 < len(card.find_element(By.CSS_SELECTOR, ".gen").get_attribute("textContent")) <= 60
        assert "log-prob" in card.find_element(By.CSS_SELECTOR, ".meta").text
    copy = cards[0].find_element(By.CSS_SELECTOR, ".copy")
    copy.click()
    wait.until(lambda d: copy.text == "Copied")

    shot = tmp_path / "serve.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("CHARLM_SCREENSHOT"):
        browser.save_screenshot(os.environ["CHARLM_SCREENSHOT"])
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_page_shows_a_bad_request_as_one_line(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "ck-name").text not in ("", "…"))
    prefix = browser.find_element(By.ID, "prefix")
    prefix.clear()
    prefix.send_keys("€€")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 20).until(lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert "not in the model's vocabulary" in browser.find_element(By.ID, "status").text
