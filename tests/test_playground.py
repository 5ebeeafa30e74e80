"""The playground page (GET / on the HTTP port) in a real headless Chromium.

Debian's ``chromium`` and ``chromium-driver`` drive it through selenium (no browser
download: the machine may be offline, so Chromium's background networking is off).
Without them the tests are skipped with the reason, except under ``CI``, which
installs them: there they fail. Every wait has a deadline (WebDriverWait), no sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess

WAIT_S = 15.0
APT = "apt-get install -y chromium chromium-driver"

# One panel's <img> and its <figure>: what the page shows and whether it is done.
PANEL = """
const img = document.getElementById(arguments[0]);
return {state: img.closest('figure').dataset.state || '', src: img.getAttribute('src') || '',
        width: img.naturalWidth, height: img.naturalHeight, complete: img.complete};
"""
# The URL of the page's latest API call of one kind (sample, interpolate, ...).
LAST_CALL = """
const calls = performance.getEntriesByType('resource')
  .map(e => e.name).filter(n => n.includes('/' + arguments[0] + '?'));
return calls.length ? calls[calls.length - 1] : null;
"""
# The bytes of the picture an <img> shows (its blob: URL), base64.
IMAGE_BYTES = """
const done = arguments[arguments.length - 1];
fetch(document.getElementById(arguments[0]).src)
  .then(r => r.arrayBuffer())
  .then(b => { let s = ''; for (const x of new Uint8Array(b)) s += String.fromCharCode(x);
               done(btoa(s)); })
  .catch(e => done('failed: ' + e));
"""


def _tool(name: str) -> str | None:
    path = shutil.which(name) or f"/usr/bin/{name}"
    return path if Path(path).exists() else None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: there they must be installed)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium through Debian's chromedriver, one for the module."""
    chromium, chromedriver = _tool("chromium"), _tool("chromedriver")
    if chromium is None or chromedriver is None:
        missing = [n for n, p in (("chromium", chromium), ("chromedriver", chromedriver)) if not p]
        _unavailable(f"the playground test needs {' and '.join(missing)}: {APT}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("the playground test needs selenium (the dev extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, predicate: Callable[[Any], Any], what: str) -> Any:
    """``predicate(driver)`` until truthy (returned); fail with the page's state if not."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(predicate)
    except TimeoutException:
        panels = {p: driver.execute_script(PANEL, p) for p in ("grid", "slerp", "arith")}
        errors = driver.execute_script(
            "return [...document.querySelectorAll('.error')].map(e => e.id + ': ' + e.textContent)"
        )
        pytest.fail(
            f"timed out after {WAIT_S} s waiting for {what}; panels {panels}; errors {errors}; "
            f"console {driver.get_log('browser')}"
        )


def _new_image(driver: Any, panel: str, old_src: str, what: str) -> dict[str, Any]:
    """Wait until ``panel`` shows a decoded picture other than ``old_src``."""

    def arrived(d: Any) -> dict[str, Any] | None:
        state = d.execute_script(PANEL, panel)
        ok = state["state"] == "ok" and state["src"] != old_src and state["complete"]
        return state if ok and state["width"] > 0 else None

    state = _wait(driver, arrived, what)
    assert state["src"].startswith("blob:"), state
    return state


def _query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _http_samples(scrape: Callable[..., Any], server: ServerProcess, model: str) -> float:
    return sum(
        value
        for (name, labels), value in scrape(server).items()
        if name == "ganserve_requests_total"
        and ("method", "http_sample") in labels
        and ("model", model) in labels
        and ("code", "OK") in labels
    )


def test_playground_samples_blends_slerps_and_shows_errors(
    browser: Any, server: ServerProcess, scrape: Callable[..., Any]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    assert server.http_port > 0, "the session server runs without its HTTP API"
    base = f"http://127.0.0.1:{server.http_port}"
    browser.get(base + "/")
    model_options = (By.CSS_SELECTOR, "#model option")
    options = _wait(
        browser,
        lambda d: [o.get_attribute("value") for o in d.find_elements(*model_options)],
        "the model list",
    )
    assert sorted(options) == ["tiny-cond", "tiny-uncond"]
    grid = _new_image(browser, "grid", "", "the first grid")

    # An unconditional model has no class controls; the conditional one shows them.
    model = Select(browser.find_element(By.ID, "model"))
    model.select_by_value("tiny-uncond")
    grid = _new_image(browser, "grid", grid["src"], "the grid of tiny-uncond")
    assert not browser.find_element(By.ID, "label").is_displayed()
    model.select_by_value("tiny-cond")
    grid = _new_image(browser, "grid", grid["src"], "the grid of tiny-cond")
    assert browser.find_element(By.ID, "label").is_displayed()
    assert "latent size" in browser.find_element(By.ID, "model-info").text

    # Another class: a new picture, exactly the server's for that request, and counted.
    before = _http_samples(scrape, server, "tiny-cond")
    Select(browser.find_element(By.ID, "label")).select_by_value("3")
    grid = _new_image(browser, "grid", grid["src"], "the grid of class 3")
    url = browser.execute_script(LAST_CALL, "sample")
    assert (_query(url)["label"], _query(url)["seed"]) == ("3", "1"), url
    status, expected = _get(url)
    assert status == 200
    shown = base64.b64decode(browser.execute_async_script(IMAGE_BYTES, "grid"))
    assert shown == expected, "the page shows another picture than the server's for its URL"
    assert _http_samples(scrape, server, "tiny-cond") > before

    # The class blend: a second class at weight 0.3 (the slider moved with the keyboard).
    browser.find_element(By.ID, "blend-on").click()
    grid = _new_image(browser, "grid", grid["src"], "the grid blended at 0.5")
    browser.find_element(By.ID, "blend").send_keys(*[Keys.ARROW_LEFT] * 4)
    _wait(
        browser,
        lambda d: (
            float(_query(d.execute_script(LAST_CALL, "sample") or "?").get("blend", -1))
            == pytest.approx(0.3)
        ),
        "a sample request with blend=0.3",
    )
    grid = _new_image(browser, "grid", grid["src"], "the grid blended at 0.3")
    assert _query(browser.execute_script(LAST_CALL, "sample"))["blend_label"] == "1"

    # The slerp strip: one picture of `steps` frames, again after a change of class.
    strip = _new_image(browser, "slerp", "", "the slerp strip")
    assert strip["width"] > strip["height"]
    Select(browser.find_element(By.ID, "to-label")).select_by_value("7")
    _new_image(browser, "slerp", strip["src"], "the slerp strip to class 7")
    interpolate = _query(browser.execute_script(LAST_CALL, "interpolate"))
    assert (interpolate["method"], interpolate["to_label"]) == ("slerp", "7")

    # The arithmetic panel's picture.
    _new_image(browser, "arith", "", "the arithmetic picture")

    # A seed out of range: the server's message on the page, the last grid kept.
    seed = browser.find_element(By.ID, "seed")
    seed.send_keys(Keys.CONTROL, "a")
    seed.send_keys(str(2**64))
    error = _wait(
        browser,
        lambda d: (
            d.find_element(By.ID, "grid-error").is_displayed()
            and d.find_element(By.ID, "grid-error").text
        ),
        "the error of seed 2**64",
    )
    status, body = _get(browser.execute_script(LAST_CALL, "sample"))
    refusal = json.loads(body)
    assert status == 400 and refusal["code"] == "INVALID_ARGUMENT"
    assert error == f"{refusal['error']} (INVALID_ARGUMENT)"
    kept = browser.execute_script(PANEL, "grid")
    assert kept["state"] == "error" and kept["src"].startswith("blob:") and kept["width"] > 0


def test_playground_token_field(
    browser: Any,
    start_server: Callable[..., ServerProcess],
    tiny_model_repo: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    proc = start_server(tiny_model_repo, "--auth-token", "s3cret")
    base = f"http://127.0.0.1:{proc.http_port}"
    browser.get(base + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(base + "/")
    refused = _wait(
        browser,
        lambda d: (
            d.find_element(By.ID, "models-error").is_displayed()
            and d.find_element(By.ID, "models-error").text
        ),
        "the refusal without a token",
    )
    status, body = _get(base + "/v1/models")
    assert status == 401
    assert refused == f"{json.loads(body)['error']} (UNAUTHENTICATED)"

    browser.find_element(By.ID, "token").send_keys("s3cret", Keys.ENTER)
    _new_image(browser, "grid", "", "the first grid with the token")
    assert not browser.find_element(By.ID, "models-error").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('ganserve.token')") == "s3cret"
