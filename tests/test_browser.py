"""The rating interface as a rater uses it: Voilà serves notebooks/rate.ipynb on loopback,
headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) clicks scores,
saves, types a rating on the keyboard, reloads the page, and finds everything saved — on disk
and in the resumed UI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdlib.data import benchmarks
from sdlib.runs.params import HumanStudyParams
from sdlib.study import human_study
from sdlib.study.ratings import RatingStore

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def make_study(folder: Path, data_dir: Path, raters: list[str]) -> None:
    """A small study: three real MBPP test problems with a broken reference each, two
    hand-written 'model' explanations per problem."""
    problems = benchmarks.load_by_id("mbpp", directory=data_dir)
    chosen = []
    for task_id in ("11", "12", "13"):
        p = problems[task_id]
        chosen.append(
            {
                "id": f"{task_id}/s0",
                "task_id": task_id,
                "benchmark": "mbpp",
                "code": p.reference.replace("return", "return None or", 1),
                "feedback": "Failed test: " + p.visible_tests[0],
                "verdict": {"status": "fail"},
                "model": "base",
                "text": p.text,
                "signature": p.prompt,
                "tests": list(p.visible_tests),
            }
        )
    explanations = [
        {
            "id": f"{c['id']}/{m}",
            "source_id": c["id"],
            "model": m,
            "explanation": f"Explanation {i}: the function returns None instead of the result.",
            "response": "",
            "code": None,
            "verdict": {"status": "no_code"},
        }
        for i, (c, m) in enumerate((c, m) for c in chosen for m in ("base", "sft"))
    ]
    folder.mkdir(parents=True)
    human_study.write_study(
        folder,
        {"problems": chosen, "skipped_models": {}},
        explanations,
        HumanStudyParams(raters=raters, raters_per_item=2),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def voila_server(tmp_path_factory, data_dir):
    study = tmp_path_factory.mktemp("browser") / "human_study"
    make_study(study, data_dir, ["ann", "bob"])
    port = _free_port()
    log = open(study.parent / "voila.log", "w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "voila"),
            str(ROOT / "notebooks" / "rate.ipynb"),
            "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1",
            "--show_tracebacks=True",
        ],
        env={**os.environ, "SDLIB_STUDY": str(study)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"voila did not start: {(study.parent / 'voila.log').read_text()}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}", study
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="session")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "headless browser missing: apt-get install -y chromium chromium-driver"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1200,2000")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_rate_two_items_by_clicking_reload_and_resume(voila_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, study = voila_server
    order = human_study.load_assignments(study)["ann"]
    wait = WebDriverWait(browser, 60)

    def css(selector: str):
        return browser.find_element(By.CSS_SELECTOR, selector)

    def open_page() -> None:
        browser.get(f"{url}/?rater=ann")
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, ".sdlib-correctness-1")))

    def saved(n: int) -> None:
        wait.until(
            EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".sdlib-status"), f"Saved item {n}")
        )

    open_page()
    assert "item 1 of 6" in css(".sdlib-progress").text
    assert "rated 0" in css(".sdlib-progress").text

    # saving without scores is refused, and nothing is written
    css(".sdlib-save").click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".sdlib-status"), "first"))
    assert not (study / "ratings" / "ann.jsonl").exists()

    css(".sdlib-correctness-4").click()
    css(".sdlib-helpfulness-5").click()
    css(".sdlib-save").click()
    saved(1)
    css(".sdlib-correctness-2").click()
    css(".sdlib-helpfulness-3").click()
    css(".sdlib-comment textarea").send_keys("misses the real bug")
    css(".sdlib-save").click()
    saved(2)

    browser.refresh()  # a new page and a new kernel: state comes only from disk
    open_page()
    header = css(".sdlib-progress").text
    assert "item 3 of 6" in header and "rated 2" in header, header

    latest = RatingStore(study, "ann").latest()
    assert {k: (v["correctness"], v["helpfulness"]) for k, v in latest.items()} == {
        order[0]: (4, 5),
        order[1]: (2, 3),
    }
    assert latest[order[1]]["comment"] == "misses the real bug"
    assert not (study / "ratings" / "bob.jsonl").exists()

    # the keyboard: a rating typed into the keys box, then back to see it
    keys = css(".sdlib-keys input")
    keys.send_keys("3 4 clear hint", Keys.ENTER)
    saved(3)
    assert RatingStore(study, "ann").latest()[order[2]]["comment"] == "clear hint"
    css(".sdlib-keys input").send_keys("b", Keys.ENTER)
    wait.until(
        EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".sdlib-progress"), "item 3 of 6")
    )
    # the progress line and the item's own text are two widget updates: wait for both
    wait.until(lambda b: "You rated this item: correctness 3, helpfulness 4" in b.page_source)
