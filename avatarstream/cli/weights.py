"""``avatar weights``: download the official neural-engine weights, or check a weights directory.

    avatar weights download [--dest DIR] [--group NAME ...]
    avatar weights check DIR

``check`` reports, per group, which files are present and whether they load (strictly, into the
same networks the engines use), and for the JoyVASA motion generator the positional-encoding mode the
engine builds it with (``engines.joyvasa.checkpoint.resolve_pe_mode``) and how to choose the other one;
it exits 1 when the ``joyvasa`` engine could not start.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from avatarstream.engines.base import EngineError
from avatarstream.engines.hub import GROUPS, OFFICIAL_FILES, download, select_files

DEFAULT_DEST = Path("pretrained_weights")
ENGINE_GROUPS = ("liveportrait-human", "joyvasa")  # what ``--engine joyvasa`` needs at minimum


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = sub.add_parser("download", help="fetch the official files from the Hugging Face hub (resumable, verified)")
    d.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"target directory (default: {DEFAULT_DEST})")
    d.add_argument("--group", action="append", choices=list(GROUPS), default=None,
                   help="only this group of files (repeatable; default: all)")
    c = sub.add_parser("check", help="report which weight files in DIR are present and loadable")
    c.add_argument("dir", type=Path, help="weights directory (as written by 'avatar weights download')")
    c.add_argument("--group", action="append", choices=list(GROUPS), default=None, help="only check this group")


@dataclass
class GroupReport:
    group: str
    present: list[str]
    missing: list[str]
    problem: str | None  # why the present files do not load; None when they do (or nothing to load)
    details: dict[str, str] = field(default_factory=dict)  # what loading found out (joyvasa: "pe_mode")

    @property
    def ok(self) -> bool:
        return not self.missing and self.problem is None


Loader = Callable[[Path], dict[str, str] | None]  # loads a group's files strictly; may return details
PE_MODE_HOWTO = ("the file cannot tell which encoding it was trained with: render one clip each way "
                 "(load_engine('joyvasa', weights=DIR, pe_mode='constant' | 'per_position')); the wrong one "
                 "gives jittery motion whose mouth does not follow the speech (docs/joyvasa.md)")


def _load_liveportrait(variant: str) -> Loader:
    def load(root: Path) -> None:
        from avatarstream.engines.liveportrait.checkpoint import load_networks

        load_networks(root, variant)
    return load


def _load_joyvasa(root: Path) -> dict[str, str]:
    from avatarstream.engines.joyvasa.checkpoint import load_motion_generator
    from avatarstream.engines.joyvasa.motion import MotionTemplate

    # Resolved exactly as the engine does with its default pe_mode option (None).
    _model, info = load_motion_generator(root / "JoyVASA/motion_generator/motion_generator_hubert_chinese.pt")
    MotionTemplate.load(root / "JoyVASA/motion_template/motion_template.pkl")
    return {"pe_mode": info.pe_mode.mode, "pe_mode_source": info.pe_mode.source,
            "pe_mode_text": info.pe_mode.describe()}


def _load_onnx(paths: list[str]) -> Loader:
    def load(root: Path) -> None:
        import onnxruntime as ort

        for rel in paths:
            try:
                ort.InferenceSession(str(root / rel), providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise EngineError(f"{rel}: {exc}") from exc
    return load


def _load_audio_configs(root: Path) -> None:
    from avatarstream.engines.joyvasa.audio_encoder import audio_encoder_config

    for name, model in (("chinese-hubert-base", "hubert_zh"), ("wav2vec2-base-960h", "wav2vec2")):
        if (root / name / "config.json").is_file():
            audio_encoder_config(model, root / name)


LOADERS: dict[str, Loader] = {
    "liveportrait-human": _load_liveportrait("human"),
    "liveportrait-animal-v1.0": _load_liveportrait("animal-v1.0"),
    "liveportrait-animal-v1.1": _load_liveportrait("animal-v1.1"),
    "face-detector": _load_onnx([f.local_path for f in OFFICIAL_FILES if f.group == "face-detector"]),
    "joyvasa": _load_joyvasa,
    "audio-encoder": _load_audio_configs,
}


def check_group(root: Path, group: str) -> GroupReport:
    files = [f.local_path for f in OFFICIAL_FILES if f.group == group]
    present = [rel for rel in files if (root / rel).is_file()]
    missing = [rel for rel in files if rel not in present]
    problem, details = None, {}
    if present and not missing:
        try:
            details = LOADERS[group](root) or {}
        except Exception as exc:  # report every failure as text: this is a diagnostic command
            problem = f"{type(exc).__name__}: {exc}"
    return GroupReport(group, present, missing, problem, details)


def check_dir(root: Path, groups: list[str] | None = None) -> list[GroupReport]:
    root = Path(root)
    if not root.is_dir():
        raise EngineError(f"weights directory not found: {root}")
    return [check_group(root, g) for g in (groups or list(GROUPS))]


def _print_check(root: Path, reports: list[GroupReport]) -> None:
    print(f"weights in {root}:")
    for r in reports:
        state = "ok" if r.ok else ("missing" if not r.present else "incomplete" if r.missing else "broken")
        print(f"  [{state:>10}] {r.group}: {GROUPS[r.group]} ({len(r.present)}/{len(r.present) + len(r.missing)} files)")
        for rel in r.missing:
            print(f"               missing {rel}")
        if r.problem:
            print(f"               does not load: {r.problem}")
        if "pe_mode" in r.details:
            print(f"               positional encoding: {r.details['pe_mode_text']}")
            if r.details["pe_mode_source"] != "checkpoint":
                print(f"               {PE_MODE_HOWTO}")


def run(args: argparse.Namespace) -> int:
    if args.action == "download":
        plan = download(args.dest, select_files(args.group))
        print(f"all {len(plan)} files present and verified in {args.dest}")
        return 0
    reports = check_dir(args.dir, args.group)
    _print_check(args.dir, reports)
    by_group = {r.group: r for r in reports}
    needed = [g for g in ENGINE_GROUPS if g in by_group]
    usable = all(by_group[g].ok for g in needed)
    if needed:
        print(f"joyvasa engine: {'ready' if usable else 'NOT ready'} (needs {', '.join(ENGINE_GROUPS)})")
    return 0 if all(by_group[g].ok for g in needed) and all(r.problem is None for r in reports) else 1
