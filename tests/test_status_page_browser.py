"""The status page in a real headless Chromium, used as a person would use it.

How the browser is driven: Chromium's own DevTools protocol over
``--remote-debugging-pipe`` (JSON messages ended by NUL on descriptors 3 and
4), spoken by the small driver below. Why this over the alternatives:

- no test dependency: not ``websockets`` for a DevTools socket, not selenium,
  which needs Debian's ``chromium-driver`` at exactly the browser's version;
- no port to find or race for (``--remote-debugging-port=0`` and the
  ``DevToolsActivePort`` file), and nothing listens beyond the process: the
  pipe dies with it. Playwright and Puppeteer drive Chromium this same way;
- Twisted's ``spawnProcess`` maps the two extra descriptors, so the driver is
  asynchronous on the reactor that also serves the in-process foreman (a
  blocking client would stall the very server the page calls).

Waiting is done in the page: one ``Runtime.evaluate`` of a promise that checks
the DOM every 50 ms and gives up after a bounded time, saying what it saw.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from tests.conftest import RunningSimulator, StartForeman, StartSimulator

CHROMIUM = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (found := shutil.which(name))
    ),
    None,
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium to drive: none of chromium, chromium-browser or google-chrome is on "
    "PATH (install Debian's chromium package; .ci/run does so where apt is available)",
)

TOKEN = "browser-test-token-5c1e9"
#: How long any one step may take before the test fails and says why.
STEP_SECONDS = 20.0


class DevToolsError(Exception):
    """Chromium refused a command, or went away."""


class Chromium(ProcessProtocol):
    """One headless Chromium and its DevTools pipe."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._ids = itertools.count(1)
        self._replies: dict[int, Deferred[dict[str, Any]]] = {}
        self._waiting: list[tuple[str, Deferred[dict[str, Any]]]] = []
        self._buffer = b""
        self._stderr = b""
        #: Uncaught exceptions in the page, as Chromium reported them.
        self.exceptions: list[str] = []
        self.ended: Deferred[None] = Deferred()

    @classmethod
    def launch(cls, reactor: Any, profile: Path) -> Chromium:
        assert CHROMIUM is not None
        arguments = [
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--password-store=basic",
            # The test's only server is on 127.0.0.1: no name resolves, so the
            # browser cannot talk to anything else.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "about:blank",
        ]
        if os.geteuid() == 0:
            # Chromium will not start its sandbox as root, and CI runs as root.
            # The only page it opens is foreman's own, on loopback.
            arguments.insert(0, "--no-sandbox")
        browser = cls(reactor)
        reactor.spawnProcess(
            browser,
            CHROMIUM,
            [CHROMIUM, *arguments],
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"},
        )
        return browser

    # -- the pipe ----------------------------------------------------------------------

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Deferred[dict[str, Any]]:
        if self.ended.called:
            raise DevToolsError(f"Chromium has exited; {method} not sent: {self.stderr_tail}")
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        reply: Deferred[dict[str, Any]] = Deferred()
        self._replies[number] = reply
        assert self.transport is not None
        self.transport.writeToChild(3, json.dumps(message).encode() + b"\0")
        return reply.addTimeout(STEP_SECONDS, self._reactor)

    def next_event(self, method: str) -> Deferred[dict[str, Any]]:
        event: Deferred[dict[str, Any]] = Deferred()
        self._waiting.append((method, event))
        return event.addTimeout(STEP_SECONDS, self._reactor)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != 4:
            self._stderr = (self._stderr + data)[-4000:]
            return
        *messages, self._buffer = (self._buffer + data).split(b"\0")
        for message in messages:
            self._received(json.loads(message))

    def _received(self, message: dict[str, Any]) -> None:
        if "id" in message:
            reply = self._replies.pop(message["id"], None)
            if reply is not None and not reply.called:
                if "error" in message:
                    reply.errback(DevToolsError(message["error"].get("message", message)))
                else:
                    reply.callback(message.get("result", {}))
            return
        method = message.get("method", "")
        if method == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            self.exceptions.append(details.get("exception", {}).get("description", str(details)))
        for waited in [each for each in self._waiting if each[0] == method]:
            self._waiting.remove(waited)
            if not waited[1].called:
                waited[1].callback(message.get("params", {}))

    @property
    def stderr_tail(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def processEnded(self, reason: Failure) -> None:
        gone = DevToolsError(f"Chromium exited: {self.stderr_tail}")
        for reply in self._replies.values():
            if not reply.called:
                reply.errback(gone)
        self._replies.clear()
        self.ended.callback(None)

    # -- stopping ----------------------------------------------------------------------

    async def close(self) -> None:
        """Ask Chromium to quit; kill it if it does not, and wait until it is gone."""
        if not self.ended.called:
            # It may exit before answering; the wait below decides.
            with contextlib.suppress(Exception):
                await self.send("Browser.close")
        if not await self._exits_within(STEP_SECONDS):
            assert self.transport is not None
            self.transport.signalProcess("KILL")
            await self._exits_within(STEP_SECONDS)

    async def _exits_within(self, seconds: float) -> bool:
        exited: Deferred[bool] = Deferred()
        self.ended.addCallback(lambda _: None if exited.called else exited.callback(True))
        self._reactor.callLater(seconds, lambda: None if exited.called else exited.callback(False))
        return await exited


class Page:
    """One tab, attached to its own DevTools session."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    @classmethod
    async def open(cls, browser: Chromium) -> Page:
        target = await browser.send("Target.createTarget", {"url": "about:blank"})
        attached = await browser.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = cls(browser, attached["sessionId"])
        for domain in ("Page", "Runtime", "Network"):
            await page.send(f"{domain}.enable")
        # Any Content-Security-Policy violation is recorded, to prove the
        # page's inline script and style are admitted and nothing else runs.
        await page.send(
            "Page.addScriptToEvaluateOnNewDocument",
            {
                "source": "window.__violations = [];"
                "document.addEventListener('securitypolicyviolation', e =>"
                " window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
            },
        )
        return page

    def send(self, method: str, params: dict[str, Any] | None = None) -> Deferred[dict[str, Any]]:
        return self.browser.send(method, params, self.session)

    async def goto(self, url: str) -> None:
        loaded = self.browser.next_event("Page.loadEventFired")
        navigated = await self.send("Page.navigate", {"url": url})
        assert "errorText" not in navigated, navigated
        await loaded

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise AssertionError(details.get("exception", {}).get("description", details))
        return answer["result"].get("value")

    async def wait_for(self, condition: str, what: str) -> Any:
        """Until ``condition`` (a JavaScript function) is truthy in the page."""
        return await self.evaluate(
            f"""new Promise((resolve, reject) => {{
                const deadline = Date.now() + {int(STEP_SECONDS * 1000)};
                const check = () => {{
                    let value = null;
                    try {{ value = ({condition})(); }} catch (e) {{ value = null; }}
                    if (value) resolve(value);
                    else if (Date.now() > deadline) reject(new Error(
                        {json.dumps("timed out waiting for " + what)}
                        + "; the page shows:\\n" + document.body.innerText));
                    else setTimeout(check, 50);
                }};
                check();
            }})"""
        )

    async def type(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", {"text": text})

    async def click(self, selector: str) -> None:
        """A mouse click in the middle of the element, as a person makes it."""
        x, y = await self.evaluate(
            f"""(() => {{
                const box = document.querySelector({json.dumps(selector)})
                    .getBoundingClientRect();
                return [box.x + box.width / 2, box.y + box.height / 2];
            }})()"""
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    async def offline(self, offline: bool) -> None:
        await self.send(
            "Network.emulateNetworkConditions",
            {"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )


@pytest_twisted.async_yield_fixture
async def page(reactor: Any, tmp_path: Path) -> AsyncIterator[Page]:
    browser = Chromium.launch(reactor, tmp_path / "chromium-profile")
    try:
        yield await Page.open(browser)
        assert browser.exceptions == [], browser.exceptions
    finally:
        await browser.close()


def visible(selector: str, *texts: str) -> str:
    """A condition: ``selector`` is shown, and shows every one of ``texts``."""
    wanted = json.dumps(list(texts))
    return f"""() => [...document.querySelectorAll({json.dumps(selector)})].some(
        (element) => element.checkVisibility()
            && {wanted}.every((text) => element.innerText.includes(text)))"""


def chat_body(model: str) -> bytes:
    message = {"role": "user", "content": "Why is the sky blue?"}
    return json.dumps({"model": model, "messages": [message], "stream": False}).encode()


@pytest_twisted.ensureDeferred
async def test_a_person_signs_in_and_sees_the_models_and_the_jobs(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient, page: Page
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN)
    bearer = Headers({b"Authorization": [f"Bearer {TOKEN}".encode()]})
    # Some state to see: a model resident after a native call, and a job.
    answered = await http.post(
        running.url + "/api/chat", data=chat_body("llama3.2"), headers=bearer
    )
    assert answered.code == 200, await answered.text()
    submitted = await http.post(running.url + "/jobs", data=chat_body("llama3.2"), headers=bearer)
    assert submitted.code == 202, await submitted.text()
    job_id = (await submitted.json())["job_id"]

    # A browser at / is sent to the page, which asks for the token.
    await page.goto(running.url + "/")
    assert await page.evaluate("location.pathname") == "/ui"
    assert await page.evaluate("document.title") == "foreman"
    await page.wait_for(visible("#login", "Sign in", "Token"), "the sign-in form")

    await page.type("#token", "not-the-token")
    await page.click("#login-form button")
    await page.wait_for(visible("#login-error", "not right"), "the wrong token to be refused")

    await page.evaluate("document.querySelector('#token').value = ''")
    await page.type("#token", TOKEN)
    await page.click("#login-form button")
    await page.wait_for(
        visible("#resident tbody tr", "llama3.2:latest", "worker"), "the resident model"
    )
    await page.wait_for(visible("#jobs tbody tr", job_id, "done"), "the job, done")
    await page.wait_for(visible("#updated", "Last updated"), "the time of the last update")
    shown = await page.evaluate("document.body.innerText")
    assert "reachable" in shown
    assert "0.13.0" in shown  # the simulator's Ollama version
    assert not await page.evaluate("document.querySelector('#login').checkVisibility()")

    # The token is nowhere the page's script could reach it.
    everything = await page.evaluate(
        "document.documentElement.outerHTML + document.body.innerText"
        " + JSON.stringify(localStorage) + JSON.stringify(sessionStorage)"
    )
    assert TOKEN not in everything
    assert await page.evaluate("document.cookie") == ""  # HttpOnly
    # The cookie is for the page's data alone: the API still wants the header.
    assert await page.evaluate("fetch('/api/foreman/queue').then((r) => r.status)") == 401
    assert await page.evaluate("fetch('/jobs').then((r) => r.status)") == 401

    # foreman out of reach: a banner says so, and goes once it answers again.
    await page.offline(True)
    await page.wait_for(visible("#error", "cannot be reached"), "the error banner")
    await page.offline(False)
    await page.wait_for(
        "() => !document.querySelector('#error').checkVisibility()", "the banner to go"
    )

    await page.click("#logout")
    await page.wait_for(visible("#login", "Sign in"), "the sign-in form after signing out")
    assert await page.evaluate("window.__violations") == []


def count(selector: str) -> str:
    return f"document.querySelectorAll({json.dumps(selector)}).length"


@pytest_twisted.ensureDeferred
async def test_the_timeline_draws_the_runs_their_loads_and_what_waits(
    start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient, page: Page
) -> None:
    sim = await start_simulator()
    running = await start_foreman(sim.url)
    # Three runs over two models: a load, a drained run, a swap.
    for model in ("llama3.2", "llama3.2", "gemma3:12b"):
        answered = await http.post(running.url + "/api/chat", data=chat_body(model))
        assert answered.code == 200, await answered.text()
    # Then a long run, and a batch job waiting behind it.
    sim.sim.tokens_per_second = 1.0
    long_job = {**json.loads(chat_body("llama3.2")), "priority": "interactive"}
    submitted = await http.post(running.url + "/jobs", data=json.dumps(long_job).encode())
    assert submitted.code == 202, await submitted.text()
    long_id = (await submitted.json())["job_id"]
    waiting = await http.post(running.url + "/jobs", data=chat_body("qwen3:8b"))
    assert waiting.code == 202, await waiting.text()

    await page.goto(running.url + "/ui")
    await page.wait_for(f"() => {count('#timeline .tl-run')} === 4", "four runs on the timeline")
    await page.wait_for(visible("#timeline-waiting li", "qwen3:8b", "batch"), "the waiting job")
    # One mark per load: the first load, then two swaps (filled marks). The
    # long run's is drawn once its load is over (the page refreshes itself).
    await page.wait_for(f"() => {count('#timeline .tl-load')} === 3", "three load marks")
    assert await page.evaluate(count("#timeline .tl-load.tl-swap")) == 2
    assert await page.evaluate(count("#timeline .tl-run.tl-running")) == 1
    assert await page.evaluate(count("#timeline .tl-run.tl-done")) == 3
    legend = await page.evaluate("document.querySelector('#timeline-legend').innerText")
    for model in ("llama3.2:latest", "gemma3:12b", "qwen3:8b"):
        assert model in legend
    # Each model has its own colour, the same for every bar of that model.
    colours = await page.evaluate(
        """[...document.querySelectorAll('#timeline .tl-run')].map(
            (run) => run.querySelector('rect').getAttribute('fill'))"""
    )
    assert colours[0] == colours[1] == colours[3] != colours[2]
    # Every bar says what it was, for a pointer or a screen reader.
    titles = await page.evaluate(
        "[...document.querySelectorAll('#timeline .tl-run > title')].map((t) => t.textContent)"
    )
    assert "model loaded" in titles[0]
    assert "model already resident" in titles[1]
    assert "swapped in" in titles[2] and "gemma3:12b" in titles[2]
    assert long_id in titles[3] and "running for" in titles[3]
    summary = await page.evaluate("document.querySelector('#timeline-summary').innerText")
    assert "4 runs" in summary and "3 model loads (2 swaps)" in summary and "1 waiting" in summary
    # What the worker does now, in words (ADR-0024).
    doing = await page.evaluate("document.querySelector('#timeline-doing').innerText")
    assert doing.startswith("Now: generating with llama3.2:latest for job " + long_id), doing
    assert await page.evaluate("window.__violations") == []

    # Let the long job go, so that nothing runs on when the test ends.
    cancelled = await http.post(running.url + f"/jobs/{long_id}/cancel")
    assert cancelled.code == 200
