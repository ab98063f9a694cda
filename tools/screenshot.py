"""Screenshot HTML reports with headless Chromium, and check they load nothing and log nothing.

    python tools/screenshot.py report.html [more.html ...] -o shots/ [--width 1400] [--tiles 1800]

For each page: a full-page PNG at the given CSS width (``<name>.png``), the same
cut into tiles of ``--tiles`` pixels height (``<name>-1.png`` ...: an image
viewer shows a tall page too small to judge), and a line per problem: console
messages, JavaScript exceptions, and any request for something that is not the
page itself or a ``data:`` URI (a self-contained report makes none).

Talks to Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
fd 3 in, fd 4 out, NUL-separated JSON), so it needs nothing beyond the
standard library, Pillow (for the tiles) and a ``chromium`` binary.
Exit code: 0 when every page is clean, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]


class Chrome:
    """A headless Chromium driven over the DevTools pipe."""

    def __init__(self, binary: str | None = None):
        binary = binary or shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if not binary:
            raise SystemExit("no chromium found: apt-get install -y chromium")
        self.profile = tempfile.mkdtemp(prefix="da-chrome-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire():  # in the child: fd 3 = commands in, fd 4 = responses out
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [binary, *CHROME_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=wire, pass_fds=(3, 4, to_chrome_r, from_chrome_w),  # 3, 4: kept after preexec
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read_message(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read_message()
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, name: str, timeout: float = 30.0) -> dict:
        t0 = time.time()
        for i, e in enumerate(self.events):
            if e.get("method") == name:
                return self.events.pop(i)
        while time.time() - t0 < timeout:
            m = self._read_message()
            if m.get("method") == name:
                return m
            self.events.append(m)
        raise TimeoutError(name)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def shoot(chrome: Chrome, page: Path, out: Path, width: int) -> tuple[list[str], int]:
    """Full-page screenshot of ``page`` at ``width`` CSS px; returns (problems, page height)."""
    target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    s = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    chrome.events.clear()
    for domain in ("Page", "Runtime", "Log", "Network"):
        chrome.send(f"{domain}.enable", session=s)
    chrome.send("Emulation.setDeviceMetricsOverride",
                {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session=s)
    url = page.resolve().as_uri()
    chrome.send("Page.navigate", {"url": url}, session=s)
    chrome.wait_event("Page.loadEventFired")
    time.sleep(0.3)
    metrics = chrome.send("Page.getLayoutMetrics", session=s)
    height = int(metrics["cssContentSize"]["height"])
    shot = chrome.send("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    }, session=s)
    out.write_bytes(base64.b64decode(shot["data"]))
    problems = []
    for e in chrome.events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled":
            problems.append(f"console.{p.get('type')}: {[a.get('value') for a in p.get('args', [])]}")
        elif m == "Runtime.exceptionThrown":
            problems.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif m == "Log.entryAdded":
            entry = p.get("entry", {})
            problems.append(f"log {entry.get('level')}: {entry.get('text')} {entry.get('url', '')}")
        elif m == "Network.requestWillBeSent":
            u = p.get("request", {}).get("url", "")
            if u != url and not u.startswith("data:"):
                problems.append(f"request: {u}")
    chrome.send("Target.closeTarget", {"targetId": target})
    return problems, height


def tiles(png: Path, tile: int) -> list[Path]:
    from PIL import Image

    im = Image.open(png)
    out = []
    for i, top in enumerate(range(0, im.height, tile), start=1):
        p = png.with_name(f"{png.stem}-{i}.png")
        im.crop((0, top, im.width, min(im.height, top + tile))).save(p)
        out.append(p)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pages", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=Path("shots"))
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--tiles", type=int, default=1800, help="tile height in px (0: no tiles)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    chrome = Chrome()
    bad = 0
    try:
        for page in args.pages:
            png = args.out / f"{page.stem}.png"
            problems, height = shoot(chrome, page, png, args.width)
            parts = tiles(png, args.tiles) if args.tiles else []
            print(f"{page}: {png} ({args.width}x{height}, {len(parts)} tiles), "
                  f"{'clean' if not problems else f'{len(problems)} problem(s)'}")
            for p in problems:
                print(f"  {p}")
            bad += bool(problems)
    finally:
        chrome.close()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
