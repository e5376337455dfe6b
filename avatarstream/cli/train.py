"""``avatar train``: train a model. Currently: ``avatar train loopy --data DIR [--stage 1|2] ...``."""

from __future__ import annotations

import argparse
from pathlib import Path

MODELS = ("loopy",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=MODELS, help="which model to train")
    p.add_argument("--data", type=Path, required=True, help="dataset directory (see docs/loopy.md)")
    p.add_argument("--out", type=Path, default=Path("loopy-weights"), help="output weights directory")
    p.add_argument("--stage", type=int, choices=[1, 2], default=1,
                   help="1: image level (reference net + spatial U-Net); 2: temporal layers + audio modules")
    p.add_argument("--config", choices=["full", "tiny"], default="full",
                   help="full: SD-1.5 sized (needs --base, --wav2vec2); tiny: 64x64 smoke-test model")
    p.add_argument("--base", type=Path, default=None, help="diffusers-format Stable Diffusion 1.5 directory (unet/, vae/)")
    p.add_argument("--wav2vec2", type=Path, default=None, help="Wav2Vec2Model directory (save_pretrained format)")
    p.add_argument("--init", type=Path, default=None, help="Loopy weights directory to start from (stage 2: stage-1 output)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--save-every", type=int, default=500, help="save the weights directory every N steps")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less GPU memory, slower steps")
    p.add_argument("--prepare", type=Path, default=None, metavar="RAW_DIR",
                   help="first turn the raw talking-head videos in RAW_DIR into the dataset format in --data")
    p.add_argument("--prepare-only", action="store_true", help="with --prepare: stop after preparing the data")
    p.add_argument("--freeze-stage1", action="store_true",
                   help="stage 2: keep the stage-1 weights fixed and train only the temporal/audio layers (less "
                        "memory; the paper trains everything in stage 2, the default)")


def run(args: argparse.Namespace) -> int:
    from avatarstream.engines.base import EngineError

    if args.stage == 2 and args.init is None and args.config != "tiny":
        raise EngineError("stage 2 starts from the stage-1 weights: pass --init STAGE1_DIR")
    if args.steps < 1:
        raise EngineError("--steps must be >= 1")
    from avatarstream.engines.torch_device import resolve_device
    from avatarstream.engines.loopy.train import TrainOptions, train

    if args.prepare is not None:
        from avatarstream.engines.loopy.checkpoint import config_for_base
        from avatarstream.engines.loopy.config import get_config
        from avatarstream.engines.loopy.prepare_data import prepare_dataset

        cfg = get_config(args.config)
        if args.base is not None:
            cfg = config_for_base(cfg, args.base)
        clips = prepare_dataset(args.prepare, args.data, resolution=cfg.resolution)
        print(f"prepared {len(clips)} clips in {args.data}")
        if args.prepare_only:
            return 0
    elif args.prepare_only:
        raise EngineError("--prepare-only needs --prepare RAW_DIR")

    opts = TrainOptions(
        data=args.data, out=args.out, stage=args.stage, config=args.config, base=args.base, wav2vec2=args.wav2vec2,
        init=args.init, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=resolve_device(args.device), save_every=args.save_every,
        gradient_checkpointing=args.gradient_checkpointing, freeze_stage1=args.freeze_stage1,
    )
    result = train(opts)
    first, last = result.losses[0], sum(result.losses[-10:]) / len(result.losses[-10:])
    print(f"loopy stage {args.stage}: {len(result.losses)} steps, loss {first:.4f} -> {last:.4f} (mean of last 10); "
          f"weights in {result.out_dir}")
    return 0
