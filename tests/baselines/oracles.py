"""The original implementations as test oracles, imported from their PyPI packages without the
parts that cannot load here.

* ``merlin-vlm``: its package ``__init__`` imports transformers, nltk and torchvision (ImageNet
  ResNet-152 download). The oracle loads only ``merlin/models/inflate.py``, ``i3res.py`` and
  ``merlin/data/monai_transforms.py`` from the installed files, and gives ``I3ResNet`` the 2D
  ResNet-152 template it inflates from :func:`resnet152_2d` — torchvision's architecture (same
  module names, strides and paddings) without torchvision's compiled ops, which do not load
  against this CPU torch build.
* ``foundation-cancer-image-biomarker``: ``fmcib/preprocessing`` imports torchvision only for
  ``transforms.Lambda``; a stub module provides it (a plain callable wrapper).
* ``lighter-zoo``: imported as is.

Every helper skips the calling test (``pytest.importorskip``-style) when the package is absent.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"oracle package {pip_name} is not installed (pip install --no-deps {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def _load_file(module_name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _restored_modules(*names: str) -> Iterator[None]:
    """Put ``sys.modules[name]`` back as it was on exit (stand-in packages stay local to the oracle)."""
    saved = {k: sys.modules.get(k) for k in names}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ----------------------------------------------------------------------------- torchvision stand-in
class _Bottleneck2d(nn.Module):
    """torchvision.models.resnet.Bottleneck (v1.5: stride on conv2)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride


class _ResNet2d(nn.Module):
    """torchvision.models.resnet.ResNet's module tree (the parts I3ResNet reads)."""

    def __init__(self, layers: list[int]) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, 1000)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [_Bottleneck2d(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [_Bottleneck2d(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


def resnet152_2d(pretrained: bool = False, **_: object) -> nn.Module:
    """torchvision's ResNet-152 module tree, random init (``pretrained`` ignored: no downloads)."""
    return _ResNet2d([3, 8, 36, 3])


@contextlib.contextmanager
def torchvision_stub() -> Iterator[None]:
    """A ``torchvision`` module with ``models.resnet152`` and ``transforms.Lambda`` only."""
    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")  # type: ignore[attr-defined]
    tv.models.resnet152 = resnet152_2d  # type: ignore[attr-defined]
    tv.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]

    class Lambda:
        def __init__(self, fn):  # noqa: ANN001
            self.fn = fn

        def __call__(self, x):  # noqa: ANN001
            return self.fn(x)

    tv.transforms.Lambda = Lambda  # type: ignore[attr-defined]
    with _restored_modules("torchvision", "torchvision.models", "torchvision.transforms"):
        sys.modules.update({"torchvision": tv, "torchvision.models": tv.models,
                            "torchvision.transforms": tv.transforms})
        yield


# ----------------------------------------------------------------------------- Merlin
def merlin_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """``(i3res, monai_transforms)`` modules of the installed merlin-vlm, without its package init."""
    root = _package_dir("merlin", "merlin-vlm")
    pkg = types.ModuleType("merlin")
    pkg.__path__ = [str(root)]  # type: ignore[attr-defined]
    models = types.ModuleType("merlin.models")
    models.__path__ = [str(root / "models")]  # type: ignore[attr-defined]
    with _restored_modules("merlin", "merlin.models", "merlin.models.inflate", "merlin.models.i3res",
                           "merlin.data.monai_transforms"):
        sys.modules["merlin"], sys.modules["merlin.models"] = pkg, models
        models.inflate = _load_file("merlin.models.inflate", root / "models" / "inflate.py")  # type: ignore[attr-defined]
        i3res = _load_file("merlin.models.i3res", root / "models" / "i3res.py")
        transforms = _load_file("merlin.data.monai_transforms", root / "data" / "monai_transforms.py")
    return i3res, transforms


def merlin_i3resnet(seed: int = 0) -> nn.Module:
    """Merlin's ``I3ResNet`` exactly as ``ImageEncoder`` builds it (class_nb 1692, conv_class), with
    every weight and BN statistic then randomised (the inflation's centre-only kernels would hide
    axis-order errors)."""
    i3res, _ = merlin_modules()
    with torchvision_stub():
        import torchvision

        model = i3res.I3ResNet(torchvision.models.resnet152(pretrained=False), class_nb=1692, conv_class=True,
                               ImageEmbedding=True)
    randomise_(model, seed)
    return model.eval()


def randomise_(model: nn.Module, seed: int) -> None:
    """Random conv weights (He scale), BN affine + running statistics, biases; residual-friendly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                last = name.endswith(("bn3", "bn2")) and "layer" in name
                m.weight.copy_(torch.rand(n, generator=g) * (0.3 if last else 1.0) + 0.2)
                m.bias.copy_(torch.randn(n, generator=g) * 0.05)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.05)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


# ----------------------------------------------------------------------------- FMCIB
def fmcib_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """``(preprocessing, seed_based_crop)`` of the installed foundation-cancer-image-biomarker (loguru needed)."""
    root = _package_dir("fmcib", "foundation-cancer-image-biomarker")
    if importlib.util.find_spec("loguru") is None:
        pytest.skip("the fmcib oracle needs loguru (pip install loguru)")
    pkg = types.ModuleType("fmcib")
    pkg.__path__ = [str(root)]  # type: ignore[attr-defined]
    prep_pkg_name = "fmcib.preprocessing"
    with _restored_modules("fmcib", prep_pkg_name, prep_pkg_name + ".seed_based_crop"), torchvision_stub():
        sys.modules["fmcib"] = pkg
        spec = importlib.util.spec_from_file_location(prep_pkg_name, root / "preprocessing" / "__init__.py",
                                                      submodule_search_locations=[str(root / "preprocessing")])
        assert spec is not None and spec.loader is not None
        prep = importlib.util.module_from_spec(spec)
        sys.modules[prep_pkg_name] = prep
        spec.loader.exec_module(prep)
        crop = sys.modules[prep_pkg_name + ".seed_based_crop"]
    return prep, crop


def fmcib_transforms(reader: str):
    """``fmcib.preprocessing.get_transforms()`` exactly, except that LoadImaged uses ``reader``:
    the original asks for ITKReader (itk is not installed here); for a NIfTI or a DICOM series,
    MONAI's nibabel / pydicom readers give the same RAS image."""
    from monai import transforms as mt

    prep, _ = fmcib_modules()
    proxy = types.SimpleNamespace(**{k: getattr(mt, k) for k in dir(mt) if not k.startswith("_")})
    proxy.LoadImaged = lambda *a, **kw: mt.LoadImaged(*a, **{**kw, "reader": reader})
    saved, prep.monai_transforms = prep.monai_transforms, proxy
    try:
        with torchvision_stub():
            return prep.get_transforms()
    finally:
        prep.monai_transforms = saved


def fmcib_load_model_cls() -> type:
    """``fmcib.models.load_model.LoadModel`` (the class that reads ``model_weights.torch``)."""
    root = _package_dir("fmcib", "foundation-cancer-image-biomarker")
    if importlib.util.find_spec("loguru") is None:
        pytest.skip("the fmcib oracle needs loguru (pip install loguru)")
    return _load_file("_fmcib_load_model", root / "models" / "load_model.py").LoadModel


def fmcib_trunk() -> nn.Module:
    """The trunk exactly as ``fmcib.models.fmcib_model`` builds it (MONAI resnet50, widen 2)."""
    _package_dir("fmcib", "foundation-cancer-image-biomarker")
    from monai.networks.nets import resnet50

    return resnet50(pretrained=False, n_input_channels=1, widen_factor=2, conv1_t_stride=2, feed_forward=False,
                    bias_downsample=True)


# ----------------------------------------------------------------------------- CT-FM
def lighter_zoo_encoder() -> type:
    """``lighter_zoo.SegResEncoder`` (MONAI SegResEncoder + Hugging Face hub mixin)."""
    _package_dir("lighter_zoo", "lighter-zoo")
    from lighter_zoo import SegResEncoder

    return SegResEncoder
