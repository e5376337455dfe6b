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
