"""Convert the authors' ImageNet CBAM-ResNet checkpoint into a ``CBAMResNet`` backbone checkpoint.

    python tools/convert_official_cbam.py RESNET50_CBAM.pth.tar cbam_r50_backbone.pth [--depth 50]
    python tools/convert_official_cbam.py RESNET50_CBAM.pth.tar cbam_r50_in1k.pth --classifier

The result loads with ``init_cfg=dict(type='Pretrained', checkpoint=DST)`` into
``CBAMResNet(depth=N)`` with no missing or unexpected keys. With ``--classifier`` it is instead the
whole ImageNet classifier as mmpretrain's ``ImageClassifier`` of
``configs/imagenet/resnetN-cbam_*`` holds it (the backbone under ``backbone.``, the authors' fc as
``head.fc``), for mmpretrain's test tool. The source is read with ``weights_only=True`` (no
pickled code runs) and DST is written atomically.
"""
import argparse
import io
import os
import sys
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch

from cbam_mmdet.models.backbones.resnet_checkpoints import (describe_modules, foreign_module_keys,
                                                            has_bottlenecks, resnet_depth,
                                                            resnet_stage_blocks)
from cbam_mmdet.runtime.atomic_files import write_atomic
from cbam_mmdet.runtime.checkpoints import (CheckpointError, read_checkpoint, state_dict_mismatch,
                                            state_dict_of)

# The authors' CBAM names -> ours (the rest of a torchvision-style ResNet is named alike).
KEY_RENAMES = (
    ('.cbam.ChannelGate.mlp.1.', '.cbam.channel_gate.mlp.0.'),
    ('.cbam.ChannelGate.mlp.3.', '.cbam.channel_gate.mlp.2.'),
    ('.cbam.SpatialGate.spatial.conv.', '.cbam.spatial_gate.spatial.conv.'),
    ('.cbam.SpatialGate.spatial.bn.', '.cbam.spatial_gate.spatial.bn.'),
)
DROPPED_PREFIXES = ('fc.', )  # the ImageNet classifier, not part of a detection backbone

# Every refusal names the file and the problem (the shared checkpoint checks raise it too).
ConversionError = CheckpointError


def load_authors_state_dict(path: str) -> Dict[str, torch.Tensor]:
    try:
        state = state_dict_of(read_checkpoint(path), path)
    except FileNotFoundError as err:
        raise ConversionError(f'{path}: no such file') from err
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                       for k, v in state.items())


def infer_depth(state: Dict[str, torch.Tensor], path: str) -> int:
    blocks = resnet_stage_blocks(state)
    if len(blocks) < 4:
        raise ConversionError(f'{path}: not a ResNet checkpoint: no layer{len(blocks) + 1}.* '
                              f'keys')
    depth = resnet_depth(blocks, has_bottlenecks(state))
    if depth is None:
        raise ConversionError(f'{path}: blocks per stage {blocks} match no ResNet depth')
    return depth


def convert(state: Dict[str, torch.Tensor], path: str,
            depth: Optional[int] = None) -> Tuple[int, 'OrderedDict[str, torch.Tensor]']:
    """Rename the authors' keys and check them against a freshly built ``CBAMResNet``.

    Returns the depth and the converted state dict, in ``CBAMResNet``'s key order.
    """
    from cbam_mmdet.models import CBAMResNet

    found = infer_depth(state, path)
    if depth is not None and depth != found:
        raise ConversionError(f'{path}: holds a ResNet-{found}, but --depth {depth} was given')
    foreign = foreign_module_keys(state)
    if foreign:
        raise ConversionError(
            f'{path}: holds {len(foreign)} tensors of modules a CBAM ResNet does not have '
            f'({describe_modules(foreign)}): another attention network (BAM, SE, ...), not '
            f'CBAM. Neither this converter nor a Pretrained init_cfg can load it into '
            f'CBAMResNet: mmengine would drop those tensors')
    if not any('.cbam.' in k for k in state):
        raise ConversionError(
            f'{path}: not a CBAM ResNet: it has no CBAM keys (e.g. layer1.0.cbam.ChannelGate.'
            f'mlp.1.weight). A plain ResNet needs no conversion: load it with '
            f'init_cfg=dict(type="Pretrained", ...); CBAMResNet then starts as exactly that '
            f'network (start_from_parent="auto").')
    converted = OrderedDict()
    for key, value in state.items():
        if key.startswith(DROPPED_PREFIXES):
            continue
        for old, new in KEY_RENAMES:
            key = key.replace(old, new)
        converted[key] = value
    # Checkpoints from PyTorch < 0.4.1 have no BN num_batches_tracked; add what BN expects.
    for key in list(converted):
        if key.endswith('.running_mean'):
            counter = key[:-len('running_mean')] + 'num_batches_tracked'
            converted.setdefault(counter, torch.tensor(0, dtype=torch.long))

    expected = CBAMResNet(depth=found).state_dict()
    problems = state_dict_mismatch(converted, expected)
    if problems:
        raise ConversionError(f'{path}: not the authors\' CBAM ResNet-{found} layout: '
                              + '; '.join(problems))
    return found, OrderedDict((k, converted[k]) for k in expected)


def classifier_state_dict(backbone: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor],
                          path: str, depth: int) -> 'OrderedDict[str, torch.Tensor]':
    """The state dict of the mmpretrain ``ImageClassifier`` (global average pooling neck,
    ``LinearClsHead``) holding the converted ``backbone`` and the authors' fc from ``state``."""
    in_channels = 512 * (4 if depth >= 50 else 1)
    weight, bias = state.get('fc.weight'), state.get('fc.bias')
    if weight is None or bias is None:
        raise ConversionError(f'{path}: has no ImageNet classifier (fc.weight, fc.bias); '
                              f'--classifier needs the whole network')
    if weight.dim() != 2 or weight.shape[1] != in_channels or bias.shape != weight.shape[:1]:
        raise ConversionError(
            f'{path}: fc of shape {tuple(weight.shape)} / {tuple(bias.shape)} does not classify '
            f'the {in_channels} channels of a ResNet-{depth}')
    classifier = OrderedDict((f'backbone.{k}', v) for k, v in backbone.items())
    classifier['head.fc.weight'], classifier['head.fc.bias'] = weight, bias
    return classifier


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help="the authors' checkpoint, e.g. RESNET50_CBAM_new_name_wrap.pth")
    parser.add_argument('dst', help='where to write the backbone (or classifier) checkpoint')
    parser.add_argument('--depth', type=int, choices=(18, 34, 50, 101, 152),
                        help='expected depth; inferred from the checkpoint when omitted')
    parser.add_argument('--classifier', action='store_true',
                        help='write the whole classifier (backbone and fc) as an mmpretrain '
                             'ImageClassifier checkpoint instead of the backbone alone')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        state = load_authors_state_dict(args.src)
        depth, converted = convert(state, args.src, args.depth)
        saved = (classifier_state_dict(converted, state, args.src, depth) if args.classifier
                 else converted)
    except ConversionError as err:
        print(f'convert_official_cbam: error: {err}', file=sys.stderr)
        return 1
    arch = f'ImageClassifier(CBAMResNet-{depth})' if args.classifier else f'CBAMResNet-{depth}'
    buffer = io.BytesIO()
    torch.save({'state_dict': saved, 'meta': dict(source=os.path.basename(args.src), arch=arch)},
               buffer)
    write_atomic(args.dst, buffer.getvalue())
    num_cbam = len({k.split('.cbam.')[0] for k in converted if '.cbam.' in k})
    num_params = sum(v.numel() for k, v in converted.items()
                     if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
    fc = (f'{state["fc.weight"].shape[0]}-way fc kept as head.fc' if args.classifier
          else 'fc dropped')
    print(f'converted CBAM ResNet-{depth}: {len(converted)} tensors, {num_cbam} CBAM modules, '
          f'{num_params / 1e6:.2f}M backbone parameters ({fc}) -> {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
