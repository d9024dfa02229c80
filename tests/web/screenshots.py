"""The README's screenshots of the web app, taken with the browser-test tooling on real models.

    .venv/bin/python -m tests.web.screenshots docs/images

Starts `mixkit serve` (its own MIXKIT_HOME in a temporary folder), asks the `moa-tiny` preset
(SmolLM2-135M sampled 3 times, then a SmolLM2 aggregator, all run in-process by llama.cpp) a
question in the playground, saves `playground.png` while the answer streams, then opens the
run's timeline with its slowest proposer selected and saves `timeline.png`, then asks the
`gated` preset (Qwen2.5-0.5B and SmolLM2 behind the packaged gate) and saves `gated.png` with the
slots its gate skipped, then a mixture with a program agent (PROGRAM_MIXTURE) for `program.png`.
A few minutes on 2 cores; needs the same Chromium as the tests.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.serve.helpers import ServerProcess
from tests.web.harness import Browser, Page, missing_reason

QUESTION = "Why is the sea salty? Answer in three sentences."
GATED_QUESTION = "What is 17 + 25? Answer with the number."
PROGRAM_QUESTION = "What is 17 * 23 - 5?"
# a program agent (Qwen writing Python, run in the sandbox) beside a text agent, then the program
# agent writes the final answer: its program streams first, dim, in the answer card
PROGRAM_MIXTURE = """
description = "a program agent and a text agent propose; the program agent writes the answer"
aggregator = "coder"
deadline_s = 120
[agents.coder]
provider = "local"
model = "qwen2.5-coder-0.5b"
kind = "program"
temperature = 0.0
seed = 0
max_tokens = 160
[agents.qwen]
provider = "local"
model = "qwen2.5-coder-0.5b"
temperature = 0.2
max_tokens = 96
[[layers]]
agents = ["coder", "qwen"]
"""


def main(out: Path) -> None:
    if reason := missing_reason():
        sys.exit(f"cannot take screenshots: {reason}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        program = Path(folder) / "program-demo.toml"
        program.write_text(PROGRAM_MIXTURE)
        shoot(out, Path(folder), program)
    print(f"wrote playground.png, timeline.png, gated.png and program.png in {out}")


def shoot(out: Path, home: Path, program: Path) -> None:
    """Every screenshot, from one `mixkit serve` (the presets and the `program` mixture)."""
    with ServerProcess(home, [program]) as serve:
        browser = Browser(width=1360, height=1000)
        try:
            page = Page(browser.driver, serve.base)
            page.open("#/")
            page.ask("moa-tiny", QUESTION)
            # mid-run: every proposer has answered, the aggregator is part-way through
            page.wait(lambda _: len(page.text("#live .card.final .body").split()) >= 12, 600)
            browser.driver.save_screenshot(str(out / "playground.png"))
            page.wait(lambda _: page.text("#live .run-head .badge") in ("ok", "error"), 600)
            page.one("#live .run-head a").click()
            rows = page.wait(lambda _: page.css(".g-row.call"))
            critical = [r for r in rows if r.get_attribute("data-critical") == "1"]
            critical[0].click()
            page.wait(lambda _: "completion tokens" in page.text("#call-detail"))
            browser.driver.set_window_size(1360, 1300)
            browser.driver.save_screenshot(str(out / "timeline.png"))
            # a gated run (the default preset): the slots its gate skipped are greyed out
            browser.driver.set_window_size(1360, 1000)
            page.open("#/")
            page.ask("gated", GATED_QUESTION)
            page.wait(lambda _: page.text("#live .run-head .badge") in ("ok", "error"), 600)
            browser.driver.save_screenshot(str(out / "gated.png"))
            program_shot(browser, page, out)
        finally:
            browser.close()


def program_shot(browser: Browser, page: Page, out: Path) -> None:
    """A program agent in the playground: each program, its status and output on its card."""
    browser.driver.set_window_size(1360, 1250)
    page.open("#/")
    page.ask("program-demo", PROGRAM_QUESTION)
    page.wait(lambda _: page.text("#live .run-head .badge") in ("ok", "error"), 600)
    browser.driver.save_screenshot(str(out / "program.png"))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
