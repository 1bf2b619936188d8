"""warren's live page in a real browser (headless Chromium), against the real binary and
real clients: a pika client's row and heartbeat timeline appear; the page's "ignore client"
button gets it dropped, drawn inside the 2T..3T window; the alarm button blocks a publisher
and the page shows its monitor paused; the teaching demo plays the seed's story; names
chosen by clients are shown as text, never as markup; a thousand connections stay one
screen of rows. Screenshots and the demo's timeline as SVG are kept under target/browser/."""

import json
import threading

import pika
import pytest

from conftest import ARTIFACTS

T = 1  # the heartbeat every client here negotiates, in seconds
# warren keeps a connection's last-byte time to the millisecond, and stamps the drop just
# after the tick that makes it: a drop may be drawn this far past the window's edge.
SLACK_MS = 5


def inside(at, window):
    return float(window["from"]) - SLACK_MS <= at <= float(window["to"]) + SLACK_MS


class PikaClient:
    """A pika BlockingConnection driven on a thread of its own (pika is not thread-safe: this
    thread is its only user), heartbeating as pika does, optionally publishing every 50 ms."""

    def __init__(self, broker, name, publish_to=None):
        params = pika.ConnectionParameters(host="127.0.0.1", port=broker.amqp_port, heartbeat=T,
                                           client_properties={"connection_name": name})
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        if publish_to:
            self.channel.queue_declare(publish_to)
        self.publish_to = publish_to
        self.stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self.stop.is_set():
                if self.publish_to:
                    self.channel.basic_publish("", self.publish_to, b"tick")
                self.connection.process_data_events(time_limit=0.05)
        except Exception as e:  # the broker dropped it: what the test may be waiting for
            self.error = e

    def close(self):
        self.stop.set()
        self.thread.join(5)
        if self.error is None and self.connection.is_open:
            self.connection.close()


@pytest.fixture
def client(broker):
    clients = []

    def connect(name, publish_to=None):
        c = PikaClient(broker, name, publish_to)
        clients.append(c)
        return c
    yield connect
    for c in clients:
        c.close()


def test_a_real_clients_row_and_heartbeat_timeline_appear(page, client):
    client("pika-heartbeats")
    row = page.row("pika-heartbeats")
    # Both sides' heartbeats and the monitor's ticks, drawn as they come.
    page.wait(lambda: len(page.marks("pika-heartbeats", "in-hb")) >= 2, "the client's heartbeats")
    page.wait(lambda: len(page.marks("pika-heartbeats", "out-hb")) >= 2, "warren's heartbeats")
    page.wait(lambda: len(page.marks("pika-heartbeats", "tick")) >= 2, "the monitor's ticks")
    assert all(t["silent"] == "0" for t in page.marks("pika-heartbeats", "tick")), "a heartbeating client is seen"
    # The window ahead: 2T..3T after the last counted byte, in the future.
    window = page.marks("pika-heartbeats", "window")
    now = float(page.marks("pika-heartbeats", "now")[0]["at"])
    assert len(window) == 1 and float(window[0]["from"]) > now - 1000
    assert float(window[0]["to"]) - float(window[0]["from"]) == pytest.approx(T * 1000)
    facts = row.find_element("css selector", ".facts").text
    assert "running" in facts and f"T={T}s" in facts and "monitor watching" in facts, facts
    assert "guest @ /" in row.find_element("css selector", ".sub").text
    page.screenshot("connection.png")


def test_ignore_client_from_the_page_draws_the_drop_inside_the_2t_3t_window(page, client, broker):
    pika_client = client("pika-ignored")
    row = page.row("pika-ignored")
    page.wait(lambda: len(page.marks("pika-ignored", "tick")) >= 1, "a first tick")
    events = broker.events()
    row.find_element("css selector", "button[data-fault=ignore_client]").click()
    dropped = events.wait_for(lambda e: e["type"] == "heartbeat.timeout", timeout=10)
    drop = page.wait(lambda: page.marks("pika-ignored", "drop"), "the drop drawn")[0]
    window = page.marks("pika-ignored", "window")
    assert len(window) == 1, window
    at = float(drop["at"])
    assert inside(at, window[0]), f"drop at {at} outside the window {window[0]}"
    assert at == pytest.approx(dropped["at"], abs=1), "drawn where the broker stamped it"
    # The heartbeats that kept arriving were drawn hollow: uncounted.
    assert page.marks("pika-ignored", "in-hb-ignored"), "ignored heartbeats drawn as such"
    ticks = [int(t["silent"]) for t in page.marks("pika-ignored", "tick")]
    assert ticks[-2:] == [1, 2], ticks
    assert "missed heartbeats from client, timeout: 1s" in row.find_element("css selector", ".last").text
    assert "missed heartbeats from client, timeout: 1s" in broker.log()
    page.wait(lambda: pika_client.error is not None, "pika to notice")
    page.screenshot("dropped.png")


def test_the_alarm_button_blocks_a_publisher_and_pauses_its_monitor_until_it_clears(page, client):
    publisher = client("pika-publisher", publish_to="work")
    row = page.row("pika-publisher")
    state = lambda: row.find_element("css selector", "[data-state]").get_attribute("data-state")
    monitor = lambda: row.find_element("css selector", "[data-monitor]").get_attribute("data-monitor")
    page.wait(lambda: state() == "running", "running")
    page.driver.find_element("id", "alarm").click()
    page.wait(lambda: state() == "blocked", "blocked at its next publish")
    assert monitor() == "paused"
    page.wait(lambda: page.marks("pika-publisher", "paused"), "the paused monitor drawn")
    page.wait(lambda: page.marks("pika-publisher", "blocked"), "the blocked period drawn")
    assert not page.marks("pika-publisher", "window"), "no deadline while the monitor is paused"
    assert "ON" in page.driver.find_element("id", "alarm").text
    # Blocked for longer than 3T, and not dropped: the monitor was paused.
    page.wait(lambda: len(page.marks("pika-publisher", "out-hb")) >= 2 * 3 * T + 2, "3T of blocking", timeout=20)
    page.screenshot("blocked.png")
    page.driver.find_element("id", "alarm").click()
    page.wait(lambda: state() == "running" and monitor() == "watching", "running again")
    paused = page.marks("pika-publisher", "paused")[-1]
    assert paused["to"] != "", "the pause ends where reading resumed"
    assert publisher.error is None, publisher.error


def test_the_teaching_demo_plays_the_seed_story_in_the_page(page, broker):
    page.driver.find_element("id", "demo").click()
    steps = lambda: page.js("return [...document.querySelectorAll('#steps li')].map(li => li.textContent)")
    page.wait(lambda: any("redelivered = true" in s for s in steps()), "the whole story", timeout=25)
    told = steps()
    assert any("missed heartbeats from client, timeout: 1s" in s and "inside the 2T..3T window" in s for s in told), told
    drop = page.marks("demo worker", "drop")[0]
    window = page.marks("demo worker", "window")[0]
    assert inside(float(drop["at"]), window), (drop, window)
    page.wait(lambda: page.js("return document.querySelector('#queues tr[data-queue=\"demo.tasks\"]') !== null"),
              "the demo's queue listed")
    page.screenshot("dashboard.png")
    # The same drawing code, as a picture of its own (docs/heartbeat-timeline.svg is one).
    # From just before the worker connected to just after it was dropped.
    svg = page.js("const c = [...window.warren.model.conns.values()].find(c => c.clientName === 'demo worker');"
                  "return window.warren.timelineSVG(c.name, {from: c.opened - 300, to: c.drop.at + 700})")
    assert svg.startswith("<svg") and 'data-kind="drop"' in svg
    (ARTIFACTS / "heartbeat-timeline.svg").write_text(svg + "\n")


def test_names_chosen_by_clients_are_shown_as_text_never_as_markup(page, client, broker):
    hostile = '<img src=x onerror="window.pwned=1">'
    pika_client = client(hostile, publish_to='<script>window.pwned=2</script>')
    page.row(hostile)
    page.wait(lambda: page.js("return document.querySelector('#queues tr[data-queue]') !== null"), "the queue listed")
    assert page.js("return window.pwned") is None
    assert page.js("return document.querySelectorAll('#rows img, #queues script').length") == 0
    cells = page.js("return [...document.querySelectorAll('#queues td')].map(td => td.textContent)")
    assert '<script>window.pwned=2</script>' in cells
    pika_client.close()


def test_a_thousand_connections_stay_one_screen_of_rows(page, broker):
    from crowd import Crowd
    with Crowd(broker.amqp_port, count=1000, heartbeat=2) as crowd:
        page.wait(lambda: page.js("return document.getElementById('conn-summary').dataset.open") == "1000",
                  "1,000 open connections counted", timeout=60)
        rendered = page.js("return document.querySelectorAll('#rows .row').length")
        assert 1 <= rendered <= 20, f"{rendered} rows in the page: not virtualised"
        # Scrolled to the bottom, the last connection's row is drawn, with its timeline.
        # (Rows are in the order the page first heard of each connection.)
        page.js("const r = document.getElementById('rows'); r.scrollTop = r.scrollHeight;")
        last = page.js("const m = window.warren.model; return m.conns.get(m.order[m.order.length - 1]).clientName")
        assert last in crowd.names
        page.wait(lambda: page.js("return [...document.querySelectorAll('#rows .row .name')].some(n => n.textContent === arguments[0])", last),
                  "the last row drawn after scrolling")
        page.wait(lambda: page.marks(last, "in-hb"), "its heartbeats")
        # The filter finds one among a thousand.
        box = page.driver.find_element("id", "filter")
        box.send_keys(crowd.names[500])
        page.wait(lambda: page.js("return document.querySelectorAll('#rows .row').length") == 1, "one row left")
        frames = page.js("return window.warren.frames.slice(-50)")
        frames.sort()
        print(json.dumps({"rows_rendered": rendered, "frame_ms_median": frames[len(frames) // 2],
                          "frame_ms_p95": frames[int(len(frames) * 0.95)]}))
        assert crowd.dropped() == 0, "none dropped"
