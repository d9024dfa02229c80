"""The browser-test tooling: Debian's Chromium driven by selenium, against a real `mixkit serve`.

Used by the tests in this folder and by `screenshots.py` (the README's images). Nothing here
downloads a browser: it runs the `chromium` and `chromedriver` that Debian's `chromium` and
`chromium-driver` packages install, or fails/skips naming them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

PACKAGES = "chromium chromium-driver"
INSTALL_HINT = f"install the Debian packages: apt-get install -y {PACKAGES}"
# What Chromium needs here: no sandbox (root in a container), no GPU, and no traffic of its own
# (component updates, sync, QUIC probes), so the only requests are the page's.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1360,900",
]


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def missing_reason() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the dev extra: pip install -e '.[dev]')"
    if find_browser() is None:
        return f"Chromium or its driver is missing: {INSTALL_HINT}"
    return None


class Browser:
    """One headless Chromium with a fresh profile; `.driver` is the selenium WebDriver."""

    def __init__(self, width: int = 1360, height: int = 900):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        found = find_browser()
        assert found is not None, INSTALL_HINT
        chromium, driver = found
        self.profile = tempfile.mkdtemp(prefix="mixkit-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={width},{height}")
        options.add_argument(f"--user-data-dir={self.profile}")
        # An explicit driver path: selenium's own driver manager (which downloads) never runs.
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def mixture_toml(name: str, url: str, proposers: list[str], aggregator: str, **top) -> str:
    """A mixture over the fake backend at `url`: one proposer layer of these behaviours (see
    mixkit.testing.fake_openai), then an aggregator; `top` adds top-level settings."""
    lines = [f'name = "{name}"', f'description = "{name}: test mixture"', 'aggregator = "agg"']
    lines += [f"{k} = {v!r}" for k, v in top.items()]
    agents = {f"p{i + 1}": m for i, m in enumerate(proposers)} | {"agg": aggregator}
    for agent, model in agents.items():
        lines += [f"[agents.{agent}]", 'provider = "openai"', f'base_url = "{url}"']
        lines.append(f"model = {_toml_str(model)}")
    if proposers:
        lines += ["[[layers]]", f"agents = {list(agents)[:-1]!r}".replace("'", '"')]
    return "\n".join(lines) + "\n"


def _toml_str(text: str) -> str:
    return "'" + text + "'" if '"' in text else f'"{text}"'


def write_mixtures(folder: Path, url: str, specs: dict[str, tuple]) -> list[Path]:
    """Write each `name: (proposers, aggregator, {settings})` as folder/name.toml."""
    paths = []
    for name, (proposers, aggregator, top) in specs.items():
        path = folder / f"{name}.toml"
        path.write_text(mixture_toml(name, url, proposers, aggregator, **top))
        paths.append(path)
    return paths


class Page:
    """Small helpers over the WebDriver for this app."""

    def __init__(self, driver, base: str):
        self.driver, self.base = driver, base

    def open(self, fragment: str = "#/") -> None:
        self.driver.get("about:blank")  # a real navigation, so the app starts afresh
        self.driver.get(f"{self.base}/{fragment}")
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete")

    def wait(self, predicate, timeout: float = 20.0):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(predicate)

    def css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def one(self, selector: str):
        return self.wait(lambda _: (found := self.css(selector)) and found[0])

    def text(self, selector: str) -> str:
        """The element's visible text ("" when absent), read in one step (never stale)."""
        return self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", selector
        )

    def attrs(self, selector: str, name: str) -> list:
        """One attribute of every match, read in one step (never stale)."""
        return self.js(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute(arguments[1]))",
            selector,
            name,
        )

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def ask(self, mixture: str, prompt: str) -> None:
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import Select

        select = self.one("#mixture")
        self.wait(lambda _: mixture in [o.text for o in Select(select).options])
        Select(select).select_by_value(mixture)
        box = self.one("#prompt")
        box.send_keys(prompt)
        box.send_keys(Keys.ENTER)
