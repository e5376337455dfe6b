"""What the joyvasa engine's ``latency="low"`` streaming costs, measured on this machine without a GPU:
``latency_configs.window_cost`` as a command (the GPU check's ``latency_cost`` section runs the same on the GPU).
Kept apart from ``latency_configs`` so that ``python -m`` runs a module the package does not import first."""

from __future__ import annotations

import time

from avatarstream.bench.gpu.latency_configs import window_cost
from avatarstream.engines.joyvasa.streaming import StreamingConfig


def main(argv: list[str] | None = None) -> int:
    """``python -m avatarstream.bench.gpu.latency_cost [--real-shapes] --audio-s S --reps R --out FILE.json``:
    ``window_cost`` alone on this machine's CPU (the miniature motion generator, or random weights of the real
    shapes: 50 steps), without the renderer or the server. Writes and prints the JSON."""
    import argparse
    import json
    import os
    import types

    import torch

    from avatarstream.bench.gpu.inputs import speech
    from avatarstream.engines.joyvasa.checkpoint import random_motion_generator, small_motion_generator
    from avatarstream.engines.joyvasa.motion import MotionTemplate
    from avatarstream.engines.joyvasa.options import LIVE_PRESET

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--real-shapes", action="store_true")
    p.add_argument("--audio-s", type=float, default=4.0)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = (random_motion_generator(0) if args.real_shapes else small_motion_generator(0)).eval()
    engine = types.SimpleNamespace(model=model, template=MotionTemplate.synthetic(),
                                   stream_config=StreamingConfig(cfg_scale=LIVE_PRESET.cfg_scale))
    product = types.SimpleNamespace(engine=engine, speech=speech(), device=torch.device("cpu"))
    t = time.perf_counter()
    out = window_cost(product, args.audio_s, args.reps)  # type: ignore[arg-type]
    out.update(model="random weights of the real shapes" if args.real_shapes else "miniature (SMALL_CONFIG)",
               diffusion_steps=model.schedule().num_steps, torch_threads=args.threads, seconds=round(
                   time.perf_counter() - t, 1), machine=f"{os.cpu_count()} CPUs, load average "
               f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    text = json.dumps(out, indent=2)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
