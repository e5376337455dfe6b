"""Strict loading of files in the official layout, the stitching file's sub-dicts, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avatarstream.engines.base import EngineError, MissingWeightsError
from avatarstream.engines.liveportrait import checkpoint as ckpt
from avatarstream.engines.liveportrait.config import LivePortraitConfig, build_network
from avatarstream.engines.liveportrait.networks.stitching_retargeting import StitchingRetargetingNetwork

OFFICIAL_KEYS = json.loads((Path(__file__).parent / "data" / "official_keys.json").read_text())


@pytest.mark.parametrize("name", ckpt.BASE_NETWORKS)
def test_network_state_dict_matches_official_manifest(name):
    shapes = {k: list(v.shape) for k, v in build_network(name).state_dict().items()}
    assert shapes == OFFICIAL_KEYS[name]


def test_stitching_networks_match_official_manifest():
    for part in ckpt.STITCHING_PARTS:
        shapes = {f"{part}/{k}": list(v.shape) for k, v in StitchingRetargetingNetwork.named(part).state_dict().items()}
        assert shapes == {k: v for k, v in OFFICIAL_KEYS["stitching_retargeting"].items() if k.startswith(part + "/")}


def test_written_files_have_manifest_keys_and_load_strictly(lp_weights, lp_networks):
    for name in ckpt.BASE_NETWORKS:
        sd = torch.load(lp_weights / "liveportrait/base_models" / f"{name}.pth", weights_only=True)
        assert {k: list(v.shape) for k, v in sd.items()} == OFFICIAL_KEYS[name]
    stitching = torch.load(lp_weights / ckpt.HUMAN_STITCHING, weights_only=True)
    assert set(stitching) == set(ckpt.STITCHING_PARTS)
    assert all(k.startswith("module.mlp.") for part in stitching.values() for k in part)  # DDP layout
    nets = lp_networks
    ref = ckpt.LivePortraitNetworks.random(seed=0)  # write_random_checkpoints(seed=0) wrote these weights
    for got, want in zip(nets.modules(), ref.modules()):
        for (k, a), (k2, b) in zip(got.state_dict().items(), want.state_dict().items()):
            assert k == k2 and torch.equal(a, b), k


def test_animal_variant_directories_use_human_stitching(tmp_path):
    small = LivePortraitConfig.small()
    ckpt.write_random_checkpoints(tmp_path, seed=1, variants=("animal-v1.0", "animal-v1.1"), config=small)
    assert (tmp_path / "liveportrait_animals/base_models/warping_module.pth").is_file()
    assert (tmp_path / "liveportrait_animals/base_models_v1.1/spade_generator.pth").is_file()
    assert (tmp_path / ckpt.ANIMAL_STITCHING).is_file() and (tmp_path / ckpt.HUMAN_STITCHING).is_file()
    v10 = ckpt.load_networks(tmp_path, "animal-v1.0", config=small)
    v11 = ckpt.load_networks(tmp_path, "animal-v1.1", config=small)
    a = v10.spade_generator.state_dict()["fc.weight"]
    b = v11.spade_generator.state_dict()["fc.weight"]
    assert not torch.equal(a, b)  # different seeds went to different directories
    with pytest.raises(EngineError, match="does not match"):  # small files never load into the official shapes
        ckpt.load_networks(tmp_path, "animal-v1.1")


def test_wrong_key_fails_clearly(tmp_path):
    net = build_network("appearance_feature_extractor")
    sd = net.state_dict()
    sd["first.conv.kernel"] = sd.pop("first.conv.weight")
    path = tmp_path / "appearance_feature_extractor.pth"
    torch.save(sd, path)
    with pytest.raises(EngineError) as err:
        ckpt.load_strict(build_network("appearance_feature_extractor"), ckpt.read_state_dict(path), str(path))
    msg = str(err.value)
    assert "missing keys: first.conv.weight" in msg and "unexpected keys: first.conv.kernel" in msg
    sd["first.conv.weight"] = torch.zeros(64, 3, 5, 5)
    del sd["first.conv.kernel"]
    with pytest.raises(EngineError, match=r"wrong shapes: first.conv.weight \(64, 3, 5, 5\)"):
        ckpt.load_strict(build_network("appearance_feature_extractor"), sd, "x")


def test_stitching_file_with_and_without_module_prefix(tmp_path):
    nets = {p: StitchingRetargetingNetwork.named(p) for p in ckpt.STITCHING_PARTS}
    plain = {p: n.state_dict() for p, n in nets.items()}
    torch.save(plain, tmp_path / "plain.pth")
    loaded = ckpt.read_stitching(tmp_path / "plain.pth")
    for p in ckpt.STITCHING_PARTS:
        x = torch.randn(2, nets[p].mlp[0].in_features)
        assert torch.equal(loaded[p](x), nets[p](x))
    torch.save({"retarget_shoulder": plain["retarget_shoulder"]}, tmp_path / "partial.pth")
    with pytest.raises(EngineError, match="retarget_mouth"):
        ckpt.read_stitching(tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EngineError, match="cannot read checkpoint"):
        ckpt.read_stitching(tmp_path / "junk.pth")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        ckpt.load_networks(tmp_path, "human")
    for rel in ckpt.variant_files("human"):
        assert rel in str(err.value)
