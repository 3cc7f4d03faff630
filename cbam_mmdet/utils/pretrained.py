"""Checkpoints read safely and checked against the network before anything is loaded.

mmengine loads a ``Pretrained`` init checkpoint with ``strict=False``: a checkpoint of another
depth, architecture or layout only produces a log line listing keys, and the network trains from
a partly random start. A missing, empty or corrupt file surfaces as a bare ``torch.load`` error
from deep inside the Runner. :func:`check_pretrained_resnet` runs before mmengine loads the
checkpoint of one of our ResNet-family modules and turns every such case into an error that names
the file, the problem and the fix; it reads mmpretrain classifier checkpoints too (loaded with
``prefix='backbone.'``, their ``head.*`` keys unused). :func:`read_checkpoint` is the one
weights-only reader behind it (and behind the converter and the tools' ``--resume`` / test
checkpoints).
"""
import os
import pickle
import re
import warnings
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

# Blocks per stage -> ResNet depth; (3, 4, 6, 3) is depth 34 with basic blocks, 50 with
# bottlenecks (and ResNeXt shares the bottleneck depths).
BLOCKS_TO_DEPTH = {(2, 2, 2, 2): 18, (3, 4, 6, 3): None, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
DEFAULT_CBAM_CHECKPOINT = 'checkpoints/cbam_r50_backbone.pth'
CONVERTER_COMMAND = ('python tools/convert_official_cbam.py RESNET50_CBAM_new_name_wrap.pth '
                     '{dst}')
# Keys of the authors' CBAM code that the converter renames (``module.`` is DataParallel's).
AUTHORS_CBAM_KEYS = ('.cbam.ChannelGate.', '.cbam.SpatialGate.')
# Loading schemes mmengine resolves itself (downloads, model zoos): not checked here.
_REMOTE = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*://')
_REFUSED_GLOBAL = re.compile(r'GLOBAL [\w.]+')
_UNSUPPORTED_OPCODE = re.compile(r'Unsupported operand \d+')


class CheckpointError(ValueError):
    """A checkpoint that cannot or must not be loaded; the message names the file and why."""


def show_keys(keys: Sequence[str], limit: int = 5, sep: str = ', ') -> str:
    """The first ``limit`` keys, and how many more there are."""
    more = f' (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return sep.join(keys[:limit]) + more


def read_checkpoint(path: str, missing_hint: str = '', mmap: bool = False):
    """``torch.load`` with ``weights_only=True``, and an error naming the file for every failure.

    Args:
        path (str): Local file.
        missing_hint (str): Appended to the error for a missing file (how to make it).
        mmap (bool): Map the tensors instead of reading them (cheap for a validity check);
            files in the legacy (non-zip) format are read in full.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: A directory, an empty file, a corrupt or truncated file, or one that
            holds pickled objects other than tensors (refused; none of them runs).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f'checkpoint {path}: no such file{missing_hint}')
    if os.path.isdir(path):
        raise CheckpointError(f'checkpoint {path}: is a directory, not a checkpoint file')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'checkpoint {path}: is empty (0 bytes); an interrupted download '
                              f'or copy? Fetch or convert it again')
    try:
        try:
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if not (mmap and 'mmap can only be used' in str(err)):
                raise
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        refused_global = _REFUSED_GLOBAL.search(str(err))
        if refused_global is None:
            detail = _UNSUPPORTED_OPCODE.search(str(err))
            raise CheckpointError(
                f'checkpoint {path}: is corrupt or not a PyTorch checkpoint '
                f'({detail.group(0) if detail else _first_line(err)}; nothing in it was '
                f'unpickled)') from err
        raise CheckpointError(
            f'checkpoint {path}: refused by the weights-only loader ({refused_global.group(0)}): '
            f'it holds pickled objects other than tensors and plain containers (which are never '
            f'unpickled here, so none of them ran), or it is truncated. Use a checkpoint that '
            f'holds tensors only.') from err
    except Exception as err:  # noqa: BLE001 - truncated zip, garbage, ...: all the same to users
        raise CheckpointError(f'checkpoint {path}: is truncated, corrupt or not a PyTorch '
                              f'checkpoint ({type(err).__name__}: {_first_line(err)})') from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else 'no details'


def state_dict_of(checkpoint, path: str) -> Dict[str, torch.Tensor]:
    """The state dict mmengine takes from ``checkpoint``: its ``state_dict`` entry, or itself."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(
            f'checkpoint {path}: holds no state dict (expected a dict of tensors, or a dict with '
            f'a "state_dict" entry holding one; got {type(checkpoint).__name__})')
    return dict(state)


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


def state_dict_mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                        ignore_missing=lambda key: False,
                        ignore_unexpected=lambda key: False) -> List[str]:
    """What keeps ``state`` from loading into a module whose state dict is ``expected``: missing
    keys, unexpected keys, other shapes (one description each, empty if it fits)."""
    missing = [k for k in expected if k not in state and not ignore_missing(k)]
    unexpected = [k for k in state if k not in expected and not ignore_unexpected(k)]
    shapes = [f'{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} in the model'
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f'missing {len(missing)} keys: {show_keys(missing)}')
    if unexpected:
        problems.append(f'unexpected {len(unexpected)} keys: {show_keys(unexpected)}')
    if shapes:
        problems.append(
            f'other tensor shapes for {len(shapes)} keys: {show_keys(shapes, 3, sep="; ")}')
    return problems


def is_local(checkpoint: str) -> bool:
    return not _REMOTE.match(str(checkpoint))


def local_pretrained_cfgs(init_cfg) -> List[dict]:
    """The ``Pretrained`` entries of an ``init_cfg`` whose checkpoint is a local path."""
    from mmengine.model.weight_init import PretrainedInit
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return [cfg for cfg in cfgs if isinstance(cfg, Mapping)
            and cfg.get('type') in ('Pretrained', PretrainedInit)
            and cfg.get('checkpoint') and is_local(cfg['checkpoint'])]


def check_pretrained_resnet(module: nn.Module, blocks: Iterable[nn.Module],
                            stage_blocks: Mapping[int, int], depth: int, bottleneck: bool,
                            start_from_parent: bool) -> None:
    """Check every local ``Pretrained`` checkpoint in ``module.init_cfg`` before mmengine loads
    it with ``strict=False``.

    Refused with an error naming the file: missing (for the authors' default checkpoint, with
    the converter command), empty, corrupt or truncated, hostile; no state dict; the authors'
    unconverted CBAM checkpoint; a checkpoint with no key of ``module`` (another architecture, or
    a whole detector without ``prefix``); other blocks per stage or another block type (another
    depth); missing, unexpected or misshapen keys. A plain (no-CBAM) ResNet checkpoint for a
    CBAM module loads with a warning, or silently with ``start_from_parent=True``.

    Args:
        module (nn.Module): A ResNet-family module with CBAM (backbone or shared head).
        blocks (Iterable[nn.Module]): Its residual blocks (their plugins and DCN offsets may be
            absent from a checkpoint, as mmdet allows).
        stage_blocks (Mapping[int, int]): Number of blocks of each stage the module holds, by
            0-based stage index.
        depth (int): The module's ResNet depth.
        bottleneck (bool): Whether its blocks are bottlenecks.
        start_from_parent (bool): The module's ``start_from_parent``.
    """
    cfgs = local_pretrained_cfgs(module.init_cfg)
    if not cfgs:
        return
    expected = module.state_dict()
    plugin_names = {name for block in blocks for attr in
                    ('after_conv1_plugin_names', 'after_conv2_plugin_names',
                     'after_conv3_plugin_names') for name in getattr(block, attr, [])}
    for cfg in cfgs:
        path = os.path.expanduser(cfg['checkpoint'])
        _check_one(path, cfg.get('prefix'), module, expected, plugin_names, stage_blocks, depth,
                   bottleneck, start_from_parent)


def _check_one(path, prefix, module, expected, plugin_names, stage_blocks, depth, bottleneck,
               start_from_parent) -> None:
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

    _check_stages(where, state, stage_blocks, depth, bottleneck, owner)

    def is_cbam(key):
        return '.cbam.' in key

    has_cbam = any(is_cbam(k) for k in relevant)
    wants_cbam = any(is_cbam(k) for k in expected)

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
    if wants_cbam and not has_cbam and not start_from_parent:
        if classifier:
            raise CheckpointError(f'{where}: {plain_classifier_problem(owner)}')
        warnings.warn(
            f'{where}: is a plain ResNet checkpoint without CBAM weights; every CBAM keeps its '
            f'random init and attenuates its residual branch (to about a quarter), distorting '
            f'the pretrained features. Set start_from_parent=True to start from exactly the '
            f'plain network (see README).', UserWarning, stacklevel=2)


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
