"""The fleet console in a real Chromium, against a real gateway with real MQTT units over mTLS.

One gateway and a few browsers for the module (see tests/console/browser.py for how each browser
gets its operator certificate: NSS database + the AutoSelectCertificateForUrls policy). The policy
in use makes quarantine a sensitive right too, so the ops operator types a TOTP code for both
quarantine and release, as the console asks. The units are paho clients holding certificates enrolled
over EST; three publish GPS fixes at known places (Rotterdam, Amsterdam, Utrecht), one exchanges
control messages with a dispatch service throughout.

Screenshots: every page at 1280x800 and at a phone's 390x844 is drawn and checked for sideways
overflow; with FLEETGATE_CONSOLE_SCREENSHOTS=DIR the pictures are written there (the README's come
from `FLEETGATE_CONSOLE_SCREENSHOTS=docs/console`).
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from gateway.admin.console import CSP
from gateway.cli.device import device_csr
from pki.est_client import bootstrap, simpleenroll, simplereenroll
from pki.keys import generate_private_key
from tests.console import browser
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import api, context, issue_operator, totp_code
from tests.ops.watch import Watch, message_is

pytestmark = pytest.mark.skipif(browser.available() is not None, reason=str(browser.available()))

C1, C2, C3 = "TRK-C1", "TRK-C2", "TRK-C3"
PLACES = {C1: (51.9225, 4.47917), C2: (52.37403, 4.88969), C3: (52.09083, 5.12222)}  # R'dam, A'dam, Utrecht
DESKTOP, PHONE = (1280, 800), (390, 844)
HOSTILE_REASON = "tampering suspected <img src=x onerror=alert(1)>"


@dataclass
class Console:
    gw: GatewayProcess
    ops: Credentials
    oscar: Credentials  # a second ops operator for API-side quarantines: its own authenticator's codes
    auditor: Credentials
    security: Credentials
    partner: Watch
    units: dict[str, Watch]
    dispatch: Watch
    browsers: dict[str, WebDriver]
    tmp: Path

    def url(self, path: str) -> str:
        return self.gw.https_url + path

    def control_round(self, tag: str, unit: str = C1) -> None:
        """dispatch → unit command, unit → dispatch ack; each side waits for the other's message."""
        cmd = (f"fleet/{unit}/control/brake", f"cmd-{tag}".encode())
        ack = (f"fleet/{unit}/control/brake/ack", f"ack-{tag}".encode())
        assert self.dispatch.client.publish(cmd[0], cmd[1], qos=1) == 0
        self.units[unit].wait_for(message_is(*cmd))
        assert self.units[unit].client.publish(ack[0], ack[1], qos=1) == 0
        self.dispatch.wait_for(message_is(*ack))


def _policy(tmp: Path) -> Path:
    text = files("gateway").joinpath("defaults", "policy.yaml").read_text()
    old = "sensitive: [units.release,"
    assert old in text
    path = tmp / "policy.yaml"
    path.write_text(text.replace(old, "sensitive: [units.quarantine, units.release,"))
    return path


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    gw = GatewayProcess(tmp / "gw", env={"FLEETGATE_POLICY_FILE": str(_policy(tmp))})
    gw.init()
    gw.start()
    watches: list[Watch] = []
    drivers: dict[str, WebDriver] = {}
    try:
        ops = issue_operator(gw, "olivia", "ops")
        oscar = issue_operator(gw, "oscar", "ops")
        auditor = issue_operator(gw, "arthur", "auditor")
        security = issue_operator(gw, "sam", "security")
        units = {}
        for unit, creds in _enroll_units(gw, oscar, list(PLACES)).items():
            lat, lon = PLACES[unit]
            units[unit] = Watch(gw, creds, f"fleet/{unit}/cmd/#", f"fleet/{unit}/control/#")
            fix = {"lat": lat, "lon": lon, "speed_kmh": 62.5, "driver_name": "Ada Lovelace"}
            assert units[unit].client.publish(f"fleet/{unit}/telemetry/gps", json.dumps(fix).encode(), 1) == 0
        watches += units.values()
        units[C2].client.subscribe("#", 1)  # overreach: refused, and the detector fires (alert only)
        # C2 runs old firmware (the policy's minimum is 1.4.0): admitted, restricted.
        assert units[C2].client.publish(f"fleet/{C2}/state", json.dumps({"firmware": "1.2.0"}), 1) == 0
        dispatch = Watch(gw, gw.issue("service", "dispatch"), "fleet/+/control/#")
        watches.append(dispatch)
        partner = Watch(gw, gw.issue("partner", "acme", "--tier", "2"))
        watches.append(partner)
        with browser.managed_policy(f"https://localhost:{gw.https_port}", browser.issuer_cn(ops)):
            holders: dict[str, Credentials | None] = {
                "ops": ops, "auditor": auditor, "security": security, "nobody": None
            }  # fmt: skip
            for name, holder in holders.items():
                drivers[name] = browser.start(browser.nss_home(tmp / name, gw.root_ca, holder), *DESKTOP)
            yield Console(gw, ops, oscar, auditor, security, partner, units, dispatch, drivers, tmp)
    finally:
        for driver in drivers.values():
            driver.quit()
        for watch in watches:
            watch.close()
        gw.stop()


def _enroll_units(gw: GatewayProcess, operator: Credentials, names: list[str]) -> dict[str, Credentials]:
    """Register the units in one admin API call (as a factory line would), then each enrolls over EST
    with its own key: one request instead of a CLI process per unit."""
    status, answer = api(gw, operator, "POST", "/api/units", {"units": [{"unit": n} for n in names]})
    assert status == 200, answer
    server = bootstrap(gw.https_url, ca_file=gw.root_ca)
    enrolled = {}
    for row in answer["results"]:
        key = generate_private_key()
        cert = simpleenroll(server, row["unit"], row["token"], device_csr(key, row["unit"]))
        enrolled[row["unit"]] = gw._save(row["unit"], key, [cert])
    # C1 has renewed once (a new key, over mTLS with its first certificate): a lineage to show.
    first, key = enrolled[C1], generate_private_key()
    renewed = simplereenroll(server, first.cert, first.key, device_csr(key, C1))
    enrolled[C1] = gw._save(C1, key, [renewed])
    return enrolled


def _wait(driver: WebDriver, check: Any, timeout: float = 10.0) -> Any:
    # The page reloads under the check (after an action): a vanished element just means "not yet".
    # (Chromium may also answer "Node ... does not belong to the document" while a page replaces itself.)
    stale = (StaleElementReferenceException, NoSuchElementException, WebDriverException)
    return WebDriverWait(driver, timeout, poll_frequency=0.02, ignored_exceptions=stale).until(check)


def _text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def test_ops_quarantines_a_unit_in_the_page_and_its_control_channel_stays_alive(console: Console) -> None:
    page = console.browsers["ops"]
    console.control_round("before")
    page.get(console.url(f"/console/units/{C1}"))
    assert _text(page, "#mode") == "normal"
    assert f"fleet/{C1}/control/brake/ack from unit/{C1}" in _text(page, "#control")
    assert "Ada Lovelace" in _text(page, "table.messages")  # ops may see PII
    lineage = [r.text for r in page.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=cert] tbody tr")]
    assert len(lineage) == 2 and "renewed from" in lineage[0] and "first enrollment" in lineage[1]
    assert lineage[0].split()[-1] == lineage[1].split()[0]  # renewed from the first one's serial

    page.find_element(By.ID, "reason").send_keys(HOSTILE_REASON)
    page.find_element(By.ID, "totp").send_keys(totp_code(console.ops))
    page.find_element(By.CSS_SELECTOR, "button[data-action=quarantine]").click()
    clicked = time.monotonic()
    # The issue's promise: within a second the page shows the unit diagnostic-only.
    _wait(page, lambda d: "diagnostic-only" in _text(d, "#mode"), timeout=1.0)
    assert time.monotonic() - clicked < 1.0
    assert HOSTILE_REASON in _text(page, "main")  # shown as text: never markup
    assert "&lt;img src=x onerror=" in page.page_source

    # Meanwhile the real unit got its mode command and still receives and acknowledges control.
    mode = console.units[C1].wait_for(_diagnostic_only)
    assert "tampering suspected" in mode.payload.decode()
    before = _since(page)
    console.control_round("during")
    # ...and the open page shows that control traffic live (refreshed each second, no reload).
    _wait(page, lambda d: _since(d) > before)
    assert "diagnostic-only" in _text(page, "#mode")
    assert f"fleet/{C1}/control/brake/ack from unit/{C1}" in _text(page, "#control")
    status, body = api(console.gw, console.ops, "GET", f"/api/units/{C1}")
    assert status == 200 and body["state"] == "quarantined"

    # Release, with the next code, in the page.
    page.find_element(By.ID, "totp").send_keys(totp_code(console.ops))
    page.find_element(By.CSS_SELECTOR, "button[data-action=release]").click()
    _wait(page, lambda d: _text(d, "#mode") == "normal")
    console.control_round("after")


def _since(driver: WebDriver) -> float:
    return float(
        driver.find_element(By.CSS_SELECTOR, "#control-last [data-since]").get_attribute("data-since") or 0
    )


def _diagnostic_only(message: Any) -> bool:
    return bool(message.topic == f"fleet/{C1}/cmd/mode" and b'"diagnostic-only"' in message.payload)


def _fetch(driver: WebDriver, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """A POST from inside the page (same origin, the browser's own certificate): status and JSON."""
    script = """
        const [path, body, headers, done] = arguments;
        fetch(path, {method: "POST", headers: Object.assign({"Content-Type": "application/json"}, headers),
                     body: JSON.stringify(body)})
          .then(r => r.json().then(j => done([r.status, j])), e => done([0, String(e)]));
    """
    return driver.execute_async_script(script, path, body, headers or {})


def test_an_auditor_sees_the_pages_without_buttons_and_a_forged_action_is_refused(console: Console) -> None:
    page = console.browsers["auditor"]
    page.get(console.url(f"/console/units/{C2}"))
    assert _text(page, "h1") == f"Unit {C2}"
    assert _text(page, "#mode").startswith("restricted") and "1.2.0" in _text(page, ".facts")
    assert page.find_elements(By.CSS_SELECTOR, "button[data-action], #reason, #totp") == []
    messages = _text(page, "table.messages")
    assert "[redacted: pii]" in messages and "Ada Lovelace" not in messages
    assert "52.37403" in messages  # the position itself is not PII

    page.refresh()  # the detector's record arrives with the next event tick
    _wait(page, lambda d: "subscription_overreach" in _text(d, "main") or bool(d.refresh()))
    fired = _text(page, "section[aria-labelledby=det]")
    assert "detector.fired" in fired and '"evidence"' in fired and "alert" in fired, fired

    status, answer = _fetch(page, f"/api/units/{C2}/quarantine", {"reason": "forged"})
    assert (status, answer["code"]) == (403, "role_lacks_right")
    assert api(console.gw, console.ops, "GET", f"/api/units/{C2}")[1]["state"] != "quarantined"

    page.get(console.url("/console/partners"))
    assert (
        "acme" in _text(page, "table") and page.find_elements(By.CSS_SELECTOR, "button[data-partner]") == []
    )

    page.get(console.url("/console/audit"))
    assert "Hash chain intact" in _text(page, ".chain")
    assert "role_lacks_right" in _text(page, "table")

    # The live feed: an ops quarantine made elsewhere appears in the auditor's open fleet page.
    page.get(console.url("/console"))
    _wait(page, lambda d: "following" in _text(d, "#ev-state"))
    quarantine(console, C3, "live feed")
    _wait(page, lambda d: f"unit.quarantine unit/{C3}" in _text(d, "#events"))


def quarantine(console: Console, unit: str, reason: str) -> None:
    """Quarantine over the admin API (the CLI's way), by a second ops operator with its own codes."""
    if api(console.gw, console.ops, "GET", f"/api/units/{unit}")[1]["state"] == "quarantined":
        return
    request = urllib.request.Request(
        console.url(f"/api/units/{unit}/quarantine"),
        data=json.dumps({"reason": reason}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "X-Fleetgate-TOTP": totp_code(console.oscar)},
    )
    with urllib.request.urlopen(request, context=context(console.gw, console.oscar), timeout=15) as answer:
        assert answer.status == 200


class _Site(http.server.BaseHTTPRequestHandler):
    """Another site the operator happens to visit: a link into the console and a forged POST."""

    target = ""

    def do_GET(self) -> None:
        page = f"""<!doctype html><title>another site</title>
            <a id="in" href="{self.target}/console/units/{C2}">open the console</a>
            <p id="out">pending</p>
            <script>
              fetch("{self.target}/api/units/{C2}/quarantine", {{method: "POST", credentials: "include",
                    mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: '{{"reason":"csrf"}}'}})
                .then(() => document.getElementById("out").textContent = "sent",
                      () => document.getElementById("out").textContent = "sent");
            </script>"""
        data = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_another_origin_and_a_browser_without_certificate_get_nothing(console: Console) -> None:
    nobody = console.browsers["nobody"]
    for path in ("/console", f"/console/units/{C1}", "/console/assets/console.js"):
        nobody.get(console.url(path))
        assert "no_client_certificate" in nobody.page_source
        assert C1 not in nobody.page_source and "fleetgate</span>" not in nobody.page_source

    # Roles hold on every page, whatever a browser shows: metrics reads nothing here, ops no audit.
    for creds, path in ((console.gw.metrics_reader(), "/console"), (console.ops, "/console/audit")):
        try:
            urllib.request.urlopen(console.url(path), context=context(console.gw, creds), timeout=15)
            raise AssertionError(f"{path} answered {creds.ident}")
        except urllib.error.HTTPError as refused:
            assert (refused.code, json.loads(refused.read())["code"]) == (403, "role_lacks_right")

    # What the browser was told: a strict CSP and no framing on pages, assets and refusals alike.
    for path, creds in (
        ("/console", console.ops),
        ("/console/assets/console.js", console.ops),
        ("/console", None),
    ):
        request = urllib.request.Request(console.url(path))
        try:
            with urllib.request.urlopen(request, context=context(console.gw, creds), timeout=15) as answer:
                headers = answer.headers
        except urllib.error.HTTPError as refused:
            headers = refused.headers
        assert headers["Content-Security-Policy"] == CSP and headers["X-Frame-Options"] == "DENY"
        assert "Set-Cookie" not in headers

    _Site.target = console.gw.https_url
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = console.browsers["ops"]  # holds a certificate that may quarantine
        page.get(f"http://127.0.0.1:{server.server_address[1]}/")
        _wait(page, lambda d: _text(d, "#out") == "sent")
        page.find_element(By.ID, "in").click()
        _wait(page, lambda d: "foreign_origin" in d.page_source)
        assert "Contain" not in page.page_source
    finally:
        server.shutdown()
    assert api(console.gw, console.ops, "GET", f"/api/units/{C2}")[1]["state"] != "quarantined"
    refusals = [
        r for r in api(console.gw, console.auditor, "GET", "/api/audit")[1]["records"]
        if r["reason"] in ("foreign_origin", "unsupported_media_type")
    ]  # fmt: skip
    assert refusals, "the cross-site requests reached the gateway and were refused"


def test_the_map_shows_the_units_where_they_reported_and_highlights_quarantine(console: Console) -> None:
    quarantine(console, C3, "to be seen on the map")
    page = console.browsers["ops"]
    page.get(console.url("/console/map"))
    dots = {d.get_attribute("data-unit"): d for d in page.find_elements(By.CSS_SELECTOR, "circle.unit")}
    assert set(dots) == set(PLACES)
    at = {u: (float(d.get_attribute("cx") or 0), float(d.get_attribute("cy") or 0)) for u, d in dots.items()}
    for unit, place in PLACES.items():
        reported = (dots[unit].get_attribute("data-lat"), dots[unit].get_attribute("data-lon"))
        assert tuple(float(v or "nan") for v in reported) == place
    assert at[C3][0] > at[C2][0] > at[C1][0]  # Utrecht east of Amsterdam east of Rotterdam
    assert at[C2][1] < at[C3][1] < at[C1][1]  # Amsterdam north of Utrecht north of Rotterdam
    assert "state-quarantined" in (dots[C3].get_attribute("class") or "")  # quarantined above
    assert len(page.find_elements(By.CSS_SELECTOR, "circle.ring")) == 1


def test_the_fleet_list_filters_by_name_and_state(console: Console) -> None:
    quarantine(console, C3, "to be found by the filter")
    page = console.browsers["ops"]
    page.get(console.url("/console"))
    counts = {s: _text(page, f"[data-count={s}]") for s in ("online", "offline", "quarantined", "restricted")}
    assert counts == {"online": "3", "offline": "0", "quarantined": "1", "restricted": "1"}
    # ops follows the fleet's events (not the whole audit log: no operators' requests, no handshakes)
    _wait(page, lambda d: f"unit.quarantine unit/{C3}" in _text(d, "#events"))
    events = _text(page, "#events")
    assert "detector.fired unit/TRK-C2" in events and "admin." not in events and "tls." not in events
    page.find_element(By.ID, "q").send_keys("trk-c")
    Select(page.find_element(By.ID, "state")).select_by_value("quarantined")
    page.find_element(By.ID, "q").send_keys(Keys.ENTER)
    _wait(page, lambda d: "state=quarantined" in d.current_url)
    rows = [r.text.split()[0] for r in page.find_elements(By.CSS_SELECTOR, "table.units tbody tr")]
    assert rows == [C3]


def test_a_partner_cut_shows_its_blast_radius_first_then_cuts(console: Console) -> None:
    page = console.browsers["security"]
    _viewport(page, *DESKTOP)
    page.get(console.url("/console/partners"))
    cells = [c.text for c in page.find_elements(By.CSS_SELECTOR, "table tbody tr:first-child td")]
    assert cells[:2] == ["acme", "2"] and cells[3] == "1"  # tier 2, one live session
    page.find_element(By.CSS_SELECTOR, "button[data-partner=acme]").click()
    page.find_element(By.ID, "cut-totp").send_keys(totp_code(console.security))
    page.find_element(By.ID, "cut-dry").click()
    _wait(page, lambda d: "Would revoke and close" in _text(d, "#cut-result"))
    radius = _text(page, "#cut-result")
    assert "partner/acme" in radius and "live sessions: 1" in radius
    assert console.partner.client.disconnects.empty()  # a dry run: nothing happened yet
    page.save_screenshot(str(_shots(console) / "partners-cut-desktop-security.png"))
    assert api(console.gw, console.security, "GET", "/api/sessions")[1]["sessions"]

    page.find_element(By.ID, "cut-totp").send_keys(totp_code(console.security))
    page.find_element(By.ID, "cut-go").click()
    _wait(page, lambda d: "Done" in _text(d, "#cut-result"))
    console.partner.client.disconnects.get(timeout=5)  # the partner's live session was closed
    _wait(page, lambda d: "revoked" in _text(d, "table tbody tr"))


PAGES = (
    ("fleet", "/console"),
    ("unit", f"/console/units/{C3}"),
    ("map", "/console/map"),
    ("partners", "/console/partners"),
    ("audit", "/console/audit"),
    ("flows", "/console/flows"),
)


def _shots(console: Console) -> Path:
    out = os.environ.get("FLEETGATE_CONSOLE_SCREENSHOTS")
    shots = Path(out) if out else console.tmp / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _viewport(driver: WebDriver, width: int, height: int) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def test_every_page_fits_desktop_and_phone_and_every_control_is_labelled_and_reachable(
    console: Console,
) -> None:
    shots = _shots(console)
    console.control_round("quarantined", C3)  # the unit page shows a quarantined unit's live control
    for role in ("ops", "auditor"):
        page = console.browsers[role]
        for name, path in PAGES:
            for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
                _viewport(page, width, height)
                page.get(console.url(path))
                if not page.find_elements(By.CSS_SELECTOR, "header .who"):  # refused: the JSON error
                    assert role == "ops" and name == "audit"
                    continue
                overflow = page.execute_script(
                    "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 1, f"{name} scrolls sideways at {width}px for {role}"
                unlabelled = page.execute_script(_UNLABELLED)
                assert unlabelled == [], f"{name}: controls without a label: {unlabelled}"
                if role == "ops" or name in ("fleet", "unit", "audit"):  # auditor: events, no buttons
                    page.save_screenshot(str(shots / f"{name}-{label}-{role}.png"))
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    # Keyboard: from the top of the unit page, Tab reaches the skip link, then the quarantine controls.
    page = console.browsers["ops"]
    page.get(console.url(f"/console/units/{C1}"))
    body = page.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    assert page.switch_to.active_element.text == "Skip to content"
    reached = []
    for _ in range(30):
        page.switch_to.active_element.send_keys(Keys.TAB)
        element = page.switch_to.active_element
        reached.append(element.get_attribute("id") or element.get_attribute("data-action") or element.text)
        if element.get_attribute("data-action") == "quarantine":
            break
    assert reached[-3:] == ["reason", "totp", "quarantine"], reached


_UNLABELLED = """
    return [...document.querySelectorAll("input, select, button, a[href]")].filter(e => {
        const named = (e.labels && e.labels.length) || e.getAttribute("aria-label") || e.textContent.trim();
        return !named && e.type !== "hidden";
    }).map(e => e.outerHTML.slice(0, 80));
"""
