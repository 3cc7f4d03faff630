"""Helpers that build mmdet ResNet plugins for the CBAM backbones, the C4 shared head and the neck.

One place checks a plugin list (what mmdet's ResNet only asserts, or fails on with a bare
``KeyError``), checks that a module type is registered (suggesting close names), and makes the
CBAM plugin entry.
"""
import difflib
from typing import Dict, List, Optional, Sequence, Tuple

from mmcv.cnn.bricks.plugin import infer_abbr
from mmengine.registry import DefaultScope, Registry

from mmdet.models.backbones.resnet import Bottleneck
from mmdet.registry import MODELS
from mmdet.utils import ConfigType
from ..layers.cbam import AUTHORS_SPATIAL_NORM, CBAM

DEFAULT_CBAM_CFG = dict(type='CBAM')
ATTENTION_MODULES = ("Attention modules here: 'CBAM' (cbam_mmdet), 'ContextBlock', "
                     "'GeneralizedAttention', 'NonLocal2d' (mmcv)")

# mmdet's Bottleneck only asserts its plugin positions; these are the ones it handles.
BOTTLENECK_PLUGIN_POSITIONS = ('after_conv1', 'after_conv2', 'after_conv3')


def plugin_positions(block: type) -> Sequence[str]:
    return getattr(block, 'plugin_positions', BOTTLENECK_PLUGIN_POSITIONS)


def check_plugin_positions(owner: str, plugins: Sequence[dict], block: type) -> None:
    valid = plugin_positions(block)
    for plugin in plugins:
        if plugin['position'] not in valid:
            raise ValueError(
                f'{owner}: plugin position {plugin["position"]!r} is not supported by its '
                f'{block.__name__} blocks; valid positions: {", ".join(valid)}')


def check_registered(owner: str, what: str, cfg, examples: str = ATTENTION_MODULES) -> None:
    """A KeyError naming an unregistered module type (mmcv's own says 'Cannot find None').

    Args:
        owner (str): The module being built, for the message.
        what (str): Which of its arguments ``cfg`` is.
        cfg (dict): A module config; its ``type`` is a registered name or a class.
        examples (str): Valid configs, for the message.
    """
    module_type = cfg.get('type') if isinstance(cfg, dict) else None
    if not isinstance(module_type, str):
        if not isinstance(module_type, type):
            raise ValueError(f'{owner}: {what} needs a config dict with a "type", got {cfg!r}')
        return
    with mmdet_scope_if_unset():
        if MODELS.get(module_type) is None:
            raise KeyError(
                f'{owner}: {what} type {module_type!r} is not registered in mmdet\'s MODELS '
                f'registry{did_you_mean(module_type)}; check the spelling, or import the package '
                f'that registers it (custom_imports). {examples}')


def registered_names(registry: Registry = MODELS) -> List[str]:
    """The names of ``registry`` and of the registries it falls back to (its parents)."""
    names = set()
    while registry is not None:
        names |= set(registry.module_dict)
        registry = registry.parent
    return sorted(names)


def did_you_mean(name: str, registry: Registry = MODELS) -> str:
    """`` (did you mean 'CBAMResNet'?)`` for the registered names closest to ``name``, ignoring
    case; empty if none is close."""
    by_lower: Dict[str, str] = {n.lower(): n for n in registered_names(registry)}
    close = difflib.get_close_matches(name.lower(), by_lower, n=3, cutoff=0.75)
    if not close:
        return ''
    return ' (did you mean ' + ' or '.join(repr(by_lower[c]) for c in close) + '?)'


def check_plugins(owner: str, plugins: Sequence[dict], block: type, num_stages: int) -> None:
    """What mmdet's ResNet only asserts (or fails on with a bare KeyError) about ``plugins``."""
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or 'cfg' not in plugin or 'position' not in plugin:
            raise ValueError(
                f'{owner}: plugins[{index}] needs "cfg" and "position" keys, got {plugin!r}; '
                f'e.g. dict(cfg=dict(type=\'CBAM\'), position=\'{plugin_positions(block)[-1]}\')')
        stages = plugin.get('stages')
        if stages is not None and len(stages) != num_stages:
            raise ValueError(f'{owner}: plugins[{index}]["stages"] needs one bool per stage '
                             f'({num_stages}), got {tuple(stages)}')
        check_registered(owner, f'plugins[{index}]', plugin['cfg'])
    check_plugin_positions(owner, plugins, block)


def check_plugin_names(owner: str, plugins: Sequence[dict], num_stages: int,
                       sources: Sequence[str]) -> None:
    """A ValueError for two plugins that mmdet would give the same name in one block (its bare
    ``AssertionError: duplicate plugin cbam``).

    mmdet names a block's plugin after its type (``CBAM`` -> ``cbam``) plus the plugin config's
    ``postfix``; two plugins of one type at one position need different postfixes.

    Args:
        owner (str): The module being built, for the message.
        plugins (Sequence[dict]): Plugin entries (``cfg``, ``position``, optional ``stages``),
            already checked by :func:`check_plugins`.
        num_stages (int): Stages of the backbone.
        sources (Sequence[str]): Where each entry comes from (e.g. 'plugins[0]', 'cbam_cfg').
    """
    seen: Dict[Tuple[str, str, int], str] = {}
    for plugin, source in zip(plugins, sources):
        cfg = plugin['cfg']
        cls = cfg['type'] if isinstance(cfg['type'], type) else MODELS.get(cfg['type'])
        name = infer_abbr(cls) + str(cfg.get('postfix', ''))
        stages = plugin.get('stages') or (True, ) * num_stages
        for stage in (i for i, on in enumerate(stages) if on):
            other = seen.setdefault((plugin['position'], name, stage), source)
            if other != source:
                raise ValueError(
                    f'{owner}: {other} and {source} would both be the plugin {name!r} at '
                    f'{plugin["position"]} of stage {stage + 1}. mmdet names a plugin after its '
                    f'type plus cfg["postfix"]: give one a postfix, e.g. '
                    f'cfg=dict(type={cfg["type"]!r}, postfix=2) (named {name}2)'
                    + ('; or drop the plugin entry: cbam_cfg already adds CBAM to every block'
                       if 'cbam_cfg' in (other, source) else ''))


def mmdet_scope_if_unset():
    """mmcv builds plugins from the registry of the current default scope; outside a config
    (a script, a tool) there is none, so build in mmdet's, where CBAM is registered."""
    return DefaultScope.overwrite_default_scope(
        None if DefaultScope.get_current_instance() else 'mmdet')


# Norm types whose statistics are synchronised across processes (torch's and mmcv's).
SYNC_NORMS = ('SyncBN', 'MMSyncBN')
# mmdet ResNet's default norm_cfg.
RESNET_NORM_CFG = dict(type='BN', requires_grad=True)


def spatial_norm_following(cbam_cfg: ConfigType, norm_cfg: Optional[ConfigType]) -> ConfigType:
    """``cbam_cfg`` with CBAM's spatial norm following the backbone's ``norm_cfg``.

    A synchronised BatchNorm (``SyncBN``, ``MMSyncBN``) is followed, keeping the authors'
    momentum 0.01 and eps 1e-5: in multi-process training each spatial gate then normalises with
    the whole batch's statistics, as its block's norms do. Any other norm (GN, BN) leaves the
    authors' BatchNorm: it normalises one channel over N x H x W values, so even one image per
    process gives it thousands of values (the small-batch problem GN solves does not arise), and
    it keeps the authors' weights loadable. A ``spatial_norm_cfg`` in ``cbam_cfg`` always wins.
    """
    norm_type = norm_cfg.get('type') if isinstance(norm_cfg, dict) else None
    if (norm_type not in SYNC_NORMS or not isinstance(cbam_cfg, dict)
            or cbam_cfg.get('type') not in ('CBAM', CBAM) or 'spatial_norm_cfg' in cbam_cfg):
        return cbam_cfg
    return dict(cbam_cfg, spatial_norm_cfg=dict(AUTHORS_SPATIAL_NORM, type=norm_type))


def cbam_plugin(block: type,
                cbam_cfg: ConfigType,
                stages: Optional[Sequence[bool]] = None,
                norm_cfg: Optional[ConfigType] = None) -> dict:
    """An mmdet ResNet plugin entry that puts ``cbam_cfg`` after the last norm of ``block``
    (its spatial norm following ``norm_cfg``: ``spatial_norm_following``)."""
    position = 'after_conv3' if issubclass(block, Bottleneck) else 'after_conv2'
    plugin = dict(cfg=spatial_norm_following(cbam_cfg, norm_cfg), position=position)
    if stages is not None:
        plugin['stages'] = tuple(stages)
    return plugin
