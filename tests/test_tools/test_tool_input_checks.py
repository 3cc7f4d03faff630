"""tools/train.py and tools/test.py refuse bad checkpoints and datasets before the Runner is
built, and train + validate on data where some images have no objects."""
import json
import os.path as osp
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from cbam_mmdet.runtime.checkpoints import CheckpointError
from cbam_mmdet.runtime.dataset_checks import DatasetError
from conftest import DEMO_CONFIG, REPO_ROOT, TOOLS, data_options, load_tool

train_tool, test_tool = load_tool('train'), load_tool('test')


@pytest.fixture
def truncated_checkpoint(tmp_path):
    path = tmp_path / 'iter_2.pth'
    torch.save({'state_dict': {'w': torch.zeros(1000)}, 'meta': {'seed': 0, 'iter': 2}},
               str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def test_test_tool_refuses_a_missing_checkpoint(tmp_path):
    args = test_tool.parse_args([DEMO_CONFIG, str(tmp_path / 'iter_9.pth')])
    with pytest.raises(FileNotFoundError, match=r'checkpoint .*iter_9.pth: no such file'):
        test_tool.build_config(args)


def test_test_tool_refuses_a_truncated_checkpoint(truncated_checkpoint):
    args = test_tool.parse_args([DEMO_CONFIG, str(truncated_checkpoint)])
    with pytest.raises(CheckpointError, match=r'iter_2.pth: is truncated, corrupt'):
        test_tool.build_config(args)


def test_resume_from_a_truncated_checkpoint_is_refused(truncated_checkpoint, tmp_path):
    args = train_tool.parse_args([DEMO_CONFIG, '--work-dir', str(tmp_path / 'work'),
                                  '--resume', str(truncated_checkpoint)])
    with pytest.raises(CheckpointError, match=r'iter_2.pth: is truncated, corrupt'):
        train_tool.build_config(args)


def test_resume_from_the_work_dir_checks_its_latest_checkpoint(truncated_checkpoint, tmp_path):
    (tmp_path / 'last_checkpoint').write_text(str(truncated_checkpoint))
    args = train_tool.parse_args([DEMO_CONFIG, '--work-dir', str(tmp_path), '--resume'])
    with pytest.raises(CheckpointError, match=r'iter_2.pth: is truncated, corrupt'):
        train_tool.build_config(args)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'deleted.pth'))
    with pytest.raises(FileNotFoundError, match=r'deleted.pth: no such file'):
        train_tool.build_config(args)


def test_train_tool_checks_the_datasets_before_the_runner(synthetic, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(train_tool, 'build_runner',
                        lambda cfg: built.append(cfg) or SimpleNamespace(train=lambda: None))
    broken = tmp_path / 'no-data'
    with pytest.raises(DatasetError, match='instances_train.json does not exist'):
        train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path)] + data_options(broken))
    assert built == []
    train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path), '--no-dataset-check'] +
                    data_options(broken))
    assert len(built) == 1
    train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path)] + data_options(synthetic))
    assert len(built) == 2


def test_only_the_first_process_checks(tmp_path, monkeypatch):
    args = train_tool.parse_args([DEMO_CONFIG, '--work-dir', str(tmp_path)] +
                                 data_options(tmp_path / 'no-data'))
    cfg = train_tool.build_config(args)
    cfg.launcher = 'pytorch'
    monkeypatch.setenv('RANK', '1')
    train_tool.check_data(cfg, args, ('train', 'val'))  # another process: not checked
    monkeypatch.setenv('RANK', '0')
    with pytest.raises(DatasetError):
        train_tool.check_data(cfg, args, ('train', 'val'))


def test_test_tool_checks_the_test_dataset(synthetic, tmp_path):
    checkpoint = tmp_path / 'model.pth'
    torch.save({'state_dict': {}}, str(checkpoint))
    (tmp_path / 'coco').mkdir()
    args = [DEMO_CONFIG, str(checkpoint), '--work-dir', str(tmp_path)] + data_options(tmp_path)
    with pytest.raises(DatasetError, match=r'(?s)the test dataset .*instances_val.json does not '
                                           r'exist.*test_dataloader.dataset.data_root'):
        test_tool.main(args)


def test_images_without_objects_train_and_validate(synthetic, tmp_path):
    """Half the images of both splits have no objects: training filters them out, validation
    keeps and scores them."""
    data = tmp_path / 'synthetic'
    subprocess.run(['cp', '-r', str(synthetic), str(data)], check=True)
    for split, keep_from in (('train', 5), ('val', 3)):
        ann = data / 'coco' / 'annotations' / f'instances_{split}.json'
        coco = json.loads(ann.read_text())
        coco['annotations'] = [a for a in coco['annotations'] if a['image_id'] >= keep_from]
        ann.write_text(json.dumps(coco))
    work_dir = tmp_path / 'work'
    result = subprocess.run(
        [sys.executable, osp.join(TOOLS, 'train.py'), DEMO_CONFIG, '--work-dir', str(work_dir)]
        + data_options(data), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'dataset check: train: CocoDataset' in result.stdout
    assert '8 images, 4 used' in result.stdout and '4 images, 4 used' in result.stdout
    scalars = [json.loads(line) for line in
               open(next(work_dir.glob('*/vis_data/scalars.json')))]
    assert [s['iter'] for s in scalars if 'loss' in s] == [1, 2]
    assert any(0.0 <= s.get('coco/bbox_mAP', -1) <= 1.0 for s in scalars)
