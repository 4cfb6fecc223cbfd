"""Compact PyTorch definitions of the zoo, written for the interop tests.

Independent re-statements of the published architectures (RepDistiller/CRD, the AFD
release's WRN, torchvision's ResNets) with the same ``state_dict`` keys. Each model
records the afd_jax-named features (`afd_jax/models/features.py`) of its last forward
into ``model.features`` through forward hooks on its blocks and on parameter-free
``nn.Identity`` taps, so the tests compare them with the Flax model's sown features.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class Tapped(nn.Module):
  """Base class: ``tap(module, *names)`` stores the module's output under feature names."""

  def __init__(self):
    super().__init__()
    self.features: dict[str, torch.Tensor] = {}

  def tap(self, module: nn.Module, *names: str) -> None:
    def hook(_, __, output):
      for name in names:
        self.features[name] = output
    module.register_forward_hook(hook)


def _bn(c):
  return nn.BatchNorm2d(c)


def _conv(cin, cout, k, stride=1, groups=1, bias=False):
  return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)


def shuffle(x, groups):
  b, c, h, w = x.shape
  return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


# ResNets: RepDistiller resnet.py / resnetv2.py and torchvision share the blocks.

class Basic(nn.Module):
  expansion = 1

  def __init__(self, cin, width, stride, shortcut):
    super().__init__()
    self.conv1, self.bn1 = _conv(cin, width, 3, stride), _bn(width)
    self.conv2, self.bn2 = _conv(width, width, 3), _bn(width)
    if stride != 1 or cin != width:
      setattr(self, shortcut, nn.Sequential(_conv(cin, width, 1, stride), _bn(width)))
    self.shortcut_name = shortcut
    self.preact = nn.Identity()

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    proj = getattr(self, self.shortcut_name, None)
    return F.relu(self.preact(y + (proj(x) if proj is not None else x)))


class Bottle(nn.Module):
  expansion = 4

  def __init__(self, cin, width, stride, shortcut):
    super().__init__()
    cout = 4 * width
    self.conv1, self.bn1 = _conv(cin, width, 1), _bn(width)
    self.conv2, self.bn2 = _conv(width, width, 3, stride), _bn(width)
    self.conv3, self.bn3 = _conv(width, cout, 1), _bn(cout)
    if stride != 1 or cin != cout:
      setattr(self, shortcut, nn.Sequential(_conv(cin, cout, 1, stride), _bn(cout)))
    self.shortcut_name = shortcut
    self.preact = nn.Identity()

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
    proj = getattr(self, self.shortcut_name, None)
    return F.relu(self.preact(y + (proj(x) if proj is not None else x)))


class ResNet(Tapped):
  """layer{i}.{j} ResNet; ``imagenet``: 7x7/2 stem + max-pool (torchvision)."""

  def __init__(self, block, sizes, widths, stem, num_classes, imagenet=False,
               shortcut="downsample", fc="fc"):
    super().__init__()
    self.imagenet = imagenet
    self.conv1 = _conv(3, stem, 7, 2) if imagenet else _conv(3, stem, 3)
    self.bn1 = _bn(stem)
    self.stem = nn.Identity()
    self.tap(self.stem, "stem")
    cin = stem
    for i, (n, w) in enumerate(zip(sizes, widths), 1):
      blocks = []
      for j in range(n):
        blocks.append(block(cin, w, 2 if (i > 1 and j == 0) else 1, shortcut))
        cin = w * block.expansion
        self.tap(blocks[-1], f"stage{i}.block{j + 1}")
      self.tap(blocks[-1], f"stage{i}.out")
      self.tap(blocks[-1].preact, f"stage{i}.preact")
      setattr(self, f"layer{i}", nn.Sequential(*blocks))
    self.num_stages = len(sizes)
    self.fc_name = fc
    setattr(self, fc, nn.Linear(cin, num_classes))
    self.pooled = nn.Identity()
    self.tap(self.pooled, "pooled")

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    if self.imagenet:
      x = F.max_pool2d(x, 3, 2, 1)
    x = self.stem(x)
    for i in range(1, self.num_stages + 1):
      x = getattr(self, f"layer{i}")(x)
    return getattr(self, self.fc_name)(self.pooled(x.mean((2, 3))))


def cifar_resnet(depth, num_classes, wide=False):
  n = (depth - 2) // 6
  stem, widths = (32, (64, 128, 256)) if wide else (16, (16, 32, 64))
  return ResNet(Basic, (n, n, n), widths, stem, num_classes)


_LAYOUTS = {18: (Basic, (2, 2, 2, 2)), 34: (Basic, (3, 4, 6, 3)), 50: (Bottle, (3, 4, 6, 3)),
            101: (Bottle, (3, 4, 23, 3))}
# RepDistiller resnetv2.py's CIFAR-stem ResNets by zoo name.
RESNETV2_DEPTHS = {"resnet18": 18, "resnet34": 34, "ResNet50": 50, "resnet101": 101}


def resnetv2(depth, num_classes):
  block, sizes = _LAYOUTS[depth]
  return ResNet(block, sizes, (64, 128, 256, 512), 64, num_classes, shortcut="shortcut",
                fc="linear")


def torchvision_resnet(depth, num_classes):
  block, sizes = _LAYOUTS[depth]
  return ResNet(block, sizes, (64, 128, 256, 512), 64, num_classes, imagenet=True)


# WRN (RepDistiller = AFD release keys). ``bn1_twice``: the release's extra bn1 call.

class WideBlock(nn.Module):

  def __init__(self, cin, cout, stride, bn1_twice):
    super().__init__()
    self.bn1, self.conv1 = _bn(cin), _conv(cin, cout, 3, stride)
    self.bn2, self.conv2 = _bn(cout), _conv(cout, cout, 3)
    self.convShortcut = None if cin == cout else _conv(cin, cout, 1, stride)
    self.bn1_twice = bn1_twice
    self.normed, self.act_in = nn.Identity(), nn.Identity()

  def forward(self, x):
    if self.bn1_twice:
      self.bn1(x)  # the release's feature extraction: same input, output unused here
    a = self.act_in(F.relu(self.normed(self.bn1(x))))
    y = self.conv2(F.relu(self.bn2(self.conv1(a))))
    return y + (x if self.convShortcut is None else self.convShortcut(a))


class _Group(nn.Module):

  def __init__(self, blocks):
    super().__init__()
    self.layer = nn.Sequential(*blocks)

  def forward(self, x):
    return self.layer(x)


class WideResNet(Tapped):

  def __init__(self, depth, k, num_classes, bn1_twice=False):
    super().__init__()
    n = (depth - 4) // 6
    self.conv1 = _conv(3, 16, 3)
    self.tap(self.conv1, "stem")
    cin = 16
    for i, w in enumerate((16 * k, 32 * k, 64 * k), 1):
      blocks = []
      for j in range(n):
        blocks.append(WideBlock(cin, w, 2 if (i > 1 and j == 0) else 1, bn1_twice))
        cin = w
        self.tap(blocks[-1], f"stage{i}.block{j + 1}")
        names = [f"stage{i}.block{j + 1}.act_in"] + ([f"stage{i - 1}.out"]
                                                      if (i > 1 and j == 0) else [])
        self.tap(blocks[-1].act_in, *names)
        if i > 1 and j == 0:  # RepDistiller's WRN features with preact=True
          self.tap(blocks[-1].normed, f"stage{i - 1}.bn_preact")
      self.tap(blocks[-1], f"stage{i}.preact")
      setattr(self, f"block{i}", _Group(blocks))
    self.bn1 = _bn(cin)
    self.final, self.final_normed = nn.Identity(), nn.Identity()
    self.tap(self.final, "final.act", "stage3.out")
    self.tap(self.final_normed, "stage3.bn_preact")
    self.fc = nn.Linear(cin, num_classes)
    self.pooled = nn.Identity()
    self.tap(self.pooled, "pooled")

  def forward(self, x):
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    x = self.final(F.relu(self.final_normed(self.bn1(x))))
    return self.fc(self.pooled(x.mean((2, 3))))


# VGG-BN (RepDistiller layout: block{g} = [conv, bn, relu]*, last relu in forward).

VGG_WIDTHS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(Tapped):

  def __init__(self, depth, num_classes):
    super().__init__()
    cin = 3
    self.outs = nn.ModuleList()
    for g, widths in enumerate(VGG_WIDTHS[depth]):
      mods = []
      for w in widths:
        mods += [_conv(cin, w, 3, bias=True), _bn(w), nn.ReLU()]
        cin = w
        self.tap(mods[-1], f"stage{g + 1}.block{len(mods) // 3}")
      mods = mods[:-1]  # the group's last ReLU runs in forward, after the block
      self.tap(mods[-1], f"stage{g + 1}.preact")
      out = nn.Identity()
      self.tap(out, f"stage{g + 1}.block{len(widths)}", f"stage{g + 1}.out")
      self.outs.append(out)
      setattr(self, f"block{g}", nn.Sequential(*mods))
    self.classifier = nn.Linear(512, num_classes)
    self.pooled = nn.Identity()
    self.tap(self.pooled, "pooled")

  def forward(self, x):
    big = x.shape[2] >= 64
    for g in range(5):
      if 0 < g < 4 or (g == 4 and big):
        x = F.max_pool2d(x, 2, 2)
      x = self.outs[g](F.relu(getattr(self, f"block{g}")(x)))
    return self.classifier(self.pooled(x.mean((2, 3))))


# MobileNetV2 (RepDistiller "mobile_half" layout).

class InvRes(nn.Module):

  def __init__(self, cin, cout, stride, t):
    super().__init__()
    h = cin * t
    self.residual = stride == 1 and cin == cout
    self.conv = nn.Sequential(
        _conv(cin, h, 1), _bn(h), nn.ReLU(), _conv(h, h, 3, stride, groups=h), _bn(h),
        nn.ReLU(), _conv(h, cout, 1), _bn(cout))

  def forward(self, x):
    return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(Tapped):
  ROWS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
  STAGE_OF_ROW = (1, 1, 2, 3, 3, 4, 4)

  def __init__(self, num_classes, width=0.5):
    super().__init__()
    cin = int(32 * width)
    self.conv1 = nn.Sequential(_conv(3, cin, 3, 2), _bn(cin), nn.ReLU())
    self.tap(self.conv1, "stem")
    self.blocks = nn.ModuleList()
    counts = {}
    for row, (t, c, n, s) in enumerate(self.ROWS):
      seq = []
      stage = self.STAGE_OF_ROW[row]
      for k in range(n):
        seq.append(InvRes(cin, int(c * width), s if k == 0 else 1, t))
        cin = int(c * width)
        counts[stage] = counts.get(stage, 0) + 1
        self.tap(seq[-1], f"stage{stage}.block{counts[stage]}")
      if row == len(self.ROWS) - 1 or self.STAGE_OF_ROW[row + 1] != stage:
        self.tap(seq[-1], f"stage{stage}.preact", f"stage{stage}.out")
      self.blocks.append(nn.Sequential(*seq))
    self.conv2 = nn.Sequential(_conv(cin, 1280, 1), _bn(1280), nn.ReLU())
    self.classifier = nn.Sequential(nn.Linear(1280, num_classes))
    self.pooled = nn.Identity()
    self.tap(self.pooled, "pooled")

  def forward(self, x):
    x = self.conv1(x)
    for b in self.blocks:
      x = b(x)
    return self.classifier(self.pooled(self.conv2(x).mean((2, 3))))


# ShuffleNet V1 (groups 3) and V2 (1x).

class ShuffleV1Unit(nn.Module):

  def __init__(self, cin, cout, stride, groups):
    super().__init__()
    self.stride = stride
    branch = cout - cin if stride == 2 else cout
    mid = branch // 4
    self.g1 = 1 if cin == 24 else groups
    self.conv1, self.bn1 = _conv(cin, mid, 1, groups=self.g1), _bn(mid)
    self.conv2, self.bn2 = _conv(mid, mid, 3, stride, groups=mid), _bn(mid)
    self.conv3, self.bn3 = _conv(mid, branch, 1, groups=groups), _bn(branch)
    self.preact = nn.Identity()

  def forward(self, x):
    y = shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
    y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
    if self.stride == 2:
      p = torch.cat([y, F.avg_pool2d(x, 3, 2, 1)], 1)
    else:
      p = y + x
    return F.relu(self.preact(p))


class ShuffleV2Down(nn.Module):

  def __init__(self, cin, cout):
    super().__init__()
    mid = cout // 2
    self.conv1, self.bn1 = _conv(cin, cin, 3, 2, groups=cin), _bn(cin)
    self.conv2, self.bn2 = _conv(cin, mid, 1), _bn(mid)
    self.conv3, self.bn3 = _conv(cin, mid, 1), _bn(mid)
    self.conv4, self.bn4 = _conv(mid, mid, 3, 2, groups=mid), _bn(mid)
    self.conv5, self.bn5 = _conv(mid, mid, 1), _bn(mid)

  def forward(self, x):
    left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
    return shuffle(torch.cat([left, F.relu(self.bn5(self.conv5(right)))], 1), 2)


class ShuffleV2Unit(nn.Module):

  def __init__(self, c):
    super().__init__()
    h = c // 2
    self.conv1, self.bn1 = _conv(h, h, 1), _bn(h)
    self.conv2, self.bn2 = _conv(h, h, 3, groups=h), _bn(h)
    self.conv3, self.bn3 = _conv(h, h, 1), _bn(h)
    self.preact = nn.Identity()

  def forward(self, x):
    x1, x2 = x.chunk(2, 1)
    y = self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))))
    self.preact(shuffle(torch.cat([x1, y], 1), 2))  # afd_jax's shuffled preact
    return shuffle(torch.cat([x1, F.relu(y)], 1), 2)


class ShuffleNet(Tapped):

  def __init__(self, version, num_classes):
    super().__init__()
    self.version = version
    self.conv1, self.bn1 = _conv(3, 24, 1), _bn(24)
    self.stem = nn.Identity()
    self.tap(self.stem, "stem")
    cin = 24
    widths, sizes = ((240, 480, 960), (4, 8, 4)) if version == 1 else (
        (116, 232, 464), (4, 8, 4))
    for i, (w, n) in enumerate(zip(widths, sizes), 1):
      if version == 1:
        units = [ShuffleV1Unit(cin if j == 0 else w, w, 2 if j == 0 else 1, 3)
                 for j in range(n)]
      else:
        units = [ShuffleV2Down(cin, w)] + [ShuffleV2Unit(w) for _ in range(n - 1)]
      for j, u in enumerate(units, 1):
        self.tap(u, f"stage{i}.block{j}")
      self.tap(units[-1], f"stage{i}.out")
      self.tap(units[-1].preact, f"stage{i}.preact")
      setattr(self, f"layer{i}", nn.Sequential(*units))
      cin = w
    if version == 2:
      self.conv2, self.bn2 = _conv(cin, 1024, 1), _bn(1024)
      cin = 1024
    self.linear = nn.Linear(cin, num_classes)
    self.pooled = nn.Identity()
    self.tap(self.pooled, "pooled")

  def forward(self, x):
    x = self.stem(F.relu(self.bn1(self.conv1(x))))
    x = self.layer3(self.layer2(self.layer1(x)))
    if self.version == 2:
      x = F.relu(self.bn2(self.conv2(x)))
    return self.linear(self.pooled(x.mean((2, 3))))


def build(name: str, num_classes: int, **kwargs) -> Tapped:
  """The PyTorch model of afd_jax's zoo name `name`."""
  if name.endswith("_imagenet"):
    return torchvision_resnet(int(name[len("resnet"):-len("_imagenet")]), num_classes)
  if name in RESNETV2_DEPTHS:
    return resnetv2(RESNETV2_DEPTHS[name], num_classes)
  if name in ("resnet8x4", "resnet32x4"):
    return cifar_resnet(int(name[len("resnet"):-2]), num_classes, wide=True)
  if name.startswith("resnet"):
    return cifar_resnet(int(name[len("resnet"):]), num_classes)
  if name.startswith("wrn_"):
    _, depth, k = name.split("_")
    return WideResNet(int(depth), int(k), num_classes, **kwargs)
  if name.startswith("vgg"):
    return VGG(int(name[3:]), num_classes)
  if name == "MobileNetV2":
    return MobileNetV2(num_classes)
  return ShuffleNet(1 if name == "ShuffleV1" else 2, num_classes)
