"""A ``--weights DIR`` for the joyvasa engine with seeded random values, in the official layout.

For tests and benchmarks where the released files are absent (``avatar weights download`` needs the network):
the LivePortrait human networks and stitching file (``engines.liveportrait.checkpoint.write_random_checkpoints``),
the JoyVASA motion generator (``write_random_checkpoint``, the release's format) and a synthetic motion template.

``small=False``: the real shapes (about 130 M LivePortrait parameters and a 100 M-parameter motion generator
with its HuBERT-base encoder; about 1 GB on disk, ~10-20 s to write on one CPU core). ``small=True``: the
miniatures (``LivePortraitConfig.small()``, ``SMALL_CONFIG`` with a 2-layer encoder whose config is written to
``chinese-hubert-base/config.json``), a few MB; open the engine with ``liveportrait_config=LivePortraitConfig.small()``.
"""

from __future__ import annotations

from pathlib import Path

from avatarstream.engines.joyvasa.avatar_engine import AUDIO_CONFIG_DIR, MOTION_GENERATOR_FILE, MOTION_TEMPLATE_FILE
from avatarstream.engines.joyvasa.checkpoint import SMALL_CONFIG, small_audio_config, write_random_checkpoint
from avatarstream.engines.joyvasa.motion import MotionTemplate
from avatarstream.engines.joyvasa.network import DitConfig
from avatarstream.engines.liveportrait.checkpoint import write_random_checkpoints
from avatarstream.engines.liveportrait.config import LivePortraitConfig


def write_random_weights(root: str | Path, *, small: bool = False, seed: int = 0,
                         motion_config: DitConfig | None = None,
                         liveportrait_config: LivePortraitConfig | None = None) -> Path:
    """Write the files ``JoyVasaEngine(weights=root)`` needs; returns ``root``.

    ``motion_config``: the motion generator's architecture (default: the release's, or ``SMALL_CONFIG``);
    ``liveportrait_config``: the LivePortrait networks' (default: the official ones, or ``small()``); open the
    engine with the same ``liveportrait_config``."""
    root = Path(root)
    if liveportrait_config is None and small:
        liveportrait_config = LivePortraitConfig.small()
    write_random_checkpoints(root, seed=seed, variants=("human",), config=liveportrait_config)
    config = motion_config or (SMALL_CONFIG if small else DitConfig())
    if small:  # the miniature encoder's architecture; the real one is the published base config (no file needed)
        small_audio_config(config.audio_model).save_pretrained(str(root / AUDIO_CONFIG_DIR))
    write_random_checkpoint(root / MOTION_GENERATOR_FILE, seed=seed, config=config,
                            audio_config=small_audio_config(config.audio_model) if small else None)
    (root / MOTION_TEMPLATE_FILE).parent.mkdir(parents=True, exist_ok=True)
    MotionTemplate.synthetic().save(root / MOTION_TEMPLATE_FILE)
    return root
