"""The page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

It loads the page from a real server on a loopback port, types a prefix, presses Generate, waits for
streamed text; works on a draft (keeps two lines, edits one, rewrites another), writes a song in
sections, checks the layout at phone width (360 px), exports a draft and imports it again.
`test_screenshots` saves the page at 1200 and 360 px to the test's temporary directory and, with
CHARLM_SCREENSHOT_DIR set, there too (docs/img/serve.png and serve-360.png were made so, serving
CHARLM_SCREENSHOT_RUN instead of the tiny test run).
"""

import os
import shutil
from pathlib import Path

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

    streamed = lambda d: any(e.text for e in d.find_elements(By.CSS_SELECTOR, ".sample .gen"))  # noqa: E731
    try:
        wait.until(streamed)  # streamed text
    except Exception:  # seen twice in about 25 runs, not reproduced since: say what the page showed, try once more
        import sys
        status = browser.find_element(By.ID, "status")
        print(f"first generation showed no text in 20 s; status {status.text!r} ({status.get_attribute('class')}), "
              f"browser log {browser.get_log('browser')}", file=sys.stderr)
        browser.find_element(By.ID, "go").click()
        wait.until(streamed)
    wait.until(lambda d: "ok" in d.find_element(By.ID, "status").get_attribute("class"))
    cards = browser.find_elements(By.CSS_SELECTOR, ".sample")
    assert len(cards) == 3
    for card in cards:  # each finished sample is a draft: its lines, its seed and log-prob
        text = card.get_attribute("data-text")
        assert text.startswith("不分开") and 0 < len(text) - 3 <= 60
        assert "log-prob" in card.find_element(By.CSS_SELECTOR, ".meta").text
        assert "seed" in card.find_element(By.CSS_SELECTOR, ".meta").text
        assert [e.text for e in card.find_elements(By.CSS_SELECTOR, ".line .txt")] == text.split("\n")
    copy = cards[0].find_element(By.CSS_SELECTOR, ".copy")
    copy.click()
    wait.until(lambda d: copy.text == "Copied")

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
    status = browser.find_element(By.ID, "status").text
    assert "not in the model's vocabulary" in status
    assert 'unknown characters to "drop"' in status  # the page's own control, not the API's field


# --- drafts, sections, phone width, export -----------------------------------------------------

def _open(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "ck-name").text not in ("", "…"))


def _set(browser, field_id, value):
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, field_id)
    field.clear()
    if value:
        field.send_keys(value)


def _generate(browser, **fields):
    """Fill the controls (`prefix` first), press Generate and wait for the drafts; returns the cards."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for name, value in fields.items():
        _set(browser, name, value)
    browser.execute_script("document.getElementById('status').className = 'status'")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(lambda d: "ok" in d.find_element(By.ID, "status").get_attribute("class")
                                     or "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class"), \
        browser.find_element(By.ID, "status").text
    return browser.find_elements(By.CSS_SELECTOR, "#samples .sample")


def _rows(card):
    from selenium.webdriver.common.by import By

    return card.find_elements(By.CSS_SELECTOR, ".line")


def _template(line: str) -> str:
    return "".join("_" if ch.isalnum() else ch for ch in line).rstrip()


def _wait_done(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "status").text in ("done",)
                                     or "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert browser.find_element(By.ID, "status").text == "done", browser.find_element(By.ID, "status").text


def test_draft_keep_edit_and_rewrite_lines(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open(browser, server.url)
    card = _generate(browser, prefix="分开", num_samples="1", lines="6", seed="11")[0]
    before = card.get_attribute("data-text").split("\n")
    assert len(before) >= 5, before
    badges = [r.find_element(By.CSS_SELECTOR, ".rhyme").text for r in _rows(card)]
    target = next((i for i in range(3, len(before)) if badges[i] and _template(before[i]).count("_") > 1), 3)

    for i in (0, 2):  # keep two lines
        _rows(card)[i].find_element(By.CSS_SELECTOR, ".lock").click()
        card = browser.find_element(By.CSS_SELECTOR, "#samples .sample")
    assert [r.get_attribute("class") for r in _rows(card)][:3] == ["line locked", "line", "line locked"]
    edit = _rows(card)[1].find_element(By.CSS_SELECTOR, ".txt")  # edit one in place
    edit.click()
    edit.send_keys(Keys.END, "爱")
    browser.find_element(By.TAG_NAME, "h1").click()  # leaving the line saves it
    card = browser.find_element(By.CSS_SELECTOR, "#samples .sample")
    edited = before[1] + "爱"
    assert card.get_attribute("data-text").split("\n")[1] == edited
    assert _rows(card)[0].find_element(By.CSS_SELECTOR, ".regen").get_attribute("disabled")  # a kept line stays

    _rows(card)[target].find_element(By.CSS_SELECTOR, ".regen").click()  # rewrite another
    _wait_done(browser)
    card = browser.find_element(By.CSS_SELECTOR, "#samples .sample")
    after = card.get_attribute("data-text").split("\n")
    assert len(after) == len(before)
    assert (after[0], after[1], after[2]) == (before[0], edited, before[2])
    assert _template(after[target]) == _template(before[target])  # its length and punctuation kept
    badge = _rows(card)[target].find_element(By.CSS_SELECTOR, ".rhyme").text
    assert badge == badges[target], (before[target], after[target])  # and its rhyme class
    if badge:
        assert _rows(card)[target].find_element(By.CSS_SELECTOR, "mark.rh").text  # the rhyme character marked

    card.find_element(By.CSS_SELECTOR, ".regen-all").click()  # every unkept line, in one go
    _wait_done(browser)
    card = browser.find_element(By.CSS_SELECTOR, "#samples .sample")
    again = card.get_attribute("data-text").split("\n")
    assert (again[0], again[2]) == (before[0], before[2])
    assert [_template(t) for t in again] == [_template(t) for t in after]

    card.find_element(By.CSS_SELECTOR, ".continue").click()  # continue from the edited text
    _wait_done(browser)
    card = browser.find_element(By.CSS_SELECTOR, "#samples .sample")
    longer = card.get_attribute("data-text")
    assert longer.startswith("\n".join(again)) and len(longer) > len("\n".join(again))


def test_song_in_sections_repeats_its_chorus(server, browser):
    from selenium.webdriver.common.by import By

    _open(browser, server.url)
    card = _generate(browser, prefix="分开", num_samples="1", lines="0", sections="verse:2,chorus:2,verse:2,chorus",
                     seed="4")[0]
    parts = card.get_attribute("data-text").split("\n\n")
    assert len(parts) == 4, parts
    assert [len(p.split("\n")) for p in parts] == [2, 2, 2, 2]
    assert parts[1] == parts[3] and parts[0] != parts[2]
    names = [e.text.lower() for e in card.find_elements(By.CSS_SELECTOR, ".section-name")]
    assert names == ["verse", "chorus", "verse", "chorus (again)"]
    _set(browser, "sections", "")


def _phone(browser, on: bool):
    if on:
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": 360, "height": 780, "deviceScaleFactor": 1, "mobile": True})
    else:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_layout_holds_at_phone_width(server, browser):
    _phone(browser, True)
    try:
        _open(browser, server.url)
        fit = browser.execute_script("""
            const box = document.getElementById('prefix'), css = getComputedStyle(box);
            const ctx = document.createElement('canvas').getContext('2d');
            ctx.font = css.font;
            const inner = box.clientWidth - parseFloat(css.paddingLeft) - parseFloat(css.paddingRight);
            return [inner / ctx.measureText('国').width, document.documentElement.scrollWidth, innerWidth];""")
        chars, scroll, width = fit
        assert width == 360
        assert chars >= 20, f"the prefix box holds {chars:.1f} characters at 360 px"
        assert scroll <= width, "the page scrolls sideways at 360 px"
        card = _generate(browser, prefix="分开", num_samples="1", lines="3", seed="2")[0]
        rect = browser.execute_script("return arguments[0].getBoundingClientRect().right", card)
        assert rect <= 360 and browser.execute_script("return document.documentElement.scrollWidth") <= 360
    finally:
        _phone(browser, False)


def test_export_a_draft_and_import_it_again(server, browser):
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, server.url)
    card = _generate(browser, prefix="不分开", num_samples="1", lines="3", seed="21", temperature="0.9")[0]
    text = card.get_attribute("data-text")
    card.find_element(By.CSS_SELECTOR, ".star").click()
    browser.find_element(By.ID, "only-starred").click()
    browser.find_element(By.ID, "export-json").click()
    exported = browser.find_element(By.ID, "port-text").get_attribute("value")
    drafts = json.loads(exported)["drafts"]
    assert [d["starred"] for d in drafts] == [True] and "\n".join(l["text"] for l in drafts[0]["lines"]) == text
    assert drafts[0]["settings"]["seed"] == "21" and drafts[0]["settings"]["temperature"] == "0.9"
    browser.find_element(By.ID, "export-text").click()
    assert text in browser.find_element(By.ID, "port-text").get_attribute("value")

    browser.execute_script("localStorage.clear()")  # a new browser, or a cleared one
    _open(browser, server.url)
    assert not browser.find_elements(By.CSS_SELECTOR, "#history-list li")
    browser.find_element(By.ID, "import-open").click()
    browser.execute_script("const t = document.getElementById('port-text'); t.value = arguments[0];", exported)
    browser.find_element(By.ID, "import-go").click()
    items = browser.find_elements(By.CSS_SELECTOR, "#history-list li")
    assert len(items) == 1 and "starred" in items[0].get_attribute("class")
    items[0].find_element(By.CSS_SELECTOR, ".open").click()
    opened = browser.find_element(By.CSS_SELECTOR, "#samples .sample")
    assert opened.get_attribute("data-text") == text

    opened.find_element(By.CSS_SELECTOR, ".reproduce").click()  # the card's settings and seed, run again
    WebDriverWait(browser, 30).until(lambda d: "ok" in d.find_element(By.ID, "status").get_attribute("class"))
    again = browser.find_element(By.CSS_SELECTOR, "#samples .sample")
    assert again.get_attribute("data-text") == text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
    assert not errors, errors


def test_screenshots(tiny_run, browser, tmp_path):
    """The page at 1200 and 360 px, a song in sections on it (CHARLM_SCREENSHOT_RUN: serve that run instead)."""
    from charlm.web.app import create_app
    from charlm.web.engine import Engine
    from serve_helpers import LiveServer

    run = os.environ.get("CHARLM_SCREENSHOT_RUN") or str(tiny_run[0] / "best.pt")
    out = [tmp_path] + ([Path(os.environ["CHARLM_SCREENSHOT_DIR"])] if os.environ.get("CHARLM_SCREENSHOT_DIR") else [])
    with LiveServer(create_app(Engine(run))) as live:
        for width, name in ((1200, "serve.png"), (360, "serve-360.png")):
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": 1000 if width > 400 else 1400,
                                     "deviceScaleFactor": 1, "mobile": width < 400})
            try:
                _open(browser, live.url)
                browser.execute_script("localStorage.clear()")
                _open(browser, live.url)
                _generate(browser, num_samples="2" if width > 400 else "1", lines="0", seed="7",
                          sections="verse:4,chorus:4,verse:4,chorus")
                for folder in out:
                    browser.save_screenshot(str(folder / name))
                assert (tmp_path / name).stat().st_size > 10_000
            finally:
                _phone(browser, False)
