"""``avatar weights check`` on good and broken directories; download planning and verification offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from avatarstream.engines import hub
from avatarstream.engines.base import EngineError
from avatarstream.engines.liveportrait.checkpoint import variant_files
from avatarstream.cli import main


def test_check_good_dir(joyvasa_weights, capsys):
    rc = main(["weights", "check", str(joyvasa_weights), "--group", "liveportrait-human", "--group", "joyvasa"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "[        ok] liveportrait-human" in out and "[        ok] joyvasa" in out
    assert "joyvasa engine: ready" in out


def test_check_broken_dir(tmp_path, joyvasa_weights, capsys):
    for rel in variant_files("human"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        good = (joyvasa_weights / rel).read_bytes() if rel.endswith("appearance_feature_extractor.pth") else None
        (tmp_path / rel).write_bytes(good[: len(good) // 2] if good else b"")
    (tmp_path / "JoyVASA/motion_generator").mkdir(parents=True)
    (tmp_path / "JoyVASA/motion_generator/motion_generator_hubert_chinese.pt").write_bytes(b"garbage")
    rc = main(["weights", "check", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "[    broken] liveportrait-human" in out and "does not load: EngineError: cannot read checkpoint" in out
    assert "[incomplete] joyvasa" in out and "missing JoyVASA/motion_template/motion_template.pkl" in out
    assert "[   missing] liveportrait-animal-v1.1" in out
    assert "joyvasa engine: NOT ready" in out
    assert main(["weights", "check", str(tmp_path / "nope")]) == 1
    assert "weights directory not found" in capsys.readouterr().err


def test_official_file_list_matches_the_loaders():
    local = {f.local_path for f in hub.OFFICIAL_FILES}
    for variant in ("human", "animal-v1.0", "animal-v1.1"):
        assert set(variant_files(variant)) <= local
    from avatarstream.engines.joyvasa.avatar_engine import required_files

    assert set(required_files()) <= local
    repos = {f.repo_id for f in hub.OFFICIAL_FILES}
    assert repos == {"KwaiVGI/LivePortrait", "jdh-algo/JoyVASA", "TencentGameMate/chinese-hubert-base",
                     "facebook/wav2vec2-base-960h"}
    assert len(local) == len(hub.OFFICIAL_FILES)
    with pytest.raises(EngineError, match="unknown weight groups"):
        hub.select_files(["nope"])


def _remote(data: bytes, lfs: bool) -> hub.RemoteInfo:
    if lfs:
        return hub.RemoteInfo(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return hub.RemoteInfo(size=len(data), git_sha1=hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())


def test_git_blob_sha1_matches_git(tmp_path):
    p = tmp_path / "hello"
    p.write_bytes(b"hello\n")
    assert hub.git_blob_sha1_of(p) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object`


def test_plan_and_verified_download_offline(tmp_path):
    files = hub.select_files(["joyvasa", "audio-encoder"])
    content = {f: f"{f.repo_id}/{f.filename}".encode() * 7 for f in files}
    remote = {f: _remote(content[f], lfs=f.filename.endswith((".pt", ".bin"))) for f in files}
    good, wrong, _absent = files[0], files[1], files[2]
    for f, data in ((good, content[good]), (wrong, b"x" * len(content[wrong]))):
        (tmp_path / f.local_path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f.local_path).write_bytes(data)
    plan = {p.file: p for p in hub.plan_download(tmp_path, files, remote)}
    assert plan[good].problem is None
    assert "expected" in plan[wrong].problem and plan[files[2]].problem == "missing"

    fetched: list[hub.HubFile] = []

    def fake_download(f: hub.HubFile, dest: Path) -> Path:
        fetched.append(f)
        path = dest / f.local_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content[f])
        return path

    final = hub.download(tmp_path, files, fetch=lambda fs: remote, downloader=fake_download, log=lambda s: None)
    assert all(p.problem is None for p in final)
    assert good not in fetched and wrong in fetched and len(fetched) == len(files) - 1

    def corrupt_download(f: hub.HubFile, dest: Path) -> Path:
        (dest / f.local_path).write_bytes(b"?" * remote[f].size)
        return dest / f.local_path

    (tmp_path / good.local_path).unlink()
    with pytest.raises(EngineError, match="failed verification"):
        hub.download(tmp_path, files, fetch=lambda fs: remote, downloader=corrupt_download, log=lambda s: None)
    with pytest.raises(EngineError, match="the hub has no"):
        hub.plan_download(tmp_path, files, {})


def _engine_dir(tmp_path, joyvasa_dir):
    """Narrow LivePortrait networks (official layout) next to the given JoyVASA folder."""
    from avatarstream.engines.liveportrait.checkpoint import write_random_checkpoints
    from avatarstream.engines.liveportrait.config import LivePortraitConfig

    write_random_checkpoints(tmp_path, seed=5, variants=("human",), config=LivePortraitConfig.small())
    (tmp_path / "JoyVASA").symlink_to(joyvasa_dir)
    return tmp_path


def _built_pe_mode(engine) -> str:
    """The encoding the engine's denoiser really adds: constant (one vector for every token) or per position."""
    net = engine.model.denoising_net
    assert net.cfg is engine.model.cfg
    pe = net.positional(net.cfg.window_len)
    return "constant" if pe.shape[1] == 1 else "per_position"


@pytest.mark.parametrize("recorded", [None, "per_position"])
def test_check_reports_the_positional_encoding_the_engine_builds(recorded, joyvasa_weights, tmp_path, capsys):
    """Random weights of the real shapes: the release's file (nothing recorded) and one that records args.pe_mode."""
    import shutil

    import torch

    from avatarstream.cli.weights import check_dir
    from avatarstream.engines.base import EngineError
    from avatarstream.engines.joyvasa.avatar_engine import MOTION_GENERATOR_FILE
    from avatarstream.engines.liveportrait.config import LivePortraitConfig
    from avatarstream.engines.registry import load_engine

    joyvasa_dir = joyvasa_weights / "JoyVASA"
    if recorded is not None:
        joyvasa_dir = tmp_path / "jv" / "JoyVASA"
        shutil.copytree(joyvasa_weights / "JoyVASA", joyvasa_dir)
        path = joyvasa_dir.parent / MOTION_GENERATOR_FILE
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        ckpt["args"].pe_mode = recorded
        torch.save(ckpt, path)
    root = _engine_dir(tmp_path / "w", joyvasa_dir)
    [report] = check_dir(root, ["joyvasa"])
    assert report.ok, report.problem
    assert report.details["pe_mode"] == (recorded or "constant")
    assert report.details["pe_mode_source"] == ("checkpoint" if recorded else "default")
    assert main(["weights", "check", str(root), "--group", "joyvasa"]) == 0
    out = capsys.readouterr().out
    assert f"positional encoding: {report.details['pe_mode']} (" in out
    assert ("render one clip each way" in out) == (recorded is None)

    small = LivePortraitConfig.small()
    engine = load_engine("joyvasa", weights=str(root), device="cpu", liveportrait_config=small)
    assert engine.model.cfg.pe_mode == _built_pe_mode(engine) == report.details["pe_mode"]
    assert engine.pe_mode.source == report.details["pe_mode_source"]
    other = "constant" if report.details["pe_mode"] == "per_position" else "per_position"
    chosen = load_engine("joyvasa", weights=str(root), device="cpu", liveportrait_config=small, pe_mode=other)
    assert _built_pe_mode(chosen) == other and chosen.pe_mode.source == "option"
    with pytest.raises(EngineError, match="pe_mode must be one of constant, per_position"):
        load_engine("joyvasa", weights=str(root), pe_mode="learned")
