"""A headless Chromium (Debian package) driven over the DevTools protocol, for browser tests.

Chromium is driven on ``--remote-debugging-pipe`` (no websocket library, no port): a test opens a
page from ``file://``, evaluates JS in it, sends real mouse and key events (``Input.*``), takes
screenshots and collects console errors, uncaught exceptions and any network request. If
``/usr/bin/chromium`` is missing it is installed with apt-get (root only).
"""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

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

    # -- real input events --------------------------------------------------------------------
    def center(self, session: str, selector: str) -> tuple[float, float]:
        """Viewport centre of the first element matching ``selector`` (scrolled into view)."""
        box = self.evaluate(
            session,
            f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
              if (!e) return null; e.scrollIntoView({{block: 'center', inline: 'center'}});
              const r = e.getBoundingClientRect();
              return [r.left + r.width / 2, r.top + r.height / 2]; }})()""",
        )
        if box is None:
            raise AssertionError(f"no element matches {selector!r}")
        return box[0], box[1]

    def hover(self, session: str, selector: str) -> None:
        """Move the mouse over the element (a real ``mouseMoved`` event)."""
        x, y = self.center(session, selector)
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y}, session)

    def click(self, session: str, selector: str) -> None:
        """Left-click the element's centre (move, press, release)."""
        x, y = self.center(session, selector)
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y}, session)
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                session,
            )

    def key(self, session: str, key: str) -> None:
        """Press and release a named key (``"ArrowRight"``, ``"Escape"``...)."""
        codes = {"ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40, "Escape": 27,
                 "Enter": 13, "Tab": 9, " ": 32}  # fmt: skip
        code = {" ": "Space"}.get(key, key)
        params = {"key": key, "code": code, "windowsVirtualKeyCode": codes.get(key, 0)}
        for kind in ("rawKeyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, **params}, session)

    def set_width(self, session: str, width: int, height: int = 900) -> None:
        """Emulate a ``width`` x ``height`` window (CSS pixels)."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )

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
