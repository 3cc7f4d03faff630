import os
import sys

import pytest
import torch
from mmengine.registry import init_default_scope

import cbam_mmdet  # noqa: F401 - registers the components

# Makes ``authors_reference`` importable and keeps the 2-core machines from oversubscribing.
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope='session')
def mmdet_scope():
    init_default_scope('mmdet')


@pytest.fixture
def repo_root():
    return REPO_ROOT
