"""The rival: plain PyTorch versions of the benchmarked networks, written the
way torchvision writes them (in-place ReLU, nn.Sequential), with mmcls
parameter names so a dmcp state dict loads into them unchanged."""
import numpy as np
import torch
import torch.nn as nn


def _conv_bn(cin, cout, k, stride=1, groups=1):
    return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)


class Basic(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, planes * 4, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, depth, in_channels=3, small_input=False):
        super().__init__()
        if small_input:
            block, exp, blocks, base = Basic, 1, ((depth - 2) // 6,) * 3, 16
            self.conv1, self.bn1 = _conv_bn(in_channels, base, 3)
        else:
            block, exp, blocks, base = {18: (Basic, 1, (2, 2, 2, 2)),
                                        50: (Bottleneck, 4, (3, 4, 6, 3))}[depth] + (64,)
            self.conv1 = nn.Conv2d(in_channels, base, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        cin = base
        self.layers = []
        for s, n in enumerate(blocks):
            planes = base * 2 ** s
            layer = []
            for b in range(n):
                layer.append(block(cin, planes, 2 if s > 0 and b == 0 else 1))
                cin = planes * exp
            setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
            self.layers.append(f"layer{s + 1}")
        self.out_channels = cin

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        for name in self.layers:
            x = getattr(self, name)(x)
        return x


class ConvModule(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, act=True):
        super().__init__()
        self.conv, self.bn = _conv_bn(cin, cout, k, stride, groups)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hid = int(round(cin * t))
        mods = [ConvModule(cin, hid, 1)] if t != 1 else []
        mods += [ConvModule(hid, hid, 3, stride, groups=hid), ConvModule(hid, cout, 1, act=False)]
        self.conv = nn.Sequential(*mods)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self):
        super().__init__()
        self.conv1 = ConvModule(3, 32, 3, 2)
        cin = 32
        for s, (t, c, n, stride) in enumerate(self.SETTINGS):
            blocks = []
            for b in range(n):
                blocks.append(InvertedResidual(cin, c, stride if b == 0 else 1, t))
                cin = c
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.conv2 = ConvModule(cin, 1280, 1)
        self.out_channels = 1280

    def forward(self, x):
        x = self.conv1(x)
        for s in range(7):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.conv2(x)


class Head(nn.Module):
    def __init__(self, cin, num_classes):
        super().__init__()
        self.fc = nn.Linear(cin, num_classes)


class Classifier(nn.Module):
    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.head = Head(backbone.out_channels, num_classes)

    def forward(self, x):
        return self.head.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.backbone(x), 1), 1))


def build(arch):
    """'resnet50' | 'resnet18' | 'mbv2' | 'resnet20' (1-channel 28x28 input)."""
    if arch == "mbv2":
        return Classifier(MobileNetV2(), 1000)
    if arch == "resnet20":
        return Classifier(ResNet(20, in_channels=1, small_input=True), 10)
    return Classifier(ResNet(int(arch[6:])), 1000)


def load_from_dmcp(model, state):
    """Copy a dmcp state dict (mmcls names, numpy arrays) into the torch model."""
    own = model.state_dict()
    missing = set(own) - set(state)
    if missing:
        raise KeyError(f"dmcp state dict lacks {sorted(missing)[:5]}")
    model.load_state_dict({k: torch.from_numpy(np.array(state[k])).to(own[k].dtype) for k in own})
