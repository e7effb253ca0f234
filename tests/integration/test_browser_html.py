"""The standalone explanation page in a real headless Chromium (Debian package).

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (no websocket
library, no port): the test loads the page from ``file://``, waits until every circuitsvis
component has mounted, reads the rendered DOM, takes a screenshot and collects console errors,
uncaught exceptions and any network request. If ``/usr/bin/chromium`` is missing it is
installed with apt-get (root only).

Set ``TL_LATENTLENS_ARTIFACTS=<dir>`` to keep the screenshots somewhere stable; the test prints
where they are.
"""

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.explanations import sample_explanation
from tl_latentlens.render._circuitsvis import display_tokens
from tl_latentlens.render.html import explanation_html

pytestmark = pytest.mark.browser

WINDOW = (1400, 2000)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--enable-logging=stderr",
    "--v=0",
]


def ensure_chromium() -> str:
    """Path of Debian's chromium, installing it with apt-get when missing (needs root)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(
            "chromium is missing; install it (apt-get install -y chromium) or deselect -m browser"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    exe = shutil.which("chromium")
    if not exe:
        pytest.fail("apt-get installed chromium but it is not on PATH")
    return exe


class Chromium:
    """Headless Chromium over the DevTools pipe (it reads commands on fd 3, answers on fd 4)."""

    def __init__(self, exe: str, profile: Path, log: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()

        def to_fds_3_and_4():  # in the child, before exec
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(resp_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=(3, 4),
                preexec_fn=to_fds_3_and_4,
            )
        os.close(cmd_r)
        os.close(resp_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    # -- protocol ---------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium\n" + self.log_tail())
            ready, _, _ = select.select([self._resp_r], [], [], left)
            if ready:
                chunk = os.read(self._resp_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe\n" + self.log_tail())
                self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 30,
    ) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._cmd_w, data) :]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for_event(self, method: str, session: str, since: int, timeout: float = 30) -> dict:
        """The first ``method`` event of ``session`` at or after ``self.events[since]``."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            for ev in self.events[seen:]:
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return ev
            seen = len(self.events)
            self.events.append(self._read_message(deadline))

    def evaluate(self, session: str, expression: str):
        res = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluation failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_until(self, session: str, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(session, expression):
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"page never satisfied {expression!r}; page problems: {self.problems()}\n"
            + self.log_tail()
        )

    # -- helpers ----------------------------------------------------------------------------
    def open_page(self, url: str) -> str:
        """Open ``url`` in a new tab with console/network tracking; returns the session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        since = len(self.events)
        self.send("Page.navigate", {"url": url}, session)
        self.wait_for_event("Page.loadEventFired", session, since)
        return session

    def screenshot(self, session: str, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session, timeout=60)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and log errors seen so far."""
        out = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"uncaught: {d.get('exception', {}).get('description') or d['text']}")
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append(
                    "console.error: "
                    + " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
                )
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log error: {p['entry']['text']} ({p['entry'].get('url', '')})")
        return out

    def requests(self) -> list[str]:
        return [
            ev["params"]["request"]["url"]
            for ev in self.events
            if ev.get("method") == "Network.requestWillBeSent"
        ]

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - best effort, killed below
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._cmd_w)
        os.close(self._resp_r)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = ensure_chromium()
    work = tmp_path_factory.mktemp("chromium")
    chrome = Chromium(exe, work / "profile", work / "chromium.log")
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    where = os.environ.get("TL_LATENTLENS_ARTIFACTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        return Path(where)
    return tmp_path_factory.mktemp("browser_artifacts")


READ_CARDS = """(() => [...document.querySelectorAll('.ll-cv[data-key]')].map(el => ({
  key: el.dataset.key,
  mounted: el.hasAttribute('data-mounted'),
  fallback: el.querySelectorAll('.ll-fallback').length,
  samples: [...el.querySelectorAll('.colored-tokens')].map(s => s.textContent),
  highlighted: [...el.querySelectorAll('.colored-tokens')].map(s =>
    [...s.querySelectorAll(':scope > span > span')]
      .filter(t => getComputedStyle(t).backgroundColor !== 'rgb(255, 255, 255)')
      .map(t => t.textContent)),
})))()"""


def norm(text: str) -> str:
    """Whitespace as circuitsvis shows it (it writes every whitespace as &nbsp;)."""
    return re.sub(r"\s", " ", text.replace("\xa0", " "))


def expected_cards(exp, hooks):
    cards = {}
    for h, hook in enumerate(hooks):
        for p in exp.at(hook):
            cards[f"h{h}p{p.index}"] = p.latent
    return cards


def test_page_renders_circuitsvis_offline(browser, artifacts, tmp_path, capsys):
    exp = sample_explanation(rows=2, cols=3, k=3)
    page = tmp_path / "explanation.html"
    explanation_html(exp, page)
    session = browser.open_page(page.as_uri())
    n_samples = sum(len(p.latent) for p in exp.patches)
    browser.wait_until(
        session, f"document.querySelectorAll('.ll-cv .colored-tokens').length === {n_samples}"
    )
    shot = browser.screenshot(session, artifacts / "explanation_page.png")
    with capsys.disabled():
        print(f"\n[browser] screenshot of the explanation page: {shot}")

    cards = browser.evaluate(session, READ_CARDS)
    want = expected_cards(exp, exp.hooks)
    assert {c["key"] for c in cards} == set(want)
    for card in cards:
        neighbours = want[card["key"]]
        assert card["mounted"] and card["fallback"] == 0, card  # circuitsvis replaced our HTML
        # The sentences exist in the DOM only through circuitsvis's ColoredTokens ...
        got = [norm(text) for text in card["samples"]]
        assert got == [norm("".join(display_tokens(n))) for n in neighbours]
        # ... with exactly the matched token highlighted ("<s>", "<image>", "a&b" survive).
        marked = [[norm(t) for t in toks] for toks in card["highlighted"]]
        assert marked == [[norm(display_tokens(n)[n.position])] for n in neighbours]

    texts = browser.evaluate(
        session,
        "[...document.querySelectorAll('.ll-grid td')].map(td => td.textContent)",
    )
    assert {"<s>", "<image>", "a&b", "</script>", "café"} <= set(texts)
    assert browser.evaluate(session, "document.title") == "LatentLens · sample/tiny-vlm <demo>"
    assert browser.problems() == []
    assert [u for u in browser.requests() if not u.startswith(("file:", "data:"))] == []


def test_large_page_mounts_cards_when_scrolled(browser, artifacts, tmp_path, capsys):
    exp = sample_explanation(rows=10, cols=10, k=5, cell=24)  # 200 cards: lazy mounting
    page = tmp_path / "large.html"
    explanation_html(exp, page)
    before = len(browser.events)
    session = browser.open_page(page.as_uri())
    browser.wait_until(session, "document.querySelectorAll('[data-mounted]').length > 0")
    first = browser.evaluate(session, "document.querySelectorAll('[data-mounted]').length")
    assert 0 < first < 200
    # Follow the overview link of the last patch of the last hook, as a user would.
    browser.evaluate(session, "[...document.querySelectorAll('.ll-grid a')].pop().click()")
    last = f"h{len(exp.hooks) - 1}p99"
    browser.wait_until(
        session,
        f"!!document.querySelector('[data-key=\"{last}\"] .colored-tokens')",
    )
    assert browser.evaluate(session, "location.hash").endswith(f"-h{len(exp.hooks) - 1}-p99")
    shot = browser.screenshot(session, artifacts / "explanation_large_scrolled.png")
    with capsys.disabled():
        print(f"\n[browser] screenshot after jumping to the last card: {shot}")
    browser.events[:before] = []
    assert browser.problems() == []
    assert [u for u in browser.requests() if not u.startswith(("file:", "data:"))] == []
