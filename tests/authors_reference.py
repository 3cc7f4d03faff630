"""An independent re-implementation of the authors' CBAM-ResNet layout (reference-facts §2).

Used only by the tests: module and parameter names reproduce the keys of the authors' released
ImageNet checkpoint (``conv1``, ``layer1.0.cbam.ChannelGate.mlp.1.weight``, ...), and the forward
pass is the straightforward eager computation, so the converter and our CBAM can be checked
against it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Flatten(nn.Module):

    def forward(self, x):
        return x.view(x.size(0), -1)


class ChannelGate(nn.Module):

    def __init__(self, channels, ratio=16):
        super().__init__()
        # Index 0 is the Flatten, so the Linear layers are mlp.1 and mlp.3 as in the checkpoint.
        self.mlp = nn.Sequential(Flatten(), nn.Linear(channels, channels // ratio), nn.ReLU(),
                                 nn.Linear(channels // ratio, channels))

    def forward(self, x):
        size = (x.size(2), x.size(3))
        att = self.mlp(F.avg_pool2d(x, size, stride=size))
        att = att + self.mlp(F.max_pool2d(x, size, stride=size))
        return x * torch.sigmoid(att)[:, :, None, None].expand_as(x)


class BasicConv(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x):
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):

    def __init__(self):
        super().__init__()
        self.spatial = BasicConv()

    def forward(self, x):
        pooled = torch.cat([torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class AuthorsCBAM(nn.Module):

    def __init__(self, channels, ratio=16):
        super().__init__()
        self.ChannelGate = ChannelGate(channels, ratio)
        self.SpatialGate = SpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.cbam = AuthorsCBAM(planes)

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.cbam(self.bn2(self.conv2(out)))
        return F.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample
        self.cbam = AuthorsCBAM(planes * 4)

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.cbam(self.bn3(self.conv3(out)))
        return F.relu(out + residual)


ARCH = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3))}


class AuthorsCBAMResNet(nn.Module):
    """ImageNet CBAM-ResNet; ``forward`` returns the four stage outputs."""

    def __init__(self, depth, num_classes=1000):
        super().__init__()
        block, counts = ARCH[depth]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        for i, count in enumerate(counts):
            setattr(self, f'layer{i + 1}',
                    self._make_layer(block, 64 * 2**i, count, 1 if i == 0 else 2))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, count, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f'layer{i}')(x)
            outs.append(x)
        return outs


def randomize_(model, seed=0):
    """Random weights and BN statistics in realistic ranges (fan-in scaled weights, so the
    activations stay of order one), so an equivalence test exercises every tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith('num_batches_tracked'):
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if tensor.dim() > 1:  # conv / linear weights
                values = noise * (1.0 / tensor[0].numel())**0.5
            elif name.endswith('running_var'):
                values = 1.0 + 0.2 * noise.abs()
            elif name.endswith('.weight'):  # norm scales
                values = 1.0 + 0.1 * noise
            else:  # biases and running means
                values = 0.1 * noise
            tensor.copy_(values)
    return model


def save_authors_checkpoint(model, path):
    """Write ``model`` as the authors' training script did (DataParallel keys, extra fields)."""
    state = {f'module.{k}': v for k, v in model.state_dict().items()}
    torch.save({'epoch': 100, 'arch': 'resnet', 'state_dict': state,
                'best_prec1': torch.tensor(77.62), 'optimizer': {'state': {}, 'param_groups': []}},
               path)
