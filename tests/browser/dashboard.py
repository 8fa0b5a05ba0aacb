#!/usr/bin/env python3
"""End-to-end test of the dashboard in a real headless Chromium.

It builds nothing: it takes the `keel` binary, runs `keel demo` (the hoops pipeline over
2026-11-08..14, with faults) into a temporary directory, serves that state with `keel serve` on a
free loopback port and an API token of its own, and drives Debian's Chromium through Playwright
over every page of the dashboard: the grid, a run, an attempt and its log, a task's history,
resources, health, a retry sent from the run page, a narrow screen and dark mode. Every page is
saved as a full-page screenshot to target/dashboard-screenshots/NN-name.png.

Any console error, uncaught script error or failed request (4xx/5xx) in the browser fails the
test, and so does a missing element: each failure names the page and what was missing.

    python3 tests/browser/dashboard.py [KEEL] [--screenshots DIR] [--chromium PATH]

The whole test is bounded (3 minutes) and always stops the server it started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright

PIPELINE = "hoops"
DATES = [f"2026-11-{day:02d}" for day in range(8, 15)]
NO_GAMES = "2026-11-11"
# The tasks examples/hoops/keel.toml runs once per item (per game, per player).
FANNED_OUT = ["scrape_boxscores", "predictions"]
NEWEST = "2026-11-14"
RETRIED_TASK = "grading"
# Chromium on a machine without a network: without the background-networking flags it keeps
# trying to reach the outside and misbehaves. Playwright adds a fresh --user-data-dir itself.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TEST_SECONDS = 170  # under the 3 minutes the test is allowed
WAIT_MS = 10_000  # the longest any one element is waited for
DEMO_SECONDS = 90
SERVE_START_SECONDS = 20
RETRY_SECONDS = 30  # for a retried task to run and show on the page (refreshed every 3 s)


class Failure(Exception):
    """A check that failed: the page and what was wrong."""


def fail(page_name: str, what: str) -> None:
    raise Failure(f"[{page_name}] {what}")


def check(condition: object, page_name: str, what: str) -> None:
    if not condition:
        fail(page_name, what)


def log(message: str) -> None:
    print(message, flush=True)


class Budget:
    """The whole test's deadline: SIGALRM ends it, and the cleanup still runs."""

    def __init__(self, seconds: int):
        self.started = time.monotonic()
        self.seconds = seconds

    def __enter__(self) -> "Budget":
        def expired(_signum, _frame):
            raise Failure(f"[test] did not finish within {self.seconds} s")

        def terminated(signum, _frame):
            raise Failure(f"[test] stopped by signal {signum}")

        signal.signal(signal.SIGALRM, expired)
        # Stopped from outside (a CI timeout): end as a failure, so keel serve is stopped too.
        signal.signal(signal.SIGTERM, terminated)
        signal.signal(signal.SIGINT, terminated)
        signal.alarm(self.seconds)
        return self

    def __exit__(self, *_exc) -> None:
        signal.alarm(0)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Server:
    """`keel serve` of the demo's state, stopped with SIGTERM (then SIGKILL) when done."""

    def __init__(self, keel: Path, state: Path, token: str):
        self.log_path = state / "serve.log"
        self.log_file = open(self.log_path, "wb")
        env = dict(os.environ)
        env.update(
            {
                "KEEL_API_TOKEN": token,
                # What the demo's tasks read, so that a retried task runs as it did in the demo.
                "PATH": f"{state / 'bin'}:{env.get('PATH', '')}",
                "HOOPS_WAREHOUSE": str(state / "warehouse.db"),
                "HOOPS_EXPORT_DIR": str(state / "exports"),
                "HOOPS_RETRY_AFTER_CAP": "0",
                "RUST_LOG": env.get("RUST_LOG", "info"),
            }
        )
        self.process = subprocess.Popen(
            [str(keel), "serve", str(state / "keel.toml"), "--addr", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.url = self._wait_for_address()

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + SERVE_START_SECONDS
        while time.monotonic() < deadline:
            found = re.search(r"API on (http://[0-9.]+:[0-9]+)", self.output())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                fail("serve", f"keel serve exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.1)
        fail("serve", f"keel serve did not say 'API on http://…' within {SERVE_START_SECONDS} s:\n"
             + self.output())
        raise AssertionError("unreachable")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log("keel serve did not stop within 10 s of SIGTERM; killing it")
                self.process.kill()
                self.process.wait(timeout=10)
        self.log_file.close()


def api_get(server: Server, token: str, path: str) -> dict:
    request = urllib.request.Request(
        server.url + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


class Browser:
    """Chromium pages that record every console error, script error and failed request."""

    def __init__(self, playwright, chromium: str, base: str, shots: Path):
        self.browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_FLAGS, timeout=30_000
        )
        self.base = base
        self.shots = shots
        self.shot_number = 0
        self.problems: list[str] = []

    def context(self, **options):
        context = self.browser.new_context(base_url=self.base, **options)
        context.set_default_timeout(WAIT_MS)
        context.set_default_navigation_timeout(WAIT_MS)
        return context

    def watch(self, page: Page, name: str) -> Page:
        def console(message) -> None:
            if message.type == "error":
                source = (message.location or {}).get("url") or page.url
                self.problems.append(f"[{name}] console error from {source}: {message.text}")

        def page_error(error) -> None:
            self.problems.append(f"[{name}] script error at {page.url}: {error}")

        def response(answer) -> None:
            if answer.status >= 400:
                self.problems.append(
                    f"[{name}] {answer.request.method} {answer.url} answered {answer.status}"
                )

        def request_failed(request) -> None:
            failure = request.failure or ""
            # A fetch cut short by leaving the page (live refresh, a followed log) is no fault.
            if "ERR_ABORTED" not in failure:
                self.problems.append(f"[{name}] {request.method} {request.url} failed: {failure}")

        page.on("console", console)
        page.on("pageerror", page_error)
        page.on("response", response)
        page.on("requestfailed", request_failed)
        return page

    def screenshot(self, page: Page, name: str) -> Path:
        self.shot_number += 1
        path = self.shots / f"{self.shot_number:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        log(f"   screenshot {path}")
        return path

    def assert_clean(self, name: str) -> None:
        if self.problems:
            raise Failure(f"[{name}] the browser reported problems:\n  " + "\n  ".join(self.problems))


def goto(page: Page, name: str, url: str) -> None:
    try:
        answer = page.goto(url, wait_until="load")
    except PlaywrightError as error:
        fail(name, f"could not open {url}: {error}")
    check(answer is not None and answer.ok, name,
          f"{url} answered {answer.status if answer else 'nothing'}")


def click_through(page: Page, name: str, selector: str) -> None:
    """Clicks the first `selector` and waits for the page it leads to."""
    link = page.locator(selector).first
    try:
        link.wait_for(state="visible", timeout=WAIT_MS)
    except PlaywrightError:
        fail(name, f"nothing to click: {selector} at {page.url}")
    try:
        with page.expect_navigation(wait_until="load", timeout=WAIT_MS):
            link.click()
    except PlaywrightError as error:
        fail(name, f"clicking {selector} at {page.url} led nowhere: {error}")


def one(page: Page, name: str, selector: str, what: str):
    """The element `selector`, waited for; fails naming the page and what is missing."""
    locator = page.locator(selector)
    try:
        locator.first.wait_for(state="attached", timeout=WAIT_MS)
    except PlaywrightError:
        fail(name, f"missing {what} ({selector}) at {page.url}")
    return locator


def visible(page: Page, name: str, selector: str, what: str):
    locator = one(page, name, selector, what)
    try:
        locator.first.wait_for(state="visible", timeout=WAIT_MS)
    except PlaywrightError:
        fail(name, f"{what} ({selector}) is not visible at {page.url}")
    return locator


def background(locator) -> str:
    return locator.evaluate("element => getComputedStyle(element).backgroundColor")


def is_painted(colour: str) -> bool:
    return colour not in ("", "transparent", "rgba(0, 0, 0, 0)")


def luminance(colour: str) -> float:
    channels = [int(value) for value in re.findall(r"\d+", colour)[:3]]
    red, green, blue = (channel / 255 for channel in channels)
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


# ---- the pages ----------------------------------------------------------------------------


def check_grid(page: Page, tasks: list[str]) -> None:
    name = "grid"
    check(re.search(rf"/ui/{PIPELINE}/?$", page.url), name, f"/ did not lead to /ui/{PIPELINE}: {page.url}")
    visible(page, name, "table.grid", "the grid table")
    headers = page.locator("table.grid th.task a")
    check(headers.count() == len(tasks), name,
          f"{headers.count()} task columns (th.task a), expected {len(tasks)}")
    shown = [text.strip() for text in headers.all_inner_texts()]
    check(sorted(shown) == sorted(tasks), name, f"task columns {shown} are not the tasks {tasks}")
    for header in headers.all():
        href = header.get_attribute("href") or ""
        check(re.fullmatch(rf"/ui/{PIPELINE}/tasks/[\w.-]+", href), name,
              f"task header link {href!r} is not a task history URL")
    run_links = page.locator("tr[data-partition] th.partition a.run-link")
    linked = sorted(page.locator("tr[data-partition]:has(th.partition a.run-link)")
                    .evaluate_all("rows => rows.map(row => row.dataset.partition)"))
    # The pipeline keeps its daily schedule: a fire during the test adds a run of a later date.
    scheduled = [date for date in linked if date > NEWEST]
    if scheduled:
        log(f"   (runs of {scheduled} started by the schedule during the test)")
    check([date for date in linked if date <= NEWEST] == DATES, name,
          f"partitions with a run are {linked}, expected {DATES}")
    for link in run_links.all():
        href = link.get_attribute("href") or ""
        check(re.fullmatch(rf"/ui/{PIPELINE}/runs/\d+", href), name,
              f"partition link {href!r} is not a run URL")
    known = {"succeeded", "no_data", "degraded", "failed", "running", "retrying", "waiting",
             "pending", "skipped", "cancelled", "frozen", "none"}
    for date in DATES:
        row = f'tr[data-partition="{date}"]'
        cells = page.locator(f"{row} td.cell")
        check(cells.count() == len(tasks), name,
              f"row {date} has {cells.count()} cells, expected {len(tasks)}")
        classes = cells.evaluate_all("cells => cells.map(cell => [...cell.classList])")
        for index, cell_classes in enumerate(classes):
            states = set(cell_classes) & known
            check(states, name, f"row {date}, cell {index + 1} ({tasks_in_columns(page)[index]})"
                  f" has no state class: {cell_classes}")
        links = page.locator(f"{row} td.cell a")
        for link in links.all():
            href = link.get_attribute("href") or ""
            # A fanned-out task's cell opens its run at the task, where its items are.
            check(re.fullmatch(
                rf"/ui/{PIPELINE}/runs/\d+(/tasks/[\w.-]+/attempts/\d+|#task-[\w.-]+)?", href),
                  name, f"row {date}: cell link {href!r} is not an attempt (or run) URL")
    # The day without games: every task ran and reported no data, each cell shows it; the
    # fanned-out tasks had no items because their lists had no data, so they have none either.
    no_games = page.locator(f'tr[data-partition="{NO_GAMES}"] td.cell')
    no_data = page.locator(f'tr[data-partition="{NO_GAMES}"] td.cell.no_data a')
    check(no_data.count() == len(tasks), name,
          f"row {NO_GAMES} (no games) has {no_data.count()} of {no_games.count()} cells"
          f" as linked no_data cells, expected all (fanned out: {FANNED_OUT})")
    for cell in no_games.all():
        check(cell.is_visible() and (cell.bounding_box() or {}).get("width", 0) > 4, name,
              f"a cell of {NO_GAMES} is not shown")
    # Colours: the cells and the legend are painted with the state colours.
    painted = page.locator("td.cell.succeeded").first
    check(page.locator("td.cell.succeeded").count() > 0, name, "no succeeded cell at all")
    check(is_painted(background(painted)), name, "a succeeded cell has no background colour")
    check(background(painted) != background(no_games.first), name,
          "succeeded and no_data cells have the same colour")
    # A partition's link is edged with its run's colour (all the demo's runs succeeded).
    for link in page.locator("th.partition a.run-link.succeeded").all():
        edge = link.evaluate("element => getComputedStyle(element).borderLeftColor")
        check(edge == background(painted), name,
              f"the link of succeeded run {link.inner_text()!r} is edged {edge},"
              f" not the succeeded colour {background(painted)}")
    legend = visible(page, name, ".legend", "the legend")
    entries = legend.locator(".cell")
    check(entries.count() >= 10, name, f"the legend has {entries.count()} entries, expected 10")
    for entry in entries.all():
        check(is_painted(background(entry)), name,
              f"legend entry {entry.inner_text()!r} has no colour")


def tasks_in_columns(page: Page) -> list[str]:
    return [text.strip() for text in page.locator("table.grid th.task a").all_inner_texts()]


def check_run(page: Page, run: dict, tasks: list[str]) -> None:
    name = "run"
    visible(page, name, "h1", "the heading")
    heading = page.locator("h1").first.inner_text()
    check(run["partition"] in heading or str(run["run"]) in heading, name,
          f"the heading {heading!r} names neither the run nor its partition")
    state = visible(page, name, "#run-state", "the run's state").first.inner_text().strip()
    check(state, name, "#run-state is empty")
    check(run["state"] in state.lower(), name,
          f"#run-state says {state!r}, the API says {run['state']!r}")
    visible(page, name, "#gantt svg", "the gantt chart")
    bars = page.locator("#gantt svg rect.bar[data-task][data-attempt]")
    ran = {attempt["task"] for attempt in run["attempts"] if attempt["kind"] == "attempt"}
    barred = set(bars.evaluate_all("bars => bars.map(bar => bar.dataset.task)"))
    check(ran <= barred, name, f"no gantt bar for the attempts of {sorted(ran - barred)}")
    widths = bars.evaluate_all("bars => bars.map(bar => bar.getBoundingClientRect().width)")
    check(all(width > 0 for width in widths), name, "a gantt bar has no width")
    one(page, name, "#gates", "the gates")
    visible(page, name, "#tasks", "the task table")
    for task in tasks:
        one(page, name, f"#tasks tr#task-{task}", f"the row of task {task}")
    one(page, name, "#tasks a.attempt-link", "links to attempts")
    events = visible(page, name, "#events", "the events").first.inner_text().strip()
    check(events, name, "#events is empty")
    visible(page, name, "#actions", "the actions")
    visible(page, name, "#actions input#api-token", "the token field")
    one(page, name, '#actions button[data-action$="/retry"][data-body="{}"]',
        "the button that retries failed tasks")
    one(page, name, '#actions button[data-action$="/retry"][data-tasks-from="retry-tasks"]',
        "the button that retries named tasks")
    visible(page, name, "#actions input#retry-tasks", "the field naming tasks to retry")
    one(page, name, "#action-result", "the place for an action's answer")


def check_attempt(page: Page) -> None:
    name = "attempt"
    check(re.search(rf"/ui/{PIPELINE}/runs/\d+/tasks/[\w.-]+/attempts/\d+$", page.url), name,
          f"the attempt link led to {page.url}")
    visible(page, name, "#attempt", "the attempt's details")
    check(page.locator("#attempt").first.evaluate("element => element.tagName") == "DL", name,
          "#attempt is not a dl")
    check(page.locator("#attempt dt").count() > 0, name, "#attempt has no dt")
    log_text = visible(page, name, "pre#log", "the log").first.inner_text().strip()
    check(log_text, name, "pre#log is empty")


def check_history(page: Page, task: str, metrics: list[str]) -> None:
    name = "task history"
    check(page.url.endswith(f"/ui/{PIPELINE}/tasks/{task}"), name,
          f"the task header led to {page.url}")
    charts = ["#chart-duration", "#chart-rows"] + [f"#chart-metric-{metric}" for metric in metrics]
    for chart in charts:
        visible(page, name, f"svg.chart{chart}", f"the chart {chart}")
        points = page.locator(f"svg.chart{chart} circle.point")
        check(points.count() > 0, name, f"the chart {chart} has no points (circle.point)")
        boxes = points.evaluate_all("points => points.map(point => point.getBoundingClientRect())"
                                    ".map(box => [box.width, box.height])")
        check(all(width > 0 and height > 0 for width, height in boxes), name,
              f"a point of {chart} is not drawn")
        # The chart is scaled to its box: its tick labels must stay readable.
        labels = page.locator(f"svg.chart{chart} text").evaluate_all(
            "labels => labels.map(label => label.getBoundingClientRect().height)")
        check(labels and min(labels) >= 9, name,
              f"the tick labels of {chart} are drawn {min(labels or [0]):.1f} px high, too small to read")
    # Every partition's run of the task is a point on the duration chart.
    durations = page.locator("svg.chart#chart-duration circle.point").count()
    check(durations == len(DATES), name,
          f"the duration chart has {durations} points, expected one per partition ({len(DATES)})")
    visible(page, name, "#history", "the history table")
    for date in DATES:
        one(page, name, f'#history tr[data-partition="{date}"]', f"the history row of {date}")


def check_resources(page: Page, spec: dict) -> None:
    name = "resources"
    for resource in spec.get("resources", {}):
        users = sorted(task for task, table in spec["tasks"].items()
                       if resource in table.get("uses", []))
        section = f"section.resource#resource-{resource}"
        visible(page, name, section, f"the section of resource {resource}")
        shown = sorted(text.strip() for text in page.locator(f"{section} tr.users a").all_inner_texts())
        check(shown == users, name, f"resource {resource} lists users {shown}, expected {users}")
        state = page.locator(f"{section} .breaker-state")
        check(state.count() == 1 and state.inner_text().strip(), name,
              f"resource {resource} shows no breaker state")


def check_health(page: Page) -> None:
    name = "health"
    visible(page, name, "#readiness", "the readiness")
    checks = page.locator("#readiness tr.check")
    check(checks.count() > 0, name, "#readiness lists no checks (tr.check)")
    verdict = page.locator("#readiness h2 .pill").inner_text().strip()
    check(verdict == "ready", name, f"#readiness says {verdict!r}, expected 'ready'")
    visible(page, name, "#recent-failures", "the recent failures")
    # Every run of the demo's week succeeded in the end: none failed, degraded or was cancelled
    # (one may be listed for running long, on a loaded machine).
    problems = page.locator("#recent-failures tr.problem").evaluate_all(
        "rows => rows.map(row => [row.dataset.partition, row.querySelector('.pill').textContent])")
    bad = [problem for problem in problems if problem[1].strip() != "succeeded"]
    check(not bad, name, f"#recent-failures lists runs that did not succeed: {bad}")


def check_retry(page: Page, server: Server, token: str, run_id: int) -> None:
    """Types the token, retries one named task, and waits for its new attempt."""
    name = "run: retry"
    before = [attempt for attempt in api_get(server, token, f"/api/pipelines/{PIPELINE}/runs/{run_id}")["attempts"]
              if attempt["task"] == RETRIED_TASK and attempt["kind"] == "attempt"]
    check(before, name, f"the API shows no attempt of {RETRIED_TASK} in run {run_id}")
    links_before = page.locator(f"#tasks tr#task-{RETRIED_TASK} a.attempt-link").count()
    page.locator("#actions input#api-token").fill(token)
    page.locator("#actions input#retry-tasks").fill(RETRIED_TASK)
    page.locator('#actions button[data-tasks-from="retry-tasks"]').click()
    result = page.locator("#action-result")
    try:
        page.wait_for_function(
            "() => { const out = document.getElementById('action-result');"
            " return out && out.textContent.trim() && !out.textContent.trim().endsWith('…'); }",
            timeout=WAIT_MS,
        )
    except PlaywrightError:
        fail(name, f"#action-result did not show the answer: {result.inner_text()!r}")
    answer = result.inner_text().strip()
    check("error" not in (result.get_attribute("class") or ""), name,
          f"the retry failed: {answer!r}")
    deadline = time.monotonic() + RETRY_SECONDS
    newest = None
    while time.monotonic() < deadline:
        attempts = [attempt for attempt in
                    api_get(server, token, f"/api/pipelines/{PIPELINE}/runs/{run_id}")["attempts"]
                    if attempt["task"] == RETRIED_TASK and attempt["kind"] == "attempt"]
        if len(attempts) > len(before) and attempts[-1]["finished_at"] is not None:
            newest = attempts[-1]
            break
        time.sleep(0.5)
    check(newest, name, f"the API shows no new finished attempt of {RETRIED_TASK} in run {run_id}"
          f" within {RETRY_SECONDS} s")
    check(newest["outcome"] == "succeeded", name,
          f"the retried {RETRIED_TASK} ended {newest['outcome']}: {newest['message']}")
    # The page refreshes its live parts every 3 s: the new attempt shows without a reload.
    try:
        page.wait_for_function(
            "([selector, count]) => document.querySelectorAll(selector).length > count",
            arg=[f"#tasks tr#task-{RETRIED_TASK} a.attempt-link", links_before],
            timeout=RETRY_SECONDS * 1000 // 3,
        )
    except PlaywrightError:
        fail(name, f"the run page did not show the new attempt of {RETRIED_TASK} by itself")
    log(f"   retry answered {answer!r}; {RETRIED_TASK} attempt {newest['number']} {newest['outcome']}")


def check_no_overflow(page: Page, name: str) -> None:
    """No horizontal scrolling of the page; only the grid's own box may be wider than it."""
    overflow = page.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            const wide = [];
            for (const element of document.body.querySelectorAll('*')) {
                if (element.closest('.grid-wrap')) continue;
                const box = element.getBoundingClientRect();
                if (box.width && (box.right > width + 1 || box.left < -1)) {
                    wide.push(element.tagName.toLowerCase() + (element.id ? '#' + element.id : '')
                        + (element.className && typeof element.className === 'string'
                            ? '.' + element.className.trim().split(/\\s+/).join('.') : '')
                        + ' ' + Math.round(box.left) + '..' + Math.round(box.right));
                }
            }
            return { scroll: document.documentElement.scrollWidth, width, wide: wide.slice(0, 10) };
        }"""
    )
    check(overflow["scroll"] <= overflow["width"], name,
          f"the page scrolls sideways: {overflow['scroll']} px wide in a {overflow['width']} px"
          f" viewport; too wide: {overflow['wide']}")
    check(not overflow["wide"], name,
          f"elements outside .grid-wrap pass the {overflow['width']} px viewport: {overflow['wide']}")


def check_dark(page: Page, name: str) -> None:
    colour = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    check(luminance(colour) < 0.2, name, f"dark mode: the body's background is {colour}")


# ---- the run ------------------------------------------------------------------------------


def run_demo(keel: Path, state: Path) -> None:
    log(f"== keel demo --dir {state}")
    try:
        demo = subprocess.run([str(keel), "demo", "--dir", str(state)], capture_output=True,
                              text=True, timeout=DEMO_SECONDS, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        fail("demo", f"keel demo did not finish within {DEMO_SECONDS} s")
    # 1 means some dates did not succeed, which the demo's faults may cause; 2 and up are errors.
    check(demo.returncode in (0, 1) and (state / "keel.toml").exists(), "demo",
          f"keel demo exited with {demo.returncode}:\n{demo.stdout}\n{demo.stderr}")
    for line in demo.stdout.splitlines():
        if re.match(r"\d{4}-\d\d-\d\d ", line):
            log(f"   {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("keel", nargs="?", default="target/debug/keel", help="the keel binary")
    parser.add_argument("--screenshots", default="target/dashboard-screenshots",
                        help="where the screenshots go (emptied first)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary")
    args = parser.parse_args()
    keel = Path(args.keel).resolve()
    if not os.access(keel, os.X_OK):
        log(f"no keel binary at {keel}: build it first (cargo build -p keel-cli)")
        return 2
    shots = Path(args.screenshots).resolve()
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)

    work = Path(tempfile.mkdtemp(prefix="keel-browser-"))
    server = None
    try:
        with Budget(TEST_SECONDS) as budget:
            state = work / "demo"
            run_demo(keel, state)
            spec = tomllib.loads((state / "keel.toml").read_text())
            token = "browser-" + secrets.token_hex(16)
            server = Server(keel, state, token)
            log(f"== keel serve at {server.url}")
            runs = api_get(server, token, f"/api/pipelines/{PIPELINE}/runs")
            log(f"   {len(runs.get('runs', runs))} runs served")
            with sync_playwright() as playwright:
                browser = Browser(playwright, args.chromium, server.url, shots)
                run_pages(browser, server, token, spec)
                browser.browser.close()
            log(f"== {browser.shot_number} screenshots in {shots}")
            log(f"== the dashboard passed in {budget.elapsed():.0f} s")
            log("1 passed, 0 failed")
        return 0
    except Failure as failure:
        log(f"FAILED: {failure}")
        if server is not None:
            log("-- the end of keel serve's log:\n" + "\n".join(server.output().splitlines()[-30:]))
        log(f"screenshots so far in {shots}")
        log("0 passed, 1 failed")
        return 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def run_pages(browser: Browser, server: Server, token: str, spec: dict) -> None:
    tasks = list(spec["tasks"])
    context = browser.context(viewport={"width": 1400, "height": 900}, color_scheme="light")
    page = browser.watch(context.new_page(), "grid")

    log("== grid")
    goto(page, "grid", "/")
    check_grid(page, tasks)
    browser.screenshot(page, "grid")
    browser.assert_clean("grid")
    run_href = page.locator(f'tr[data-partition="{NEWEST}"] th.partition a.run-link').get_attribute("href")
    run_id = int(run_href.rsplit("/", 1)[1])
    run = api_get(server, token, f"/api/pipelines/{PIPELINE}/runs/{run_id}")

    log("== grid → run (the partition link)")
    click_through(page, "grid", f'tr[data-partition="{NEWEST}"] th.partition a.run-link')
    check(page.url.endswith(f"/ui/{PIPELINE}/runs/{run_id}"), "run",
          f"the partition link of {NEWEST} led to {page.url}")
    check_run(page, run, tasks)
    browser.screenshot(page, "run")
    browser.assert_clean("run")

    log("== run → attempt (an attempt link) → its log")
    click_through(page, "run", f"#tasks tr#task-{RETRIED_TASK} a.attempt-link")
    check_attempt(page)
    browser.screenshot(page, "attempt")
    browser.assert_clean("attempt")

    log("== run → attempt (a gantt bar)")
    goto(page, "run", f"/ui/{PIPELINE}/runs/{run_id}")
    click_through(page, "run", f'#gantt svg rect.bar[data-task="{RETRIED_TASK}"]')
    check_attempt(page)
    browser.assert_clean("attempt (from the gantt)")

    log("== grid → attempt (a cell)")
    goto(page, "grid", "/")
    click_through(page, "grid", f'tr[data-partition="{NEWEST}"] td.cell a[href*="/tasks/{RETRIED_TASK}/"]')
    check_attempt(page)
    browser.assert_clean("attempt (from a grid cell)")

    log("== grid → task history (a task header)")
    goto(page, "grid", "/")
    click_through(page, "grid", f'table.grid th.task a[href$="/tasks/{RETRIED_TASK}"]')
    metrics = sorted({metric for attempt in run["attempts"]
                      if attempt["task"] == RETRIED_TASK and isinstance(attempt["metrics"], dict)
                      for metric in attempt["metrics"]})
    check(metrics, "task history", f"the API shows no metrics of {RETRIED_TASK}")
    check_history(page, RETRIED_TASK, metrics)
    browser.screenshot(page, f"task-{RETRIED_TASK}")
    browser.assert_clean("task history")

    log("== resources (the tab)")
    click_through(page, "task history", 'header nav.tabs a[href$="/resources"]')
    check_resources(page, spec)
    browser.screenshot(page, "resources")
    browser.assert_clean("resources")

    log("== health (the tab)")
    click_through(page, "resources", 'header nav.tabs a[href$="/health"]')
    check_health(page)
    browser.screenshot(page, "health")
    browser.assert_clean("health")

    log(f"== retry {RETRIED_TASK} from the run page")
    page = browser.watch(context.new_page(), "run: retry")
    goto(page, "run: retry", f"/ui/{PIPELINE}/runs/{run_id}")
    check_retry(page, server, token, run_id)
    browser.screenshot(page, "run-after-retry")
    browser.assert_clean("run: retry")
    context.close()

    log("== a narrow screen (390×844)")
    narrow = browser.context(viewport={"width": 390, "height": 844}, color_scheme="light",
                             is_mobile=True, has_touch=True)
    page = browser.watch(narrow.new_page(), "grid (narrow)")
    goto(page, "grid (narrow)", "/")
    visible(page, "grid (narrow)", "table.grid", "the grid table")
    check_no_overflow(page, "grid (narrow)")
    broken = page.locator(".legend .key").evaluate_all(
        "keys => keys.filter(key => key.getClientRects().length > 1"
        " || key.getBoundingClientRect().height > 2 * key.firstElementChild.getBoundingClientRect().height)"
        ".map(key => key.textContent.trim())")
    check(page.locator(".legend .key").count() >= 10, "grid (narrow)", "the legend has no keys (.legend .key)")
    check(not broken, "grid (narrow)", f"legend keys broken over two lines: {broken}")
    browser.screenshot(page, "grid-narrow")
    browser.assert_clean("grid (narrow)")
    narrow.close()

    log("== dark mode")
    dark = browser.context(viewport={"width": 1400, "height": 900}, color_scheme="dark")
    page = browser.watch(dark.new_page(), "grid (dark)")
    goto(page, "grid (dark)", "/")
    visible(page, "grid (dark)", "table.grid", "the grid table")
    check_dark(page, "grid (dark)")
    browser.screenshot(page, "grid-dark")
    goto(page, "run (dark)", f"/ui/{PIPELINE}/runs/{run_id}")
    visible(page, "run (dark)", "#gantt svg", "the gantt chart")
    check_dark(page, "run (dark)")
    browser.screenshot(page, "run-dark")
    browser.assert_clean("dark mode")
    dark.close()


if __name__ == "__main__":
    sys.exit(main())
