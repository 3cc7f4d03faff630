from .build_hints import build_hints, warn_uncovered_stages
from .resnet_plugins import (DEFAULT_CBAM_CFG, RESNET_NORM_CFG, cbam_plugin, check_plugin_names,
                             check_plugin_positions, check_plugins, check_registered, did_you_mean,
                             mmdet_scope_if_unset)

__all__ = [
    'DEFAULT_CBAM_CFG', 'RESNET_NORM_CFG', 'build_hints', 'cbam_plugin', 'check_plugin_names',
    'check_plugin_positions', 'check_plugins', 'check_registered', 'did_you_mean',
    'mmdet_scope_if_unset', 'warn_uncovered_stages'
]
