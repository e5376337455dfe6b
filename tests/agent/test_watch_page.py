"""The browser viewer page ``/watch`` in headless Chromium: video plays and agent events arrive
on the WebRTC data channel."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from avatarstream.realtime.client import AvatarClient

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


async def test_watch_page_receives_video_and_events(server):
    if shutil.which(CHROMIUM) is None:
        pytest.skip("needs Debian chromium (/usr/bin/chromium)")
    playwright_api = pytest.importorskip("playwright.async_api", reason="needs playwright")
    client = AvatarClient(server.url, http=server.http)
    info = await client.create_session(size=256)
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox",
                                                                          "--disable-gpu", "--autoplay-policy=no-user-gesture-required"])
        try:
            page = await browser.new_page()
            await page.goto(info.extra["watch_url"])
            await page.click("#start")
            await page.wait_for_function("document.getElementById('avatar').readyState >= 2", timeout=20000)
            await client.connect(sample_rate=16000)
            t = np.arange(8000) / 16000
            await client.push_audio((0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
            await client.end_utterance()
            await page.wait_for_function(
                "window.avatarEvents.some(e => e.type === 'playback_finished')", timeout=15000)
            events = await page.evaluate("window.avatarEvents")
            frames = await page.evaluate("document.getElementById('avatar').getVideoPlaybackQuality().totalVideoFrames")
        finally:
            await browser.close()
    kinds = [e["type"] for e in events]
    assert kinds.index("playback_started") < kinds.index("playback_finished")
    finished = next(e for e in events if e["type"] == "playback_finished")
    assert finished["playback_position"] == pytest.approx(0.5, abs=0.02) and finished["interrupted"] is False
    assert frames > 10
    await client.close()
    await asyncio.sleep(0.05)
