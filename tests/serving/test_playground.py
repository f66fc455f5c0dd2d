"""The playground (GET /) in a real headless browser against a real `tagi serve`.

The browser is Debian's chromium, driven through its chromedriver by Selenium (given both paths,
Selenium downloads nothing). Everything the page shows is compared with what the HTTP API
answers for the same request. Without the browser the tests skip (before any server starts:
`browser` comes first), which fails a CI run (tests/conftest.py); `.ci/run` installs it.
"""

from __future__ import annotations

import gzip
import io
import re
import signal
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = "playground-test-key"
INSTRUCTION = "Reverse the list."
INPUTS = ["apple, river, stone", "green, 7, house, cloud seven"]
MAX_NEW_TOKENS = 12
WAIT_S = 60.0


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.skip(f"no browser ({', '.join(missing)} missing): apt-get install chromium chromium-driver, as .ci/run does")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # --no-sandbox: chromium refuses to start as root, or in a container without user namespaces,
    # with its sandbox on; the browser only ever loads the local test server's page.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


class Playground:
    """The page as a user drives it: fill the form, press Run, read what it shows."""

    def __init__(self, driver: webdriver.Chrome, url: str) -> None:
        self.driver = driver
        driver.get(f"{url}/")

    def element(self, element_id: str):
        return self.driver.find_element(By.ID, element_id)

    def text(self, element_id: str) -> str:
        # textContent, not .text: .text is the rendered text with whitespace collapsed and trimmed.
        return self.element(element_id).get_property("textContent")

    def type(self, element_id: str, text: str) -> None:
        field = self.element(element_id)
        field.clear()
        if text:
            field.send_keys(text)

    def run(
        self,
        instruction: str,
        inputs: list[str],
        max_new_tokens: int | None = MAX_NEW_TOKENS,
        fusion: str = "",
        stream: bool = True,
    ) -> str:
        """Fill in the form, press Run and wait for the page to finish; 'done' or 'error'."""
        self.type("instruction", instruction)
        self.type("inputs", "\n".join(inputs))
        self.type("max-new-tokens", "" if max_new_tokens is None else str(max_new_tokens))
        Select(self.element("fusion")).select_by_value(fusion)
        if self.element("stream").is_selected() != stream:
            self.element("stream").click()
        main = self.element("playground")
        self.driver.execute_script("arguments[0].dataset.state = 'idle'", main)  # no earlier run's state
        self.element("run").click()
        WebDriverWait(self.driver, WAIT_S).until(lambda _: main.get_attribute("data-state") in ("done", "error"))
        return main.get_attribute("data-state")

    def outputs(self) -> list[str]:
        return [o.get_property("textContent") for o in self.driver.find_elements(By.CSS_SELECTOR, "#outputs .output")]


def api_outputs(client, adapter_id: str, **options) -> list[str]:
    body = {"adapter_id": adapter_id, "inputs": INPUTS, "max_new_tokens": MAX_NEW_TOKENS, **options}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()["outputs"]


def download(driver: webdriver.Chrome, link, folder: Path, name: str) -> bytes:
    """Click the link and wait for the file; Chromium writes NAME.crdownload and renames it when complete."""
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})
    link.click()
    deadline = time.monotonic() + WAIT_S
    while not (folder / name).exists():
        assert time.monotonic() < deadline, f"{name} was not downloaded: {sorted(p.name for p in folder.iterdir())}"
        time.sleep(0.1)
    return (folder / name).read_bytes()


def assert_peft_archive(data: bytes) -> None:
    assert data[:2] == b"\x1f\x8b", "not gzip"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as archive:
        assert any(name.endswith("adapter_config.json") for name in archive.getnames())


def test_the_page_is_served_at_the_root(server, client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "tagi playground" in page.text and "litserve running" not in page.text
    # Scripts from this origin only, and the page has none inline: injected markup could not run.
    assert page.headers["content-security-policy"].startswith("default-src 'self';")
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="static/playground.js" defer>']
    for asset, media_type in (("/static/playground.js", "text/javascript"), ("/static/playground.css", "text/css")):
        response = client.get(asset)
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        assert "http://" not in response.text and "https://" not in response.text, "the page loads nothing from elsewhere"


def test_outputs_adapter_and_fusion_match_the_api(browser, server, client, tmp_path):
    created = client.post("/v1/adapters", json={"instruction": INSTRUCTION}).json()
    adapter_id = created["adapter_id"]
    fused, unfused = api_outputs(client, adapter_id, fusion=True), api_outputs(client, adapter_id, fusion=False)
    assert fused != unfused, "fusion changes nothing for this instruction: the switch would go untested"
    default = api_outputs(client, adapter_id)
    page = Playground(browser, server.url)

    assert page.run(INSTRUCTION, INPUTS) == "done", page.text("error")
    assert page.outputs() == default
    assert page.text("adapter-id") == adapter_id
    assert int(re.sub(r"\D", "", page.text("adapter-size"))) == created["num_parameters"]
    assert re.fullmatch(r"[\d,]+ ms", page.text("generation-time")), page.text("generation-time")
    assert re.fullmatch(r"[\d,]+ ms( \(cached\))?", page.text("adapter-time")), page.text("adapter-time")

    assert page.run(INSTRUCTION, INPUTS, fusion="false") == "done", page.text("error")
    assert page.outputs() == unfused
    assert page.run(INSTRUCTION, INPUTS, fusion="true", stream=False) == "done", page.text("error")
    assert page.outputs() == fused

    link = page.element("download")
    assert link.get_attribute("href") == f"{server.url}/v1/adapters/{adapter_id}/peft"
    assert_peft_archive(download(browser, link, tmp_path, f"{adapter_id}.tar.gz"))


def test_errors_show_the_server_message(browser, server, client):
    page = Playground(browser, server.url)
    expected = client.post("/v1/adapters", json={"instruction": ""})
    assert expected.status_code == 422
    assert page.run("", INPUTS) == "error"
    assert page.text("error") == expected.json()["error"]["message"]
    assert "422" in page.text("status")

    # A bad generate request, after its adapter was made: 33 inputs is one too many.
    too_many = [f"item {i}" for i in range(33)]
    expected = client.post("/v1/generate", json={"instruction": INSTRUCTION, "inputs": too_many})
    assert expected.status_code == 422
    assert page.run(INSTRUCTION, too_many) == "error"
    assert page.text("error") == expected.json()["error"]["message"]


def test_server_text_is_never_markup(browser, server):
    markup = "<img src=x onerror=\"document.title='pwned'\"><b>bold</b>"
    page = Playground(browser, server.url)
    assert page.run(INSTRUCTION, [markup]) == "done", page.text("error")
    assert browser.find_elements(By.CSS_SELECTOR, "#outputs img, #outputs b") == []
    assert page.text("outputs").startswith(markup)
    assert browser.title == "tagi playground"


def test_streamed_outputs_grow_while_generating(browser, server, client):
    """Every text the first output shows is recorded with its time: partial texts (prefixes of
    the final output) must appear well before the final answer, not all at its end."""
    page = Playground(browser, server.url)
    browser.execute_script(
        """
        window.shown = [];
        new MutationObserver((records) => {
          for (const record of records)
            for (const node of record.addedNodes)
              if (node.nodeType === Node.TEXT_NODE && node.parentElement.matches("#outputs li:first-child .output"))
                window.shown.push([performance.now(), node.data]);
        }).observe(document.getElementById("outputs"), {childList: true, subtree: true});
        """
    )
    long_run = 160
    assert page.run(INSTRUCTION, INPUTS[:1], max_new_tokens=long_run) == "done", page.text("error")
    final = page.outputs()[0]
    assert [final] == api_outputs(client, page.text("adapter-id"), inputs=INPUTS[:1], max_new_tokens=long_run)
    shown = browser.execute_script("return window.shown")
    partial = [(t, text) for t, text in shown if text != final]
    assert partial, f"only the final text was shown: {shown}"
    assert all(final.startswith(text) for _, text in partial)
    first, last = partial[0][0], shown[-1][0]
    total = float(re.sub(r"[^\d]", "", page.text("generation-time")))
    assert last - first >= 0.25 * total, f"partial outputs came only at the end: {first:.0f}..{last:.0f} ms of {total:.0f} ms"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, serve_checkpoint, server_factory):
    proc = server_factory(tmp_path_factory.mktemp("keyed"), serve_checkpoint, "--workers", "1", env={"LIT_SERVER_API_KEY": KEY})
    try:
        yield proc.wait_ready()
    finally:
        proc.stop(signal.SIGINT)
        proc.kill()


def test_with_an_api_key_the_page_asks_for_it_and_sends_it(browser, keyed_server, tmp_path):
    page = Playground(browser, keyed_server.url)
    WebDriverWait(browser, WAIT_S).until(lambda _: page.element("api-key-row").is_displayed())
    assert page.run(INSTRUCTION, INPUTS) == "error"
    assert "API key" in page.text("error")

    page.type("api-key", KEY)
    assert page.run(INSTRUCTION, INPUTS) == "done", page.text("error")
    with keyed_server.client() as client:
        adapter_id = client.post("/v1/adapters", json={"instruction": INSTRUCTION}).json()["adapter_id"]
        assert page.outputs() == api_outputs(client, adapter_id)
    # A link cannot carry the key: the page fetches the archive with it and saves it from memory.
    assert_peft_archive(download(browser, page.element("download"), tmp_path, f"{adapter_id}.tar.gz"))
