"""The web dashboard (README, "Dashboard") against a live amqpd: its JSON additions over
HTTP, then every page rendered by a real headless Chromium, with pika making the state the
pages must show. Screenshots of each page are kept in tests/artifacts/dashboard/."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pika
import pytest

from .broker_process import REPO_ROOT, BrokerProcess
from .browser import Browser, find_chromium, headless_args

ARTIFACTS = REPO_ROOT / "tests" / "artifacts" / "dashboard"
AUTH = ("guest", "guest")
V = "%2F"


@dataclass
class Dashboard:
    broker: BrokerProcess
    base: str  # http://127.0.0.1:PORT/

    def get(self, path: str, auth: tuple[str, str] | None = AUTH, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base + path, auth=auth, timeout=10, **kwargs)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    broker = BrokerProcess(tmp_path_factory.mktemp("dashboard"))
    try:
        assert broker.process.stdout is not None
        # The management listener announces itself after the AMQP listener lines.
        for _ in range(5):
            line = broker.process.stdout.readline()
            if line.startswith("amqpd management listening on "):
                base = f"http://{line.rsplit(' ', 1)[1].strip()}/"
                break
        else:
            pytest.fail("no management listener line")
        yield Dashboard(broker, base)
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def traffic(dashboard: Dashboard) -> Iterator[pika.BlockingConnection]:
    """dash.orders: 7 ready messages (published first, so the longest waiting), bound from
    the dash.events topic exchange; dash.work: 5 published, a consumer with prefetch 2
    holding 2 unacked; 25 empty dash.filler queues so the listing has two pages of 20."""
    params = pika.ConnectionParameters(
        "127.0.0.1", dashboard.broker.port,
        client_properties={"connection_name": "dashboard-test"})
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.exchange_declare("dash.events", "topic")
    channel.queue_declare("dash.orders", durable=True)
    channel.queue_bind("dash.orders", "dash.events", "order.*")
    channel.queue_declare("dash.work")
    for index in range(25):
        channel.queue_declare(f"dash.filler.{index:02}")
    channel.confirm_delivery()
    for _ in range(7):
        channel.basic_publish("dash.events", "order.paid", b"order",
                              pika.BasicProperties(delivery_mode=2))
    time.sleep(0.3)  # the enqueue stamps tick every 0.1 s: dash.orders is older
    for _ in range(5):
        channel.basic_publish("", "dash.work", b"job")
    consumer = connection.channel()
    consumer.basic_qos(prefetch_count=2)
    consumer.basic_consume("dash.work", lambda *args: None)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until the broker has delivered the two
        connection.process_data_events(time_limit=0.05)
        work = dashboard.get(f"api/queues/{V}/dash.work").json()
        if work["messages_unacknowledged"] == 2:
            break
    yield connection
    connection.close()


# -- HTTP ------------------------------------------------------------------------------------


def test_page_and_files_need_a_management_user(dashboard: Dashboard) -> None:
    anonymous = dashboard.get("", auth=None)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="RabbitMQ Management"'
    assert dashboard.get("static/app.js", auth=None).status_code == 401
    assert dashboard.get("", auth=("guest", "wrong")).status_code == 401
    assert httpx.put(dashboard.base + "api/users/dash-plain", auth=AUTH,
                     json={"password": "p", "tags": ""}).status_code == 201
    assert dashboard.get("", auth=("dash-plain", "p")).status_code == 401

    page = dashboard.get("")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    script = dashboard.get("static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    again = dashboard.get("static/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304
    assert dashboard.get("static/vendor/uplot/uPlot.iife.min.js").status_code == 200
    assert dashboard.get("static/../pyproject.toml").status_code == 404
    assert dashboard.get("static/nothing.js").status_code == 404


def test_queue_listing_is_paged_sorted_and_filtered_on_the_server(
    dashboard: Dashboard, traffic: pika.BlockingConnection
) -> None:
    query = {"sort": "messages", "sort_reverse": "true", "page_size": "2", "name": "dash."}
    first = dashboard.get("api/dashboard/queues", params=query).json()
    assert [q["name"] for q in first["items"]] == ["dash.orders", "dash.work"]
    assert first["filtered_count"] == 27 and first["page_count"] == 14
    orders, work = first["items"]
    assert orders["messages_ready"] == 7
    assert orders["oldest_message_age"] > work["oldest_message_age"] >= 0
    assert work["messages_unacknowledged"] == 2 and work["prefetch_saturation"] == 1.0
    assert work["prefetch_used"] == 2 and work["prefetch_limit"] == 2
    assert first["items"][0]["oldest_message_age"] is not None
    empty = dashboard.get("api/dashboard/queues", params={"name": "dash.filler.00"}).json()
    assert empty["items"][0]["oldest_message_age"] is None  # nothing ready

    by_age = dashboard.get("api/dashboard/queues", params={
        "sort": "oldest_message_age", "sort_reverse": "true", "page_size": "1"}).json()
    assert by_age["items"][0]["name"] == "dash.orders"
    regex = dashboard.get("api/dashboard/queues", params={
        "name": r"^dash\.filler\.0[0-4]$", "use_regex": "true"}).json()
    assert regex["filtered_count"] == 5
    bad = dashboard.get("api/dashboard/queues", params={"sort": "arguments"})
    assert bad.status_code == 400 and "cannot sort" in bad.json()["reason"]
    assert dashboard.get("api/dashboard/queues", params={"page": "99"}).status_code == 400


def test_queue_detail_overview_and_channels(
    dashboard: Dashboard, traffic: pika.BlockingConnection
) -> None:
    work = dashboard.get(f"api/dashboard/queues/{V}/dash.work").json()
    (consumer,) = work["consumer_details"]
    assert consumer["client"] == "dashboard-test" and consumer["unacked"] == 2
    assert consumer["prefetch_count"] == 2 and consumer["can_take"] is False
    orders = dashboard.get(f"api/dashboard/queues/{V}/dash.orders").json()
    assert {(b["source"], b["routing_key"]) for b in orders["bindings"]} == {
        ("", "dash.orders"), ("dash.events", "order.*")}
    assert set(orders["history"]) >= {"time", "publish", "messages_ready"}

    overview = dashboard.get("api/dashboard/overview").json()
    assert overview["alarms"]["memory"] is False and overview["alarms"]["disk"] is False
    assert overview["blocked"] == []
    assert overview["top"]["messages"][0] == {"vhost": "/", "name": "dash.orders", "value": 7}
    assert overview["top"]["oldest_message_age"][0]["name"] == "dash.orders"
    assert set(overview["history"]) >= {"time", "published", "delivered", "unroutable"}

    channels = dashboard.get("api/dashboard/channels", params={"sort": "number"}).json()
    assert channels["total_count"] == 2
    holding = [c for c in channels["items"] if c["messages_unacknowledged"] == 2]
    assert holding and holding[0]["client"] == "dashboard-test"
    assert holding[0]["prefetch_saturation"] == 1.0
    alarms = dashboard.get("api/dashboard/alarms").json()
    assert alarms["blocked"] == [] and alarms["alarms"]["memory"] is False


# -- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    executable = find_chromium()
    if executable is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium with "
                    "apt-get when it can; set AMQPD_CHROMIUM to use another build)")
    return executable


@pytest.fixture(scope="module")
def browser(chromium: str, dashboard: Dashboard) -> Iterator[Browser]:
    instance = Browser(chromium)
    instance.basic_auth(*AUTH)
    yield instance
    instance.close()


def _show(browser: Browser, dashboard: Dashboard, fragment: str, ready: str) -> None:
    """Open a page and wait until its data has been rendered (``ready`` is a selector).

    The status line is blanked first: the page being left may match ``ready`` too, and only
    a render of the new page writes "updated" again."""
    with contextlib.suppress(RuntimeError):  # no document yet on the first page
        browser.evaluate("(s => s && (s.textContent = ''))(document.getElementById('status'))")
    browser.open(dashboard.base + "#/" + fragment)
    browser.wait_for(f"document.querySelector({ready!r}) !== null && "
                     "document.getElementById('status').textContent.startsWith('updated')")


def _cells(browser: Browser, selector: str) -> dict[str, str]:
    """column -> text of the first row matching ``selector``."""
    return dict(browser.evaluate(
        f"Array.from(document.querySelector({selector!r}).querySelectorAll('td'))"
        ".map(td => [td.dataset.col || td.cellIndex, td.textContent])"))


def test_pages_render_the_live_state(
    browser: Browser, dashboard: Dashboard, traffic: pika.BlockingConnection
) -> None:
    _show(browser, dashboard, "queues?name=dash.&sort=messages&desc=1&size=20",
          'tr[data-name="dash.work"]')
    orders = _cells(browser, 'tr[data-name="dash.orders"]')
    assert orders["messages_ready"] == "7" and orders["messages"] == "7"
    assert orders["consumers"] == "0" and orders["oldest_message_age"].endswith("s")
    work = _cells(browser, 'tr[data-name="dash.work"]')
    assert (work["messages_ready"], work["messages_unacknowledged"], work["consumers"]) == \
        ("3", "2", "1")
    assert work["prefetch_saturation"] == "100%" and work["consumer_capacity"] == "0%"
    # Sorted by the server: deepest first; 27 matching queues on pages of 20.
    names = browser.evaluate("Array.from(document.querySelectorAll('tbody tr'))"
                             ".map(tr => tr.dataset.name)")
    assert names[:2] == ["dash.orders", "dash.work"] and len(names) == 20
    assert "Page 1 of 2" in browser.evaluate("document.querySelector('.controls').textContent")
    assert "could take a message right now" in browser.html()
    browser.screenshot(ARTIFACTS / "queues.png")

    _show(browser, dashboard, f"queue/{V}/dash.work", '[data-consumer]')
    consumer = browser.evaluate("document.querySelector('[data-consumer]').textContent")
    assert "dashboard-test" in consumer
    assert browser.evaluate("document.querySelector('[data-card=\"Unacked\"] .value')"
                            ".textContent") == "2"
    browser.screenshot(ARTIFACTS / "queue.png")

    _show(browser, dashboard, "connections", "tbody tr[data-name]")
    assert "dashboard-test" in browser.evaluate("document.querySelector('tbody').textContent")
    browser.screenshot(ARTIFACTS / "connections.png")

    _show(browser, dashboard, "channels?sort=messages_unacknowledged&desc=1",
          "tbody tr[data-name]")
    channel = browser.evaluate("document.querySelector('tbody tr').textContent")
    assert "dashboard-test" in channel and "100%" in channel
    browser.screenshot(ARTIFACTS / "channels.png")

    _show(browser, dashboard, "exchanges?name=dash.", 'tr[data-name="dash.events"]')
    browser.screenshot(ARTIFACTS / "exchanges.png")
    # The list page just shown has table rows too: wait for this page's own content (a
    # same-document navigation keeps the old rows until the new data is drawn).
    _show(browser, dashboard, f"exchange/{V}/dash.events", "tbody tr")
    assert browser.wait_for(
        "document.querySelector('main').textContent.includes('order.*')")
    browser.screenshot(ARTIFACTS / "exchange.png")

    _show(browser, dashboard, "", '[data-top="messages"] a')
    cards = dict(browser.evaluate(
        "Array.from(document.querySelectorAll('[data-card]'))"
        ".map(c => [c.dataset.card, c.querySelector('.value').textContent])"))
    assert (cards["Ready"], cards["Unacked"], cards["Queues"]) == ("10", "2", "27")
    assert (cards["Memory alarm"], cards["Disk alarm"], cards["Blocked publishers"]) == \
        ("off", "off", "0")
    assert browser.evaluate("document.querySelector('[data-top=\"messages\"] a')"
                            ".textContent") == "dash.orders"
    # The rate chart is drawn from the sampler's ring (a sample every 5 s): a line needs
    # two, which a broker this young may not have yet; reopen the page until it has.
    deadline = time.monotonic() + 12
    while int(browser.evaluate("document.querySelector('.chart').dataset.points || 0")) < 2:
        assert time.monotonic() < deadline, "the overview chart never got two samples"
        browser.evaluate("window.dispatchEvent(new HashChangeEvent('hashchange'))")
        time.sleep(1)
    browser.wait_for("document.querySelectorAll('.chart canvas').length === 2")
    browser.screenshot(ARTIFACTS / "overview.png")


def test_dump_dom_with_credentials_in_the_url(
    chromium: str, dashboard: Dashboard, traffic: pika.BlockingConnection
) -> None:
    """The command an operator (or a script) would type renders the data, not a shell."""
    url = dashboard.base.replace("http://", "http://guest:guest@") + "#/queues?name=dash.orders"
    result = subprocess.run(
        [*headless_args(chromium), "--virtual-time-budget=3000", "--dump-dom", url],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    row = re.search(r'<tr data-name="dash\.orders".*?</tr>', result.stdout, re.S)
    assert row, result.stdout[-3000:]
    assert re.search(r'data-col="messages_ready">7<', row.group(0))
