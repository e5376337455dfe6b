"""A minimal voice agent: speaks lines of text through espeak-ng into an avatar session.

Start a server (``avatar serve``), then:

    python examples/espeak_agent.py --server http://127.0.0.1:8080 "Hello!" "How can I help you today?"

It creates a session, prints where to watch it (the printed ``/watch?...`` page in a browser, or
any WHEP player with the WHEP URL and token), pushes each line as one utterance as fast as espeak-ng produces it,
and prints the playback events. ``--interrupt-after 1.5`` shows barge-in: the first line is cut
short after 1.5 s of playback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import wave
from io import BytesIO
from pathlib import Path

from avatarstream.realtime.client import AvatarClient 


def espeak_pcm(text: str, words_per_minute: int = 160) -> tuple[bytes, int]:
    """Synthesise ``text``; returns (PCM s16le mono bytes, sample rate) — espeak-ng speaks at 22.05 kHz."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = subprocess.run(["espeak-ng", "-s", str(words_per_minute), "--stdout", text], check=True, capture_output=True).stdout
    with wave.open(BytesIO(wav)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def to_24k(pcm: bytes, rate: int) -> bytes:
    """espeak-ng's 22.05 kHz is not a wire rate; resample to 24 kHz (the server takes 16/24/48 kHz)."""
    from math import gcd

    import numpy as np
    from scipy.signal import resample_poly

    if rate == 24000:
        return pcm
    g = gcd(24000, rate)
    y = resample_poly(np.frombuffer(pcm, "<i2").astype(np.float32), 24000 // g, rate // g)
    return np.clip(y, -32768, 32767).astype("<i2").tobytes()


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lines", nargs="+", help="text to speak, one utterance per argument")
    p.add_argument("--server", default="http://127.0.0.1:8080")
    p.add_argument("--image", default="astronaut", help='built-in portrait id ("astronaut", "cat") or an image file')
    p.add_argument("--engine", default="lite")
    p.add_argument("--size", type=int, default=512, choices=[256, 512])
    p.add_argument("--interrupt-after", type=float, default=None, help="interrupt the first line after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the session open after speaking (Ctrl-C to end)")
    args = p.parse_args(argv)

    image = Path(args.image) if Path(args.image).is_file() else args.image
    async with AvatarClient(args.server) as client:
        info = await client.create_session(image=image, engine=args.engine, size=args.size)
        print(f"session {info.id}\n  watch in a browser: {info.extra['watch_url']}\n"
              f"  or with a WHEP player: {info.whep_url} (bearer token {info.token})", flush=True)
        client.on("*", lambda ev: print("  event:", json.dumps(ev), flush=True))
        await client.connect(sample_rate=24000)
        for i, line in enumerate(args.lines):
            pcm, rate = espeak_pcm(line)
            mark = client.mark()
            print(f"speaking: {line!r} ({len(pcm) / 2 / rate:.1f} s)", flush=True)
            await client.push_audio(to_24k(pcm, rate))
            await client.end_utterance()
            if i == 0 and args.interrupt_after is not None:
                await client.wait_for("playback_started", start=mark)
                await asyncio.sleep(args.interrupt_after)
                await client.interrupt()
            await client.wait_for("playback_finished", start=mark, timeout=120)
        if args.keep:
            print("session kept open; Ctrl-C to end", flush=True)
            while True:
                await asyncio.sleep(20)
                await client.keepalive()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
