"""tools/train.py on a Table 8 config: a few iterations and a VOCMetric validation on the
synthetic VOC-layout data."""
import glob
import json
import os.path as osp
import sys

import torch

from conftest import REPO_ROOT, TOOLS, run

CONFIG = osp.join(REPO_ROOT, 'configs', 'stairnet',
                  'stairnet300_mobilenetv1-cbam_250e_voc0712.py')
CLASSES = ('circle', 'square', 'triangle')


def synthetic_voc_config(synthetic, path):
    """``CONFIG`` on the synthetic VOC2007 layout: 8 training images (the one split, where VOC07+12
    has two), 4 test images, 2 images per batch, no ImageNet checkpoint."""
    voc = dict(type='VOCDataset', data_root=osp.join(synthetic, 'VOCdevkit') + '/',
               data_prefix=dict(sub_data_root='VOC2007/'), metainfo=dict(classes=CLASSES))
    path.write_text(f'''
_base_ = {CONFIG!r}
model = dict(backbone=dict(init_cfg=None), bbox_head=dict(num_classes={len(CLASSES)}))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(times=1, dataset=dict(datasets=[
        dict({voc!r}, ann_file='VOC2007/ImageSets/Main/train.txt',
             pipeline={{{{_base_.train_pipeline}}}})])))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(
    {voc!r}, ann_file='VOC2007/ImageSets/Main/test.txt'))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1)
param_scheduler = []
default_hooks = dict(logger=dict(interval=1))
''')
    return str(path)


def test_train_and_validate_with_voc_metric(synthetic, tmp_path):
    config = synthetic_voc_config(synthetic, tmp_path / 'stairnet_synthetic.py')
    work_dir = tmp_path / 'work'
    run([sys.executable, osp.join(TOOLS, 'train.py'), config, '--work-dir', str(work_dir)])
    scalars = [json.loads(line)
               for line in open(glob.glob(str(work_dir / '*' / 'vis_data' / 'scalars.json'))[0])]
    losses = [s for s in scalars if 'loss' in s]
    assert [s['iter'] for s in losses] == [1, 2, 3, 4]  # 8 images, 2 per batch
    assert all(s['loss_cls'] > 0 and s['loss_bbox'] >= 0 for s in losses)
    val = [s for s in scalars if 'pascal_voc/mAP' in s]
    assert len(val) == 1 and 0.0 <= val[0]['pascal_voc/mAP'] <= 1.0
    state = torch.load(work_dir / 'epoch_1.pth', map_location='cpu')['state_dict']
    assert sum('neck.attentions' in key for key in state) > 0
