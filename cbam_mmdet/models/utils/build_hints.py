"""Hints for the mistakes a user who swaps a backbone makes, where mmdet's message names no fix.

:func:`build_hints` wraps the building of a detector (our tools build through it): a misspelled
type (also a plugin's, where mmcv says "Cannot find None in registry") gets the registered
names closest to it, mmdet's ``AssertionError: Not implemented yet.`` for
a ResNet-18/34 with plugins says to use ``CBAMResNet``. :func:`warn_uncovered_stages` checks a
built detector: a CBAM backbone whose last stage runs as a plain C4 RoI head.
"""
import contextlib
import re
import warnings
from typing import Iterator, List, Mapping

import torch.nn as nn
from mmengine.registry import Registry

import mmdet.registry
from .resnet_plugins import did_you_mean

# mmengine: "'{type} is not in the {scope}::{registry} registry. Please check whether ..."
_NOT_IN_REGISTRY = re.compile(r"^'?(?P<type>[\w.]+) is not in the \w+::(?P<registry>[\w ]+) "
                              r'registry')
BASIC_BLOCK_DEPTHS = (18, 34)


def type_configs(cfg) -> Iterator[Mapping]:
    """Every dict with a ``type`` inside ``cfg`` (nested dicts and lists)."""
    if isinstance(cfg, Mapping):
        if 'type' in cfg:
            yield cfg
        for value in cfg.values():
            yield from type_configs(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            yield from type_configs(value)


def registry_named(name: str) -> Registry:
    """mmdet's registry called ``name`` ('model', 'task util', ...); MODELS if none is."""
    for value in vars(mmdet.registry).values():
        if isinstance(value, Registry) and value.name == name and value.scope == 'mmdet':
            return value
    return mmdet.registry.MODELS


def hint_for(err: BaseException, model_cfg) -> str:
    """What to do about an error raised while building ``model_cfg``; empty if nothing known."""
    if isinstance(err, KeyError):
        message = str(err.args[0]) if err.args else ''
        match = _NOT_IN_REGISTRY.match(message)
        if match:
            suggestion = did_you_mean(match['type'], registry_named(match['registry']))
            return f'{match["type"]!r} is not registered{suggestion}' if suggestion else ''
        if message.startswith('Cannot find None in registry'):  # mmcv's, for a plugin
            return '; '.join(unregistered_plugins(model_cfg))
    if isinstance(err, AssertionError) and str(err) == 'Not implemented yet.':
        for cfg in type_configs(model_cfg):
            if (cfg['type'] in ('ResNet', 'ResNetV1d') and cfg.get('plugins')
                    and cfg.get('depth') in BASIC_BLOCK_DEPTHS):
                return (f"mmdet's {cfg['type']} takes plugins in Bottleneck blocks only (depth "
                        f">= 50); for depth {cfg['depth']} with CBAM use type='CBAM"
                        f"{cfg['type']}' (BasicBlocks with plugins, CBAM built in)")
    return ''


def unregistered_plugins(model_cfg) -> List[str]:
    """What is wrong with each plugin type of ``model_cfg`` that mmcv cannot build."""
    problems = []
    for cfg in type_configs(model_cfg):
        for plugin in cfg.get('plugins') or []:
            plugin_type = plugin.get('cfg', {}).get('type') if isinstance(plugin, Mapping) else None
            if isinstance(plugin_type, str) and mmdet.registry.MODELS.get(plugin_type) is None:
                problems.append(f'plugin type {plugin_type!r} of {cfg["type"]} is not '
                                f'registered{did_you_mean(plugin_type)}')
    return problems


@contextlib.contextmanager
def build_hints(model_cfg):
    """Re-raise an error of building ``model_cfg`` with :func:`hint_for`'s hint appended."""
    try:
        yield
    except (KeyError, AssertionError) as err:
        hint = hint_for(err, model_cfg)
        if not hint:
            raise
        raise type(err)(f'{err.args[0] if err.args else err}\nHint: {hint}') from err


def cbam_modules(module: nn.Module) -> List[nn.Module]:
    from ..layers import CBAM
    return [m for m in module.modules() if isinstance(m, CBAM)]


def warn_uncovered_stages(model: nn.Module) -> None:
    """Warn when a detector's backbone has CBAM but its C4 RoI head (the last ResNet stage, run
    per RoI) has none: the stage the paper puts CBAM in too would silently stay plain."""
    backbone = getattr(model, 'backbone', None)
    shared_head = getattr(getattr(model, 'roi_head', None), 'shared_head', None)
    if backbone is None or shared_head is None:
        return
    in_backbone = len(cbam_modules(backbone))
    if in_backbone and not cbam_modules(shared_head):
        blocks = len(getattr(shared_head, f'layer{getattr(shared_head, "stage", 3) + 1}', []))
        warnings.warn(
            f'the backbone has {in_backbone} CBAMs but the RoI head\'s shared head '
            f'({type(shared_head).__name__}, the last ResNet stage of this C4 detector) has '
            f'none: its {blocks} blocks stay plain. Set '
            f"model.roi_head.shared_head.type='CBAMResLayer' to give them CBAM as the paper "
            f'does', UserWarning, stacklevel=2)
