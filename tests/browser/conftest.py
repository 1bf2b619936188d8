"""Fixtures for the real-browser tests of warren's live page (GET /): a warren per test
(the real binary, through warren_broker.Broker), one headless Chromium for the session
(Debian's chromium and chromedriver, driven by selenium), and the page opened on the
broker with basic auth.

Environment:
  WARREN_BIN          the broker binary (default <repo>/target/release/warren)
  WARREN_ARTIFACTS    where screenshots and pictures go (default <repo>/target/browser)
  CHROMIUM, CHROMEDRIVER  the browser and its driver (default /usr/bin/chromium, /usr/bin/chromedriver)
"""

import os
import tempfile
import time
from pathlib import Path

import pytest
import warren_broker
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("WARREN_ARTIFACTS", REPO / "target" / "browser"))


@pytest.fixture
def broker(tmp_path):
    binary = os.environ.get("WARREN_BIN", str(REPO / "target" / "release" / "warren"))
    b = warren_broker.Broker.start(heartbeat=1, binary=binary, workdir=tmp_path)
    yield b
    b.stop()


@pytest.fixture(scope="session")
def chromium():
    options = Options()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    # As root, in a closed network: no sandbox, and nothing that phones home.
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1100",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='warren-chromium-')}"]:
        options.add_argument(flag)
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


class Page:
    """The live page of one broker in the browser, and ways to read it back."""

    def __init__(self, driver, broker):
        self.driver = driver
        self.broker = broker

    def open(self):
        # Credentials in the URL: the browser keeps them for the page's own requests.
        self.driver.get(f"http://guest:guest@127.0.0.1:{self.broker.http_port}/")
        self.wait(lambda: self.js("return document.getElementById('link').className") == "live",
                  "the event stream is live")
        # The first stats have arrived: the page knows the broker's clock.
        self.wait(lambda: self.js("return window.warren.model.queues !== undefined && "
                                  "document.getElementById('summary').textContent !== ''"), "first stats")
        return self

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, condition, what, timeout=15):
        """Waits for `condition()` to be true (checked every 50 ms); fails naming `what`."""
        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
            lambda _: condition(), message=f"waiting for {what}")

    def row(self, label):
        """The row element of the connection shown as `label` (its client-provided name)."""
        def find():
            rows = self.driver.find_elements("css selector", "#rows .row")
            return next((r for r in rows if r.find_element("css selector", ".name").text == label), None)
        return self.wait(find, f"a row for {label!r}")

    def marks(self, label, kind):
        """The data of every mark of `kind` in the timeline of `label`'s row, as drawn now."""
        return self.js("""
            const rows = [...document.querySelectorAll('#rows .row')];
            const row = rows.find(r => r.querySelector('.name').textContent === arguments[0]);
            if (!row) return [];
            return [...row.querySelectorAll(`svg [data-kind="${arguments[1]}"]`)].map(e => ({...e.dataset}));
        """, label, kind)

    def screenshot(self, name):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def page(chromium, broker):
    yield Page(chromium, broker).open()
    # The next test starts from a blank page, with no stream left open.
    chromium.get("about:blank")
