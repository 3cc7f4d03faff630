"""tools/make_synthetic_imagenet.py: mmpretrain's ImageNet layout, deterministic, never replaces."""
import filecmp
import os

import pytest
from mmengine.registry import DefaultScope

from conftest import load_tool

tool = load_tool('make_synthetic_imagenet')


def test_layout_is_read_by_mmpretrains_imagenet_dataset(synthetic_imagenet):
    from mmpretrain.datasets import ImageNet
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        for split, count in (('train', 12), ('val', 6)):
            dataset = ImageNet(data_root=synthetic_imagenet, split=split, pipeline=[])
            labels = [dataset.get_data_info(i)['gt_label'] for i in range(len(dataset))]
            assert len(dataset) == count and sorted(set(labels)) == [0, 1, 2]
            assert [labels.count(k) for k in range(3)] == [count // 3] * 3
    classes = open(os.path.join(synthetic_imagenet, 'classes.txt')).read().split()
    assert classes == ['circle', 'square', 'triangle']


def test_same_arguments_give_identical_files(tmp_path, capsys):
    args = ['--num-train', '3', '--num-val', '2']
    assert tool.main([str(tmp_path / 'a')] + args) == 0
    assert tool.main([str(tmp_path / 'b')] + args) == 0
    comparison = filecmp.dircmp(tmp_path / 'a', tmp_path / 'b')
    assert not comparison.diff_files and not comparison.left_only and not comparison.right_only
    for split in ('train', 'val'):
        assert not filecmp.dircmp(tmp_path / 'a' / split, tmp_path / 'b' / split).diff_files
    assert sorted(os.listdir(tmp_path)) == ['a', 'b']  # no temporary directory left


@pytest.mark.parametrize('args,message', [
    (['--num-train', '0'], '--num-train must be >= 1, got 0'),
    (['--size', '16'], '--size must be between 64 and 2048, got 16'),
])
def test_bad_arguments_are_refused(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / 'out')] + args)
    assert message in capsys.readouterr().err and not (tmp_path / 'out').exists()


def test_an_existing_directory_is_never_replaced(tmp_path, capsys):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'mine.txt').write_text('keep')
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / 'out')])
    assert 'already exists' in capsys.readouterr().err
    assert os.listdir(tmp_path / 'out') == ['mine.txt']
