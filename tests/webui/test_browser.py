"""The marketers' page in a real browser: headless Chromium (the Debian ``chromium`` and
``chromium-driver`` packages, which ``.ci/run`` installs) driven by Selenium against
``rapport ui`` started as a user starts it, on the serving tests' demo workspace with
scores, analytics and monitoring (:func:`ui_workspace.prepare_ui_workspace`).

The test signs in, opens every page, builds a list with a filter and a budget and sees the
preview change, sees a misspelt field answered with "did you mean", saves the list,
downloads it and compares it with ``rapport targets --list`` for the same definition, and
signs out; a wrong key is refused. Screenshots of every page go to ``$RAPPORT_SCREENSHOTS``
(default: the test's temporary folder; the README's come from ``docs/screenshots``).
The CSRF and cookie rules are checked over plain HTTP against the same server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from serving_harness import Workspace, free_port
from ui_workspace import prepare_ui_workspace

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="needs the Debian packages chromium and chromium-driver (.ci/run installs them)",
    ),
]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return prepare_ui_workspace(tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="module")
def ui_url(ws: Workspace) -> Iterator[str]:
    """``rapport ui`` on a free port, started as ``rapport demo`` starts it beside the
    service (:func:`rapport.demo.start_ui`); stopped after the module."""
    from rapport.demo import DemoOptions, start_ui
    from rapport.settings import Settings

    port = free_port()
    process = start_ui(DemoOptions(ui_port=port), Settings(home=ws.home))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "rapport ui exited"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "rapport ui did not start"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--disable-gpu",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("RAPPORT_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for(check, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``check()`` until it returns something truthy (its value) or fail."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # element not there yet, stale after an htmx swap
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def text_of(driver, css: str) -> str:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def settled_preview(driver) -> dict:  # type: ignore[no-untyped-def]
    """The preview's count, consent line and reach table, read in one go once two reads a
    second apart agree (typing sends a preview per pause: an earlier one may still land)."""
    read = """
        const text = (css) => (document.querySelector(css) || {}).innerText || "";
        const rows = [...document.querySelectorAll("#reach tbody tr")].map(
            (r) => [...r.querySelectorAll("td.n")].map((c) => c.innerText));
        return {count: text("#count"), consent: text("#consent"), reach: rows};
    """

    def settled():  # type: ignore[no-untyped-def]
        first = driver.execute_script(read)
        time.sleep(1.0)
        return first if first["count"] and first == driver.execute_script(read) else None

    return wait_for(settled, what="a settled preview")  # type: ignore[no-any-return]


def sign_in(driver, url: str, key: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{url}/signin")
    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key, Keys.ENTER)  # keyboard only


def test_in_the_browser(
    browser,
    ui_url: str,
    ws: Workspace,
    downloads: Path,
    shots: Path,  # type: ignore[no-untyped-def]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(f"{ui_url}/results")  # not signed in: to the sign-in form
    assert driver.current_url.endswith("/signin")
    driver.save_screenshot(str(shots / "signin.png"))

    sign_in(driver, ui_url, "rk_not-a-key")
    assert "not known" in wait_for(lambda: text_of(driver, "#signin-error"), what="refusal")
    sign_in(driver, ui_url, ws.keys["score"])  # a real key without the ui scope
    assert "'ui' or 'targets' scope" in wait_for(lambda: text_of(driver, "#signin-error"))
    sign_in(driver, ui_url, ws.keys["ui"])
    wait_for(lambda: driver.find_element(By.TAG_NAME, "h1").text == "Overview", what="overview")
    cookie = driver.get_cookie("rapport_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie.get("expiry")

    # every page, through its link in the navigation
    expected = {
        "Overview": "Active customers",
        "Segments": "All segments",
        "List builder": "Fields you can use",
        "Lists": "as recorded for audit",
        "Customer": "Customer id",
        "Results": "Model health",
    }
    for link, marker in expected.items():
        driver.find_element(By.LINK_TEXT, link).click()
        wait_for(
            lambda link=link: (
                driver.find_element(By.TAG_NAME, "h1").text == link or link == "List builder"
            ),
            what=link,
        )
        body = driver.find_element(By.TAG_NAME, "body").text
        assert marker in body, (link, body[:500])
        assert "Traceback" not in body and "No scores yet" not in body
        driver.save_screenshot(str(shots / f"{link.lower().replace(' ', '_')}.png"))
    # no impact table in this workspace: the empty state names the command
    driver.find_element(By.LINK_TEXT, "Results").click()
    assert "rapport impact" in text_of(driver, "#impact-empty")
    levels = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#checks tbody td:first-child")]
    assert levels and levels == sorted(levels, key=["alert", "warn", "ok"].index)  # worst first

    # a segment's profile, and a list from it
    driver.find_element(By.LINK_TEXT, "Segments").click()
    first = driver.find_element(By.CSS_SELECTOR, "#segments tbody th a")
    segment = first.text
    first.click()
    wait_for(lambda: segment in text_of(driver, "#profile h2"), what="profile")
    assert "recency score" in text_of(driver, "#segment-rule")
    drivers = driver.find_elements(By.CSS_SELECTOR, "#drivers li")  # live churn drivers
    assert drivers and all("the risk for" in d.text and "%" in d.text for d in drivers)
    consent = text_of(driver, "#segment-consent")
    assert "email" in consent and "call" in consent
    rows = driver.find_elements(By.CSS_SELECTOR, "#segment-actions tbody tr")
    for row in rows:  # nobody reachable beyond the action's customers
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        if cells[1] != "none":  # no_action contacts nobody
            assert 0 <= number(cells[3]) <= number(cells[2]), cells
    driver.save_screenshot(str(shots / "segment_profile.png"))
    driver.find_element(By.ID, "build-from-segment").click()
    wait_for(
        lambda: (
            driver.find_element(By.ID, "filter").get_attribute("value")
            == f"rfm_segment == '{segment}'"
        ),
        what="prefilled filter",
    )
    wait_for(lambda: text_of(driver, "#count"), what="segment preview")

    # a filter on a feature no preview has read yet: at once from the scoring run's
    # published features, labelled so (the fresh column is read behind it)
    driver.get(f"{ui_url}/builder")
    driver.execute_script(  # one preview (typing would send one per pause)
        "const box = document.getElementById('filter'); box.value = 'spend_365d > 0';"
        "box.dispatchEvent(new Event('input', {bubbles: true}));"
    )
    label = wait_for(
        lambda: (
            "scoring run" in text_of(driver, "#features-as-of")
            and text_of(driver, "#features-as-of")
        ),
        what="the snapshot's label",
    )
    assert "Features as of the scoring run" in label and "Saving waits" in label
    driver.save_screenshot(str(shots / "list_builder_snapshot.png"))

    # the list builder: a filter, then a budget, the preview follows
    driver.get(f"{ui_url}/builder")
    box = driver.find_element(By.ID, "filter")
    box.send_keys("churn_probabilty > 0.3")  # misspelt
    error = wait_for(lambda: text_of(driver, "#preview-error"), what="filter error")
    assert "did you mean 'churn_probability'" in error
    box.clear()
    box.send_keys("churn_probability > 0.3")
    shown = settled_preview(driver)
    everyone = number(shown["count"])
    # consent per channel and each action's reach; without a budget the best actions
    # are the list
    assert "email" in shown["consent"]
    steps = [[number(c) for c in row] for row in shown["reach"]]
    assert steps and all(e >= c >= a >= b for e, c, a, b in steps)
    assert sum(row[3] for row in steps) == everyone
    cost_all = number(text_of(driver, "#cost"))
    assert cost_all > 60, "the budget below must bind"
    budget = driver.find_element(By.ID, "budget")
    budget.send_keys("60")
    wait_for(lambda: number(text_of(driver, "#cost")) <= 60, what="budgeted preview")
    within = number(text_of(driver, "#count"))
    assert 0 < within < everyone
    assert "budget" in text_of(driver, "#removed")
    driver.save_screenshot(str(shots / "list_builder.png"))

    name = "browser_test_list"
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "save").send_keys(Keys.ENTER)
    list_id = wait_for(lambda: text_of(driver, "#saved-list-id"), 90, what="saved list")
    assert number(text_of(driver, "#count")) == within
    driver.save_screenshot(str(shots / "list_saved.png"))
    driver.find_element(By.ID, "download-csv").click()
    downloaded = wait_for(
        lambda: next(iter(downloads.glob(f"{list_id}.csv")), None), what="the download"
    )
    from_page = pd.read_csv(downloaded, dtype={"customer_id": str})

    # the same definition from the command line
    out = downloads / "from_cli.csv"
    env = {**os.environ, "RAPPORT_HOME": str(ws.home)}
    for var in ("RAPPORT_WAREHOUSE_URL", "RAPPORT_ONLINE_STORE", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    cli = subprocess.run(
        [sys.executable, "-m", "rapport.cli", "targets", "--list", name, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    from_cli = pd.read_csv(out, dtype={"customer_id": str})
    columns = ["rank", "customer_id", "action", "channel", "expected_value", "cost"]
    pd.testing.assert_frame_equal(from_page[columns], from_cli[columns])
    assert len(from_page) == within

    # the audit history shows it, with a re-download
    driver.find_element(By.LINK_TEXT, "Lists").click()
    history = text_of(driver, "#history")
    assert name in history
    driver.save_screenshot(str(shots / "lists.png"))

    # one customer of the list
    driver.get(f"{ui_url}/customer?id={from_page['customer_id'][0]}")
    assert "%" in text_of(driver, "#churn")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#events tbody tr")) > 0
    reasons = driver.find_elements(By.CSS_SELECTOR, "#reasons li")  # live, with reasons
    assert reasons and all("the risk" in r.text for r in reasons)
    driver.save_screenshot(str(shots / "customer.png"))

    driver.find_element(By.ID, "signout").click()
    wait_for(lambda: driver.current_url.endswith("/signin"), what="signed out")
    driver.get(f"{ui_url}/lists")
    assert driver.current_url.endswith("/signin")


def test_csrf_and_cookies_over_http(ui_url: str, ws: Workspace) -> None:
    with httpx.Client(base_url=ui_url, timeout=60) as client:
        form = client.get("/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        assert client.post("/signin", data={"key": ws.keys["ui"]}).status_code == 403
        wrong = client.post("/signin", data={"key": "rk_wrong", "csrf": token})
        assert wrong.status_code == 401 and "rapport_session" not in client.cookies
        ok = client.post("/signin", data={"key": ws.keys["targets"], "csrf": token})
        assert ok.status_code == 303
        flags = ok.headers["set-cookie"].lower()
        assert "httponly" in flags and "samesite=strict" in flags and "max-age=" in flags
        page = client.get("/builder")
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        body = {"filter": "churn_probability > 0.5", "budget": "50"}
        assert client.post("/builder/preview", data=body).status_code == 403
        assert client.post("/builder/preview", data={**body, "csrf": "x" * 43}).status_code == 403
        assert client.post("/builder/save", data={**body, "name": "nope"}).status_code == 403
        assert client.post("/signout", data={}).status_code == 403
        good = client.post("/builder/preview", data=body, headers={"X-CSRF-Token": csrf})
        assert good.status_code == 200 and 'id="count"' in good.text
        assert client.post("/signout", data={"csrf": csrf}).status_code == 303
        after = client.get("/", follow_redirects=False)
        assert after.status_code == 303 and after.headers["location"] == "/signin"
