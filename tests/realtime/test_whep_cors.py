"""A WHEP player in headless Chromium, on another origin and on the server's own: ``web/whep.html``.

Two machines on a private bridge (``bench/netns.py``): the server (``avatar serve --cors-origin`` the
player's origin, ``--ice-server`` a STUN responder, one session at most) on one, Chromium and the
page's origin (a second server on another address and port) on the other, so the WebRTC media
crosses that bridge and nothing else. The page:

* plays a session's ``whep_url`` with its token: ICE servers read from ``Link`` (OPTIONS and the
  201), candidates trickled with PATCH (each answered 204), video frames decoded;
* is refused by admission (``POST /whep`` while the one session slot is taken): it reads 503, the
  error code and ``Retry-After``; with a wrong token it reads 401 and the code;
* stops: closes its connection, and once the server has dropped the viewer, DELETEs the resource
  (204, and again 204); a viewer that never existed reads 404.

The same page served by the server itself (same origin) plays ``POST /whep`` through its form and
stops with a DELETE (200).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import ClientSession, ClientTimeout, web

from avatarstream.bench.serve_process import stop_process
from avatarstream.realtime.http.app import WEB_DIR

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required",
                 # host candidates as addresses, not mDNS names: the trickled ones are usable as sent
                 "--disable-features=WebRtcHideLocalIpsWithMdns"]
SERVER_PORT, PAGE_PORT = 8080, 8000
MIN_FRAMES = 30  # decoded video frames that count as playing (1.2 s at 25 fps)
REPO = Path(__file__).resolve().parents[2]


class Stack:
    def __init__(self, net, server, player, page_origin: str, http: ClientSession, browser, stun,
                 server_pid: int) -> None:
        self.net, self.server, self.player, self.server_pid = net, server, player, server_pid
        self.url = f"http://{server.address}:{SERVER_PORT}"
        self.page_origin = page_origin
        self.http, self.browser, self.stun = http, browser, stun


async def wait_healthy(http: ClientSession, url: str, proc: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + 90
    while True:
        with contextlib.suppress(OSError):  # not listening yet
            async with http.get(url + "/health") as resp:
                if resp.status == 200:
                    return
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise AssertionError(f"avatar serve did not start: {log.read()[-3000:]}")
        await asyncio.sleep(0.3)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack():
    if shutil.which(CHROMIUM) is None:
        pytest.skip("needs Debian chromium (/usr/bin/chromium)")
    playwright_api = pytest.importorskip("playwright.async_api", reason="needs playwright")
    from avatarstream.bench import netns

    why = netns.unavailable()
    if why:
        pytest.skip(f"needs network namespaces for the two machines: {why}")
    from stun_responder import start_stun

    with netns.Network(2) as net, net.entered(net.machines[1]):
        # this thread is on the player's machine: the page server, the STUN responder, the test's HTTP
        # client and Chromium (started by playwright's driver from here) all live there
        server, player = net.machines
        page_origin = f"http://{player.address}:{PAGE_PORT}"
        stun = await start_stun(player.address)
        log = tempfile.TemporaryFile("w+")
        proc = net.start(server, [sys.executable, "-m", "avatarstream.cli", "serve", "--host", server.address,
                                  "--port", str(SERVER_PORT), "--insecure", "--max-sessions", "1", "--no-admission",
                                  "--size", "256", "--cors-origin", page_origin,
                                  "--ice-server", f"stun:{player.address}:{stun.port}"],
                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
        pages = web.Application()
        pages.router.add_static("/", WEB_DIR)
        runner = web.AppRunner(pages)
        await runner.setup()
        await web.TCPSite(runner, player.address, PAGE_PORT).start()
        async with ClientSession(timeout=ClientTimeout(total=30)) as http:
            try:
                await wait_healthy(http, f"http://{server.address}:{SERVER_PORT}", proc, log)
                async with playwright_api.async_playwright() as p:
                    browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    try:
                        yield Stack(net, server, player, page_origin, http, browser, stun, proc.pid)
                    finally:
                        await browser.close()
            finally:
                stop_process(proc)
                await runner.cleanup()
                stun.transport.close()
                log.close()


async def frames_decoded(page, player: str, minimum: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    frames = 0
    while time.monotonic() < deadline:
        frames = await page.evaluate(f"{player}.framesDecoded()")
        if frames >= minimum:
            break
        await asyncio.sleep(0.2)
    return frames


async def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return await predicate()


async def test_player_on_another_origin_reads_every_answer(stack):
    resp = await stack.http.post(stack.url + "/v1/sessions", json={"size": 256})
    assert resp.status == 201, await resp.text()
    session = await resp.json()
    auth = {"Authorization": f"Bearer {session['token']}"}
    page = await stack.browser.new_page()
    try:
        await page.goto(f"{stack.page_origin}/whep.html")
        assert await page.evaluate("location.origin") != stack.url  # another origin
        played = await page.evaluate(
            "async ([url, token]) => { window.p1 = new WhepPlayer(document.getElementById('avatar'));"
            " return await p1.play(url, token); }", [session["whep_url"], session["token"]])
        frames = await frames_decoded(page, "p1", MIN_FRAMES)
        await page.evaluate("p1.settled()")
        log = await page.evaluate("p1.log")
        refused = await page.evaluate("async (url) => await new WhepPlayer(null).play(url, null)", stack.url + "/whep")
        wrong = await page.evaluate("async (url) => await new WhepPlayer(null).play(url, 'not-the-token')",
                                    session["whep_url"])
        # stop as players do: close the connection, then DELETE the resource (once the server dropped the viewer)
        await page.evaluate("p1.close()")

        async def viewer_dropped() -> bool:
            async with stack.http.get(f"{stack.url}/v1/sessions/{session['id']}", headers=auth) as r:
                return (await r.json())["viewers"] == 0

        dropped = await wait_for(viewer_dropped)
        deleted = await page.evaluate("p1.end()")
        deleted_again = await page.evaluate("p1.end()")
        never = await page.evaluate(
            "async ([url, token]) => { const p = new WhepPlayer(null); p.resource = url + '/000000000000';"
            " p.token = token; return await p.end(); }", [session["whep_url"], session["token"]])
    finally:
        await page.close()
        await stack.http.delete(f"{stack.url}/v1/sessions/{session['id']}", headers=auth)
    patches = [e for e in log if e["what"] == "patch"]
    options = next(e for e in log if e["what"] == "options")
    print(f"\nwhep cross-origin: 201 with ICE servers {played['iceServers']}, {frames} frames decoded, "
          f"{len(patches)} PATCH {[e['status'] for e in patches]} ({sum(e['candidates'] for e in patches)} candidates, "
          f"end sent: {any(e['end'] for e in patches)}); refused: {refused['status']} {refused['error']} Retry-After "
          f"{refused['retryAfter']}; wrong token: {wrong['status']} {wrong['error']}; DELETE after close: "
          f"{deleted['status']} then {deleted_again['status']} (viewer dropped first: {dropped}); never existed: "
          f"{never['status']} {never['error']}")
    stun_server = f"stun:{stack.player.address}:{stack.stun.port}"
    assert options["status"] == 204 and options["iceServers"] == [{"urls": stun_server}]
    assert played["status"] == 201 and played["iceServers"] == [{"urls": stun_server}], played
    assert played["etag"] and played["acceptPatch"] == "application/trickle-ice-sdpfrag"
    assert frames >= MIN_FRAMES, f"only {frames} frames decoded"
    assert patches and all(e["status"] == 204 for e in patches), patches
    assert sum(e["candidates"] for e in patches) >= 1 and any(e["end"] for e in patches)
    assert (refused["status"], refused["error"]) == (503, "session_limit") and int(refused["retryAfter"]) > 0
    assert (wrong["status"], wrong["error"]) == (401, "unauthorized") and wrong["message"]
    assert dropped, "the server did not drop the viewer whose connection closed"
    assert deleted["status"] == 204 and deleted_again["status"] == 204, (deleted, deleted_again)
    assert (never["status"], never["error"]) == (404, "not_found")
    assert stack.stun.requests > 0, "nobody used the ICE server the Link headers named"
    # the media crossed the private bridge: the server and Chromium each ran on their own machine
    assert stack.server_pid in stack.net.pids(stack.server)
    names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in stack.net.pids(stack.player)
             if Path(f"/proc/{pid}/comm").exists()}
    assert any("chrom" in name for name in names), names


async def test_same_page_on_the_servers_own_origin(stack):
    page = await stack.browser.new_page()
    try:
        await page.goto(f"{stack.url}/static/whep.html")
        await page.fill("input[name=endpoint]", f"{stack.url}/whep")
        await page.click("button[name=play]")
        await page.wait_for_function("document.getElementById('status').textContent === 'playing'", timeout=20000)
        frames = await frames_decoded(page, "window.whepPlayer", MIN_FRAMES)
        await page.evaluate("window.whepPlayer.settled()")
        log = await page.evaluate("window.whepPlayer.log")
        await page.click("button[name=play]")  # Stop: close, then DELETE
        await page.wait_for_function("document.getElementById('status').textContent.startsWith('stopped')",
                                     timeout=10000)
        status = await page.inner_text("#status")
    finally:
        await page.close()

    async def no_session() -> bool:
        async with stack.http.get(stack.url + "/health") as r:
            return (await r.json())["sessions"] == 0

    freed = await wait_for(no_session)
    patches = [e["status"] for e in log if e["what"] == "patch"]
    print(f"\nwhep same origin: {frames} frames decoded, PATCH {patches}, {status}, session freed: {freed}")
    assert frames >= MIN_FRAMES
    assert patches and set(patches) == {204}
    assert status == "stopped (DELETE: 200)"
    assert freed
