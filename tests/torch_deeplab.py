"""Compact PyTorch DeepLabV3+ (output stride 16) of the TaT segmentation release.

An independent re-statement of jfzhang95/pytorch-deeplab-xception as the TaT-seg release
uses it (backbones ``resnet101``, ``resnet18``, ``mobilenet``), with the release's
``state_dict`` keys (``backbone.*``, ``aspp.*``, ``decoder.*``; the MobileNet backbone also
lists its blocks under ``low_level_features``/``high_level_features``, as the release's
does). ``extract_feature(x)`` returns the release's feature list and logits;
``head_modules()``/``backbone_modules()`` are the modules of the release's
``get_10x_lr_params``/``get_1x_lr_params``. BatchNorm is plain ``nn.BatchNorm2d`` (the
release's SyncBN computes the same on one device).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

# Feature names of afd_jax (`afd_jax/models/deeplab.py`) for the extract_feature list.
FEATURE_NAMES = ("stage1.out", "stage2.out", "stage3.out", "stage4.out", "aspp", "decoder")


def _up(x, size):
  return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# ResNet backbone: every block applies ReLU to its input and returns the raw residual sum.

class _Basic(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride, dilation, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 3, stride, dilation, dilation, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    x = F.relu(x)
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return y + (self.downsample(x) if self.downsample is not None else x)


class _Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, dilation, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    x = F.relu(x)
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return y + (self.downsample(x) if self.downsample is not None else x)


class ResNetBackbone(nn.Module):

  def __init__(self, block, sizes):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    cin = 64
    # OS16: layer4 keeps stride 1, dilation 2; ResNet-101's layer4 is the multi-grid
    # unit (1, 2, 4) x 2 of 3 blocks, ResNet-18's a plain 2-block layer at dilation 2.
    dilations = ([1] * sizes[0], [1] * sizes[1], [1] * sizes[2],
                 [2, 4, 8] if block is _Bottleneck else [2] * sizes[3])
    for i, (planes, stride, dils) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 1),
                                                   dilations), 1):
      cout = planes * block.expansion
      down = None
      if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                             nn.BatchNorm2d(cout))
      blocks = [block(cin, planes, stride, dils[0], down)]
      blocks += [block(cout, planes, 1, d, None) for d in dils[1:]]
      cin = cout
      setattr(self, f"layer{i}", nn.Sequential(*blocks))

  def extract_feature(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    feats = []
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
      feats.append(x)
    return feats, F.relu(x), F.relu(feats[0])

  def forward(self, x):
    return self.extract_feature(x)[1:]


# MobileNetV2 (width 1, ReLU6) with the release's `fixed_padding` of each block's input.

class _InvRes(nn.Module):

  def __init__(self, cin, cout, stride, dilation, t):
    super().__init__()
    h = cin * t
    self.dilation = dilation
    self.residual = stride == 1 and cin == cout
    dw = [nn.Conv2d(h, h, 3, stride, 0, dilation, groups=h, bias=False), nn.BatchNorm2d(h),
          nn.ReLU6()]
    pw = [nn.Conv2d(h, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    expand = [] if t == 1 else [nn.Conv2d(cin, h, 1, bias=False), nn.BatchNorm2d(h),
                                nn.ReLU6()]
    self.conv = nn.Sequential(*expand, *dw, *pw)

  def forward(self, x):
    pad = self.dilation  # (3 + 2 (d - 1) - 1) / 2 on each side
    y = self.conv(F.pad(x, (pad, pad, pad, pad)))
    return x + y if self.residual else y


class MobileNetBackbone(nn.Module):
  ROWS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))

  def __init__(self):
    super().__init__()
    layers = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                            nn.ReLU6())]
    cin, current_stride, rate = 32, 2, 1
    for t, c, n, s in self.ROWS:
      if current_stride == 16:  # the release's order: a row dilates at the old rate
        stride, dilation, rate = 1, rate, rate * s
      else:
        stride, dilation, current_stride = s, 1, current_stride * s
      for k in range(n):
        layers.append(_InvRes(cin, c, stride if k == 0 else 1, dilation, t))
        cin = c
    self.features = nn.Sequential(*layers)
    # Registered twice, as in the release: their keys appear in the state_dict too.
    self.low_level_features = self.features[0:4]
    self.high_level_features = self.features[4:]

  def forward(self, x):
    low = self.low_level_features(x)
    return self.high_level_features(low), low

  def extract_feature(self, x):
    f1 = self.features[0:4](x)
    f2 = self.features[4:7](f1)
    f3 = self.features[7:14](f2)
    f4 = self.features[14:](f3)
    # The next block's expansion conv + BN once more, on the unpadded input.
    taps = [self.features[i].conv[0:2](f) for i, f in ((4, f1), (7, f2), (14, f3))]
    return taps + [f4], f4, f1


class _ASPPBranch(nn.Module):

  def __init__(self, cin, k, dilation):
    super().__init__()
    self.atrous_conv = nn.Conv2d(cin, 256, k, 1, 0 if k == 1 else dilation, dilation,
                                 bias=False)
    self.bn = nn.BatchNorm2d(256)

  def forward(self, x):
    return F.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.aspp1 = _ASPPBranch(cin, 1, 1)
    self.aspp2 = _ASPPBranch(cin, 3, 6)
    self.aspp3 = _ASPPBranch(cin, 3, 12)
    self.aspp4 = _ASPPBranch(cin, 3, 18)
    self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                         nn.Conv2d(cin, 256, 1, bias=False),
                                         nn.BatchNorm2d(256), nn.ReLU())
    self.conv1 = nn.Conv2d(1280, 256, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(256)
    self.dropout = nn.Dropout(0.5)

  def extract_feature(self, x):
    branches = [self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x)]
    branches.append(_up(self.global_avg_pool(x), x.shape[2:]))
    feat = self.bn1(self.conv1(torch.cat(branches, 1)))
    return feat, F.relu(feat)

  def forward(self, x):
    return self.dropout(self.extract_feature(x)[1])


class Decoder(nn.Module):

  def __init__(self, num_classes, low_level_channels):
    super().__init__()
    self.conv1 = nn.Conv2d(low_level_channels, 48, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(48)
    self.last_conv = nn.Sequential(
        nn.Conv2d(304, 256, 3, 1, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(256, 256, 3, 1, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
        nn.Dropout(0.1),
        nn.Conv2d(256, num_classes, 1))

  def extract_feature(self, x, low):
    low = F.relu(self.bn1(self.conv1(low)))
    x = torch.cat([_up(x, low.shape[2:]), low], 1)
    feat = self.last_conv[0:6](x)
    return feat, self.last_conv[6:](feat)


class DeepLab(nn.Module):
  """``forward`` is the release's forward, ``extract_feature`` its distillation path."""

  def __init__(self, backbone, num_classes=21):
    super().__init__()
    if backbone == "resnet101":
      self.backbone, high, low = ResNetBackbone(_Bottleneck, (3, 4, 23, 3)), 2048, 256
    elif backbone == "resnet18":
      self.backbone, high, low = ResNetBackbone(_Basic, (2, 2, 2, 2)), 512, 64
    else:
      self.backbone, high, low = MobileNetBackbone(), 320, 24
    self.aspp = ASPP(high)
    self.decoder = Decoder(num_classes, low)

  def extract_feature(self, x):
    feats, high, low = self.backbone.extract_feature(x)
    aspp_feat, y = self.aspp.extract_feature(high)
    dec_feat, y = self.decoder.extract_feature(y, low)
    return feats + [aspp_feat, dec_feat], _up(y, x.shape[2:])

  def forward(self, x):
    high, low = self.backbone(x)
    _, y = self.decoder.extract_feature(self.aspp(high), low)
    return _up(y, x.shape[2:])

  def backbone_modules(self):
    return [self.backbone]

  def head_modules(self):
    return [self.aspp, self.decoder]


BACKBONES = {"deeplabv3p_resnet101": "resnet101", "deeplabv3p_resnet18": "resnet18",
             "deeplabv3p_mobilenetv2": "mobilenet"}


def build(name: str, num_classes: int) -> DeepLab:
  """The PyTorch model of afd_jax's segmentation name `name`."""
  return DeepLab(BACKBONES[name], num_classes)


def lr_group_sizes(model: DeepLab) -> tuple[int, int]:
  """Parameter counts of the release's 1x (backbone) and 10x (ASPP + decoder) groups.

  As ``get_1x_lr_params``/``get_10x_lr_params``: the parameters of the Conv2d and
  BatchNorm modules under each part.
  """
  def count(modules):
    return sum(p.numel() for part in modules for m in part.modules()
               if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
               for p in m.parameters(recurse=False))
  return count(model.backbone_modules()), count(model.head_modules())
