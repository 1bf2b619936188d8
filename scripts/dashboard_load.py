"""How the live page holds up under many connections: starts warren (the release binary),
opens N idle heartbeating connections (tests/browser/crowd.py), opens the page in headless
Chromium, and for DURATION seconds reads the page's own counters: events handled per
second, the share of the main thread spent handling events and stats, the time to draw a
frame of the visible rows, long tasks (> 50 ms) as Chromium reports them, and the JS heap.
Prints one JSON line. Run from the repository, with the interop venv:

    .venv/bin/python scripts/dashboard_load.py [N=1000] [DURATION=30] [HEARTBEAT=2]
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "browser"))

import warren_broker  # noqa: E402
from crowd import Crowd  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    duration = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    heartbeat = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    binary = os.environ.get("WARREN_BIN", str(REPO / "target" / "release" / "warren"))
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--enable-precise-memory-info", "--window-size=1400,1100",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='warren-chromium-')}"]:
        options.add_argument(flag)
    with warren_broker.Broker.start(binary=binary) as broker:
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            with Crowd(broker.amqp_port, count=n, heartbeat=heartbeat) as crowd:
                opened = time.monotonic()
                driver.get(f"http://guest:guest@127.0.0.1:{broker.http_port}/")
                js = driver.execute_script
                while js("return document.getElementById('conn-summary').dataset.open") != str(n):
                    if time.monotonic() - opened > 60:
                        raise SystemExit("the page never counted every connection")
                    time.sleep(0.1)
                counted = time.monotonic() - opened
                before = js("const m = window.warren.model; return [m.events, m.busyMs, m.longTasks, performance.now()]")
                time.sleep(duration)
                after = js("const m = window.warren.model; return [m.events, m.busyMs, m.longTasks, performance.now()]")
                frames = sorted(js("return window.warren.frames.slice()"))
                heap = js("return performance.memory ? performance.memory.usedJSHeapSize : null")
                wall = after[3] - before[3]
                print(json.dumps({
                    "connections": n, "heartbeat": heartbeat, "seconds": round(wall / 1000, 1),
                    "page_counted_all_after_s": round(counted, 2),
                    "events_per_s": round((after[0] - before[0]) * 1000 / wall),
                    "main_thread_busy_handling_pct": round((after[1] - before[1]) * 100 / wall, 1),
                    "frame_ms_median": round(frames[len(frames) // 2], 1),
                    "frame_ms_p95": round(frames[int(len(frames) * 0.95)], 1),
                    "long_tasks": after[2] - before[2],
                    "js_heap_mb": round(heap / 1e6, 1) if heap else None,
                    "rows_in_dom": js("return document.querySelectorAll('#rows .row').length"),
                    "dropped": crowd.dropped(),
                }))
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
