"""The official neural-engine files on the Hugging Face hub, and a verified, resumable download of them.

``OFFICIAL_FILES`` lists every file the ``joyvasa`` engine (JoyVASA + LivePortrait) can use, where it
lives on the hub and where it goes under the destination directory (the official
``pretrained_weights/`` tree)::

    DEST/liveportrait/...            KwaiVGI/LivePortrait (human)
    DEST/liveportrait_animals/...    KwaiVGI/LivePortrait (animal v1.0 and v1.1)
    DEST/insightface/...             KwaiVGI/LivePortrait (face detector + 106-point landmarks, ONNX)
    DEST/liveportrait/landmark.onnx  KwaiVGI/LivePortrait (203-point landmarks)
    DEST/JoyVASA/...                 jdh-algo/JoyVASA (motion generator + motion template)
    DEST/chinese-hubert-base/...     TencentGameMate/chinese-hubert-base (audio encoder config/weights)
    DEST/wav2vec2-base-960h/...      facebook/wav2vec2-base-960h

Downloads go through ``huggingface_hub.hf_hub_download`` (resumes partial files, tqdm progress),
then each file is checked against the hub's checksum: the LFS sha256 for large files, the git
blob sha1 for small ones. Planning and verification work on local files and injected remote
metadata, so they are testable without a network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from avatarstream.engines.base import EngineError

LIVEPORTRAIT_REPO = "KwaiVGI/LivePortrait"
JOYVASA_REPO = "jdh-algo/JoyVASA"
HUBERT_ZH_REPO = "TencentGameMate/chinese-hubert-base"
WAV2VEC2_REPO = "facebook/wav2vec2-base-960h"
BASE_NAMES = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str  # path inside the hub repo
    local_dir: str  # directory under DEST that mirrors the repo ("" for the root)
    group: str  # what it belongs to (see GROUPS)

    @property
    def local_path(self) -> str:
        return f"{self.local_dir}/{self.filename}" if self.local_dir else self.filename


def _lp(group: str, *paths: str) -> list[HubFile]:
    return [HubFile(LIVEPORTRAIT_REPO, p, "", group) for p in paths]


OFFICIAL_FILES: tuple[HubFile, ...] = tuple(
    _lp("liveportrait-human", *(f"liveportrait/base_models/{n}.pth" for n in BASE_NAMES),
        "liveportrait/retargeting_models/stitching_retargeting_module.pth")
    + _lp("liveportrait-animal-v1.0", *(f"liveportrait_animals/base_models/{n}.pth" for n in BASE_NAMES),
          "liveportrait_animals/retargeting_models/stitching_retargeting_module.pth")
    + _lp("liveportrait-animal-v1.1", *(f"liveportrait_animals/base_models_v1.1/{n}.pth" for n in BASE_NAMES))
    + _lp("face-detector", "insightface/models/buffalo_l/det_10g.onnx", "insightface/models/buffalo_l/2d106det.onnx",
          "liveportrait/landmark.onnx")
    + [HubFile(JOYVASA_REPO, "motion_generator/motion_generator_hubert_chinese.pt", "JoyVASA", "joyvasa"),
       HubFile(JOYVASA_REPO, "motion_template/motion_template.pkl", "JoyVASA", "joyvasa")]
    + [HubFile(HUBERT_ZH_REPO, f, "chinese-hubert-base", "audio-encoder")
       for f in ("config.json", "preprocessor_config.json", "pytorch_model.bin")]
    + [HubFile(WAV2VEC2_REPO, f, "wav2vec2-base-960h", "audio-encoder")
       for f in ("config.json", "preprocessor_config.json", "pytorch_model.bin")]
)
GROUPS: dict[str, str] = {
    "liveportrait-human": "LivePortrait human renderer (F, M, W, G, stitching)",
    "liveportrait-animal-v1.0": "LivePortrait animal renderer v1.0 (used by JoyVASA animal mode)",
    "liveportrait-animal-v1.1": "LivePortrait animal renderer v1.1 (LivePortrait's animal default)",
    "face-detector": "insightface buffalo_l face detector, 106-point and LivePortrait 203-point landmarks (ONNX)",
    "joyvasa": "JoyVASA audio-to-motion generator and motion template",
    "audio-encoder": "audio encoder configs/weights (chinese-hubert-base, wav2vec2-base-960h)",
}


def select_files(groups: Iterable[str] | None = None) -> list[HubFile]:
    if groups is None:
        return list(OFFICIAL_FILES)
    groups = list(groups)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise EngineError(f"unknown weight groups {unknown}; choose from: {', '.join(GROUPS)}")
    return [f for f in OFFICIAL_FILES if f.group in groups]


@dataclass(frozen=True)
class RemoteInfo:
    """What the hub says about a file: its size and checksum."""

    size: int
    sha256: str | None = None  # LFS files
    git_sha1: str | None = None  # files stored in git (the blob id)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha1()  # noqa: S324 - git's object id, not a security check
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, remote: RemoteInfo) -> str | None:
    """None when ``path`` matches ``remote``; otherwise why not."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != remote.size:
        return f"size {size} bytes, expected {remote.size}"
    if remote.sha256:
        got = sha256_of(path)
        return None if got == remote.sha256 else f"sha256 {got[:12]}..., expected {remote.sha256[:12]}..."
    if remote.git_sha1:
        got = git_blob_sha1_of(path)
        return None if got == remote.git_sha1 else f"git sha1 {got[:12]}..., expected {remote.git_sha1[:12]}..."
    return "the hub gave no checksum for this file"


@dataclass(frozen=True)
class PlannedFile:
    file: HubFile
    remote: RemoteInfo
    problem: str | None  # None: present and verified; else why it must be (re)downloaded

    @property
    def needed(self) -> bool:
        return self.problem is not None


def plan_download(dest: Path, files: Iterable[HubFile], remote: Mapping[HubFile, RemoteInfo]) -> list[PlannedFile]:
    """Compare the files under ``dest`` with the hub's metadata; every file gets a verdict."""
    plan = []
    for f in files:
        if f not in remote:
            raise EngineError(f"the hub has no {f.filename} in {f.repo_id}")
        plan.append(PlannedFile(f, remote[f], verify_file(Path(dest) / f.local_path, remote[f])))
    return plan


def fetch_remote_info(files: Iterable[HubFile]) -> dict[HubFile, RemoteInfo]:
    """Ask the hub for each file's size and checksum (network)."""
    from huggingface_hub import HfApi

    api = HfApi()
    files = list(files)
    out: dict[HubFile, RemoteInfo] = {}
    for repo in sorted({f.repo_id for f in files}):
        wanted = [f for f in files if f.repo_id == repo]
        infos = {i.path: i for i in api.get_paths_info(repo, [f.filename for f in wanted], expand=True)}
        for f in wanted:
            info = infos.get(f.filename)
            if info is None or not hasattr(info, "size"):
                continue
            lfs = getattr(info, "lfs", None)
            out[f] = RemoteInfo(size=int(info.size), sha256=getattr(lfs, "sha256", None) if lfs else None,
                                git_sha1=None if lfs else getattr(info, "blob_id", None))
    return out


def hub_download(file: HubFile, dest: Path) -> Path:
    """One file via ``hf_hub_download`` into the mirrored directory (resumes, shows a progress bar)."""
    from huggingface_hub import hf_hub_download

    local_dir = Path(dest) / file.local_dir if file.local_dir else Path(dest)
    return Path(hf_hub_download(repo_id=file.repo_id, filename=file.filename, local_dir=str(local_dir)))


def download(dest: Path, files: Iterable[HubFile] | None = None, *,
             fetch: Callable[[list[HubFile]], Mapping[HubFile, RemoteInfo]] = fetch_remote_info,
             downloader: Callable[[HubFile, Path], Path] = hub_download,
             log: Callable[[str], None] = print) -> list[PlannedFile]:
    """Download what is missing or wrong under ``dest``, verify every file, return the final verdicts."""
    from tqdm import tqdm

    dest = Path(dest)
    files = list(OFFICIAL_FILES if files is None else files)
    remote = fetch(files)
    plan = plan_download(dest, files, remote)
    todo = [p for p in plan if p.needed]
    log(f"{len(plan) - len(todo)} of {len(plan)} files already present and verified; {len(todo)} to download "
        f"({sum(p.remote.size for p in todo) / 2**20:.0f} MiB)")
    for p in tqdm(todo, desc="files", unit="file", disable=not todo):
        path = dest / p.file.local_path
        if path.is_file() and p.problem != "missing":
            path.unlink()  # complete but wrong: fetch it again from scratch
        downloader(p.file, dest)
        problem = verify_file(path, p.remote)
        if problem:
            raise EngineError(f"{p.file.repo_id}/{p.file.filename} failed verification after download: {problem}")
    return plan_download(dest, files, remote)
