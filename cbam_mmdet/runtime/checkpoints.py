"""Checkpoints read safely, and compared with a network before anything is loaded.

A missing, empty or corrupt file surfaces as a bare ``torch.load`` error from deep inside
mmengine's Runner, and mmengine loads with ``strict=False``: a checkpoint of another model only
produces a log line listing keys. :func:`read_checkpoint` is the one weights-only reader (behind
the ResNet ``Pretrained`` checks, the converter and the tools' checkpoints);
:func:`state_dict_mismatch` says what keeps a state dict from fitting a module.
"""
import os
import pickle
import re
from typing import Dict, List, Mapping, Sequence

import torch

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


def check_checkpoint_fits(model: torch.nn.Module, path: str, what: str, lenient: str) -> None:
    """Refuse a checkpoint whose keys or shapes do not fit ``model``, before mmengine loads it
    with ``strict=False`` (which only logs the mismatches and leaves those weights at init).

    Args:
        model (nn.Module): The model the checkpoint is for (unwrapped).
        path (str): Local checkpoint file.
        what (str): The model, for the message (e.g. the config's name).
        lenient (str): How the user keeps mmengine's lenient loading (a flag), for the message.

    Raises:
        CheckpointError: Naming the first missing, unexpected and misshapen keys and how many.
    """
    state = state_dict_of(read_checkpoint(path, mmap=True), path)
    state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}  # as mmengine loads it
    problems = state_dict_mismatch(state, model.state_dict(),
                                   ignore_missing=lambda key: key.endswith('num_batches_tracked'))
    if problems:
        raise CheckpointError(
            f'checkpoint {path}: does not fit {what}:'
            + ''.join(f'\n  - {problem}' for problem in problems)
            + '\nIs it a checkpoint of another model (detector, depth, number of classes)? Use '
            f'the config it was trained with, or {lenient} to load what fits (mmdet\'s '
            f'strict=False: the rest keeps its initialisation)')


def is_local(checkpoint: str) -> bool:
    return not _REMOTE.match(str(checkpoint))


def local_pretrained_cfgs(init_cfg) -> List[dict]:
    """The ``Pretrained`` entries of an ``init_cfg`` whose checkpoint is a local path."""
    from mmengine.model.weight_init import PretrainedInit
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return [cfg for cfg in cfgs if isinstance(cfg, Mapping)
            and cfg.get('type') in ('Pretrained', PretrainedInit)
            and cfg.get('checkpoint') and is_local(cfg['checkpoint'])]
