"""Checks of a ResNet-family checkpoint against a CBAM backbone or shared head, before loading.

mmengine loads a ``Pretrained`` init checkpoint with ``strict=False``: a checkpoint of another
depth, architecture or layout only produces a log line listing keys, and the network trains from
a partly random start. :func:`check_pretrained_resnet` runs before mmengine loads the checkpoint of
one of our ResNet-family modules and turns every such case into an error that names the file, the
problem and the fix; it reads mmpretrain classifier checkpoints too (loaded with
``prefix='backbone.'``, their ``head.*`` keys unused).
"""
import os
import re
import warnings
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ...runtime.checkpoints import (CheckpointError, is_local, local_pretrained_cfgs,
                                    read_checkpoint, show_keys, state_dict_mismatch, state_dict_of)

# Blocks per stage -> ResNet depth; (3, 4, 6, 3) is depth 34 with basic blocks, 50 with
# bottlenecks (and ResNeXt shares the bottleneck depths).
BLOCKS_TO_DEPTH = {(2, 2, 2, 2): 18, (3, 4, 6, 3): None, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
DEFAULT_CBAM_CHECKPOINT = 'checkpoints/cbam_r50_backbone.pth'
CONVERTER_COMMAND = ('python tools/convert_official_cbam.py RESNET50_CBAM_new_name_wrap.pth '
                     '{dst}')
# Keys of the authors' CBAM code that the converter renames (``module.`` is DataParallel's).
AUTHORS_CBAM_KEYS = ('.cbam.ChannelGate.', '.cbam.SpatialGate.')
# The modules of a torchvision / mmdet ResNet (deep stem: ``stem``; classifier: ``fc``), and
# those of its blocks (mmdet names its norms bn1..bn3, as torchvision does).
RESNET_TOP_LEVEL = re.compile(r'conv1|bn1|stem|layer\d+|fc')
RESNET_BLOCK_PARTS = ('conv1', 'conv2', 'conv3', 'bn1', 'bn2', 'bn3', 'downsample', 'cbam')
BLOCK_KEY = re.compile(r'layer\d+\.\d+\.[^.]+\.')
# Model zoos mmengine resolves by name; they hold plain (ImageNet) ResNets only.
PLAIN_MODEL_ZOOS = ('torchvision://', 'open-mmlab://', 'openmmlab://', 'mmcls://',
                    'mmpretrain://')
# What the Pretrained weights of a CBAM module are (see check_pretrained_resnet).
CBAM, PLAIN, UNKNOWN = 'cbam', 'plain', 'unknown'


def stage_block_counts(keys: Iterable[str]) -> Dict[int, int]:
    """Blocks per stage of a ResNet-style state dict (``layer{i}.{j}.`` keys), by stage i."""
    ids: Dict[int, set] = {}
    for key in keys:
        match = re.match(r'layer(\d+)\.(\d+)\.', key)
        if match:
            ids.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return {stage: max(blocks) + 1 for stage, blocks in sorted(ids.items())}


def resnet_stage_blocks(keys: Iterable[str]) -> Tuple[int, ...]:
    """Blocks per stage from stage 1 up to the first stage without keys."""
    counts = stage_block_counts(keys)
    blocks = []
    while len(blocks) + 1 in counts:
        blocks.append(counts[len(blocks) + 1])
    return tuple(blocks)


def has_bottlenecks(keys: Iterable[str]) -> bool:
    """Whether a ResNet-style state dict has bottleneck blocks (a third conv per block)."""
    return any(re.match(r'layer\d+\.\d+\.conv3\.', key) for key in keys)


def resnet_depth(blocks: Tuple[int, ...], bottleneck: bool) -> Optional[int]:
    """The ResNet depth with these four stages' block counts and block type, or None."""
    if blocks not in BLOCKS_TO_DEPTH:
        return None
    depth = BLOCKS_TO_DEPTH[blocks]
    if depth is None:
        return 50 if bottleneck else 34
    return depth if bottleneck == (depth >= 50) else None


def foreign_module_keys(keys: Iterable[str], known_keys: Iterable[str] = ()) -> List[str]:
    """Keys of modules a (CBAM) ResNet does not have, e.g. BAM's ``bam1.*`` or an SE block's
    ``layer1.0.se.*``.

    Args:
        keys (Iterable[str]): State-dict keys (``module.`` and any prefix stripped).
        known_keys (Iterable[str]): The keys of the module being loaded (its norms' names, its
            plugins' names are then known too).
    """
    known_keys = list(known_keys)
    tops = {k.split('.')[0] for k in known_keys}
    parts = set(RESNET_BLOCK_PARTS) | {
        k.split('.')[2] for k in known_keys if BLOCK_KEY.match(k)}
    return [key for key in keys
            if not (RESNET_TOP_LEVEL.fullmatch(key.split('.')[0]) or key.split('.')[0] in tops)
            or (BLOCK_KEY.match(key) and key.split('.')[2] not in parts)]


def describe_modules(keys: Sequence[str]) -> str:
    """``bam1.* (32 tensors), layer1.0.se.* (4 tensors)``: the modules the keys belong to."""
    counts: Dict[str, int] = {}
    for key in keys:
        module = '.'.join(key.split('.')[:3 if BLOCK_KEY.match(key) else 1])
        counts[module] = counts.get(module, 0) + 1
    return show_keys([f'{module}.* ({n} tensor{"s" if n != 1 else ""})'
                      for module, n in counts.items()], limit=4)


def pretrained_weights_kind(init_cfg) -> Optional[str]:
    """What the ``Pretrained`` checkpoints of ``init_cfg`` are, before they are read: None (no
    ``Pretrained`` entry), ``PLAIN`` for model zoos (they hold plain ResNets only), ``UNKNOWN``
    for downloads; local files are read by :func:`check_pretrained_resnet`."""
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    checkpoints = [str(cfg.get('checkpoint')) for cfg in cfgs
                   if isinstance(cfg, Mapping) and cfg.get('type') == 'Pretrained']
    remote = [c for c in checkpoints if not is_local(c)]
    if not remote:
        return None
    return PLAIN if all(c.startswith(PLAIN_MODEL_ZOOS) for c in remote) else UNKNOWN


def check_pretrained_resnet(module: nn.Module, blocks: Iterable[nn.Module],
                            stage_blocks: Mapping[int, int], depth: int, bottleneck: bool,
                            start_from_parent: Union[bool, str] = 'auto') -> Optional[str]:
    """Check every local ``Pretrained`` checkpoint in ``module.init_cfg`` before mmengine loads
    it with ``strict=False``, and say what weights the module will get.

    Refused with an error naming the file: missing (for the authors' default checkpoint, with
    the converter command), empty, corrupt or truncated, hostile; no state dict; the authors'
    unconverted CBAM checkpoint; a checkpoint with no key of ``module`` (another architecture, or
    a whole detector without ``prefix``); keys of modules a ResNet does not have (BAM, SE, ...);
    other blocks per stage or another block type (another depth); missing, unexpected or
    misshapen keys.

    Args:
        module (nn.Module): A ResNet-family module with CBAM (backbone or shared head).
        blocks (Iterable[nn.Module]): Its residual blocks (their plugins and DCN offsets may be
            absent from a checkpoint, as mmdet allows).
        stage_blocks (Mapping[int, int]): Number of blocks of each stage the module holds, by
            0-based stage index.
        depth (int): The module's ResNet depth.
        bottleneck (bool): Whether its blocks are bottlenecks.
        start_from_parent (bool or str): The module's setting; a plain mmpretrain classifier
            for a CBAM module is refused unless it is True (a -cbam classifier was probably
            meant).

    Returns:
        str or None: ``CBAM`` if a checkpoint holds CBAM weights, ``UNKNOWN`` if one is a
        download (not read here), ``PLAIN`` if all are plain ResNets, None without
        ``Pretrained`` checkpoints.
    """
    kinds = {pretrained_weights_kind(module.init_cfg)} - {None}
    cfgs = local_pretrained_cfgs(module.init_cfg)
    if cfgs:
        expected = module.state_dict()
        plugin_names = {name for block in blocks for attr in
                        ('after_conv1_plugin_names', 'after_conv2_plugin_names',
                         'after_conv3_plugin_names') for name in getattr(block, attr, [])}
        for cfg in cfgs:
            path = os.path.expanduser(cfg['checkpoint'])
            kinds.add(_check_one(path, cfg.get('prefix'), module, expected, plugin_names,
                                 stage_blocks, depth, bottleneck, start_from_parent))
    for kind in (CBAM, UNKNOWN, PLAIN):
        if kind in kinds:
            return kind
    return None


def resolve_start_from_parent(owner: str, setting: Union[bool, str], weights: Optional[str],
                              frozen_stages: int = -1) -> bool:
    """Whether a CBAM module starts as its plain parent (see ``CBAMBackboneMixin``).

    ``'auto'`` does exactly when the ``Pretrained`` weights are a plain ResNet: its CBAMs would
    otherwise keep their random init inside pretrained features, and those of frozen stages
    would keep it for the whole training. A download that may or may not hold CBAM weights is
    left as it loads, with a warning asking for an explicit setting.

    Args:
        owner (str): The module, for the warnings.
        setting (bool or str): ``start_from_parent``: True, False or 'auto'.
        weights (str, optional): What :func:`check_pretrained_resnet` returned.
        frozen_stages (int): The module's frozen stages (-1: none), for the warning.
    """
    if setting == 'auto':
        if weights == UNKNOWN:
            warnings.warn(
                f'{owner}: start_from_parent=\'auto\' cannot tell whether the downloaded '
                f'Pretrained checkpoint holds CBAM weights, so every CBAM keeps what loads (its '
                f'random init for a plain ResNet). Set start_from_parent=True for plain-ResNet '
                f'weights, False for CBAM weights.', UserWarning, stacklevel=3)
        return weights == PLAIN
    if not setting and weights == PLAIN:
        frozen = (f' The {frozen_stages} frozen stage(s) keep their random CBAMs for the whole '
                  f'training (frozen_stages={frozen_stages}).' if frozen_stages > 0 else '')
        warnings.warn(
            f'{owner}: the Pretrained checkpoint is a plain ResNet without CBAM weights and '
            f'start_from_parent=False: every CBAM keeps its random init and attenuates its '
            f'residual branch (to about a quarter), distorting the pretrained features.{frozen} '
            f'Leave start_from_parent at its default \'auto\' (or set True) to start from '
            f'exactly the plain network.', UserWarning, stacklevel=3)
    return bool(setting)


def check_start_from_parent(owner: str, setting) -> None:
    if not (isinstance(setting, bool) or setting == 'auto'):
        raise ValueError(f"{owner}: start_from_parent must be True, False or 'auto', got "
                         f'{setting!r}')


def _check_one(path, prefix, module, expected, plugin_names, stage_blocks, depth, bottleneck,
               start_from_parent) -> str:
    """Check one local checkpoint; return ``CBAM`` or ``PLAIN``."""
    owner = type(module).__name__
    hint = ''
    if os.path.basename(path) == os.path.basename(DEFAULT_CBAM_CHECKPOINT):
        hint = (f". Make it from the authors' ImageNet CBAM-ResNet-50 weights with\n    "
                f'{CONVERTER_COMMAND.format(dst=path)}\n(see README, "Initialisation and '
                f'pretrained weights"), or point CBAM_R50_CHECKPOINT at a converted file')
    state = state_dict_of(read_checkpoint(path, missing_hint=hint), path)
    where = f'checkpoint {path} (init_cfg of {owner})'
    classifier = is_classifier_state(state)

    if prefix:
        dotted = prefix if prefix.endswith('.') else prefix + '.'
        kept = {k[len(dotted):]: v for k, v in state.items() if k.startswith(dotted)}
        if not kept:
            raise CheckpointError(f'{where}: no key starts with prefix={prefix!r}; its keys '
                                  f'start with {show_keys(_top_level(state))}')
        state = kept
    else:  # mmengine strips DataParallel's prefix
        state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}

    if any(part in k for k in state for part in AUTHORS_CBAM_KEYS):
        raise CheckpointError(
            f"{where}: is the authors' unconverted CBAM checkpoint (keys like "
            f"{next(k for k in state if '.cbam.' in k)}); convert it once with\n    "
            f'{CONVERTER_COMMAND.format(dst=DEFAULT_CBAM_CHECKPOINT)}\nand load the result')

    own_top = {k.split('.')[0] for k in expected}
    relevant = {k: v for k, v in state.items() if k.split('.')[0] in own_top}
    if not relevant:
        raise CheckpointError(f'{where}: ' + (CLASSIFIER_WITHOUT_PREFIX if classifier else
                                              _foreign_checkpoint_problem(state, expected)))
    foreign = foreign_module_keys(state, expected)
    if foreign:
        raise CheckpointError(
            f'{where}: holds {len(foreign)} tensors of modules a ResNet does not have '
            f'({describe_modules(foreign)}): a network with other attention modules (BAM, SE, '
            f'...)? mmengine would drop them silently. Use a plain ResNet or a CBAM ResNet '
            f'checkpoint')

    _check_stages(where, state, stage_blocks, depth, bottleneck, owner)

    def is_cbam(key):
        return '.cbam.' in key

    has_cbam = any(is_cbam(k) for k in relevant)

    def ignore_missing(key):
        # Plugins and DCN offsets absent from a plain checkpoint keep their own init (mmdet's
        # behaviour); so do all CBAMs when the checkpoint has none (a plain ResNet).
        if key.endswith('num_batches_tracked') or '.conv_offset.' in key:
            return True
        if is_cbam(key):
            return not has_cbam
        return any(f'.{name}.' in key for name in plugin_names)

    problems = state_dict_mismatch(relevant, expected, ignore_missing)
    if problems:
        raise CheckpointError(f'{where}: does not fit the {owner} (depth {depth}):'
                              + ''.join(f'\n  - {problem}' for problem in problems))
    if classifier and not has_cbam and any(is_cbam(k) for k in expected) and (
            start_from_parent is not True):
        raise CheckpointError(f'{where}: {plain_classifier_problem(owner)}')
    return CBAM if has_cbam else PLAIN


def is_classifier_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` is an mmpretrain ``ImageClassifier``'s (``backbone.*`` and ``head.*``
    keys, and the neck's if it has weights), as mmpretrain's Runner saves it."""
    top = {key.split('.')[0] for key in state}
    return {'backbone', 'head'} <= top <= {'backbone', 'neck', 'head'}


CLASSIFIER_WITHOUT_PREFIX = (
    "is an mmpretrain image classifier (backbone.*, head.* keys): load its backbone with "
    "prefix='backbone.' in the Pretrained init_cfg (its head.* keys, the ImageNet classifier, "
    "are not used)")


def plain_classifier_problem(owner: str) -> str:
    """Why a classifier without CBAM weights is refused for a CBAM module."""
    return (f'is a plain classifier: its backbone has no CBAM weights, but the {owner} has CBAM '
            f'in its blocks, which would keep their random init. Use a classifier trained with '
            f'a -cbam config of configs/imagenet/ (docs/pretraining.md), or the plain detection '
            f'config for this one; to start from plain weights on purpose, set '
            f'start_from_parent=True')


def _top_level(state: Mapping[str, torch.Tensor]) -> List[str]:
    return sorted({k.split('.')[0] + '.' for k in state})


def _foreign_checkpoint_problem(state, expected) -> str:
    """Why a checkpoint that shares no top-level key with the module does not fit it."""
    probe = next(k for k in expected if not k.endswith('num_batches_tracked'))
    prefixes = {key[:-len(probe)] for key in state if key.endswith('.' + probe)}
    if prefixes:  # e.g. 'backbone.' rather than 'backbone.layer1.0.' for probe 'conv1.weight'
        prefix = max(prefixes, key=lambda p: sum(p + k in state for k in expected))
        return (f"has the module's weights under {prefix!r} (a whole detector or other "
                f"model): set prefix={prefix!r} in the Pretrained init_cfg")
    return (f'is not a checkpoint of this architecture: none of its {len(state)} keys '
            f'({show_keys(sorted(state), 3)}) is a key of the model (e.g. '
            f'{show_keys(list(expected), 3)})')


def _check_stages(where, state, stage_blocks, depth, bottleneck, owner) -> None:
    """Refuse a checkpoint of another depth or block type, saying which depth it is."""
    counts = stage_block_counts(state)
    found = tuple(counts.get(stage, 0) for stage in range(1, max(counts, default=0) + 1))
    found_bottleneck = has_bottlenecks(state)
    found_depth = resnet_depth(found, found_bottleneck) if len(found) == 4 else None
    kind = (f'a depth-{found_depth} ' + ('ResNet/ResNeXt' if found_bottleneck else 'ResNet')
            if found_depth else 'no standard ResNet depth')
    fix = (f'set depth={found_depth} or use a depth-{depth} checkpoint' if found_depth
           else f'use a depth-{depth} checkpoint')
    if any(counts.get(stage + 1) != n for stage, n in stage_blocks.items()):
        ours = (tuple(stage_blocks.values()) if list(stage_blocks) == list(range(len(
            stage_blocks))) else ', '.join(f'{n} in layer{s + 1}' for s, n in stage_blocks.items()))
        raise CheckpointError(
            f'{where}: has {found} blocks per stage ({kind}), but the {owner} has {ours} '
            f'(depth {depth}): {fix}')
    if found_bottleneck != bottleneck:
        block = {True: 'bottleneck', False: 'basic'}
        raise CheckpointError(
            f'{where}: has {block[found_bottleneck]} blocks ({kind}), but the {owner} of depth '
            f'{depth} has {block[bottleneck]} blocks: {fix}')
