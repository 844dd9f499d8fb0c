"""A headless Chromium driven over the DevTools protocol: load a page, report console errors,
exceptions and images that did not render, and take a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-allow-origins=*", "--remote-debugging-port=0", "--window-size=1200,900"]


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)


class PageCheck:
    def __init__(self, console_errors, exceptions, images, screenshot, result=None):
        self.console_errors, self.exceptions = console_errors, exceptions
        self.images, self.screenshot = images, screenshot
        self.result = result  # what `interact` returned

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not i["complete"] or i["w"] == 0]


def check_page(path: Path, screenshot: Path, timeout: float = 60.0,
               interact=None) -> PageCheck:
    """Load `path`, then (if given) call `interact(call)` with a function that sends one
    DevTools command and returns its result: clicks, key presses, script."""
    import websocket

    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH")
    profile = Path(tempfile.mkdtemp(prefix="convscope-chromium-"))
    proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                         suppress_origin=True)
        ids = itertools.count(1)
        events: list[dict] = []

        def call(method: str, **params) -> dict:
            msg_id = next(ids)
            ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == msg_id:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})
                events.append(msg)

        for domain in ("Page", "Runtime", "Log"):
            call(f"{domain}.enable")
        call("Page.navigate", url=path.resolve().as_uri())
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            if time.monotonic() > deadline:
                raise RuntimeError("the page did not finish loading")
            events.append(json.loads(ws.recv()))
        script = ("JSON.stringify(Array.from(document.images).map(i => "
                  "({alt: i.alt, complete: i.complete, w: i.naturalWidth})))")
        result = call("Runtime.evaluate", returnByValue=True, expression=script)
        images = json.loads(result["result"]["value"])
        interaction = interact(call) if interact is not None else None
        metrics = call("Page.getLayoutMetrics")["cssContentSize"]
        shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                    clip={"x": 0, "y": 0, "width": metrics["width"],
                          "height": min(metrics["height"], 8000), "scale": 1})
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        ws.close()
        console = [e["params"] for e in events if e.get("method") == "Runtime.consoleAPICalled"
                   and e["params"]["type"] in ("error", "assert")]
        console += [e["params"]["entry"] for e in events if e.get("method") == "Log.entryAdded"
                    and e["params"]["entry"]["level"] == "error"]
        exceptions = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
        return PageCheck(console, exceptions, images, screenshot, interaction)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
