"""The weights-only checkpoint reader and the Pretrained-config helpers."""
import torch

from cbam_mmdet.runtime.checkpoints import local_pretrained_cfgs, read_checkpoint


def pretrained(path):
    return dict(type='Pretrained', checkpoint=str(path))


def test_remote_checkpoints_are_left_to_mmengine():
    cfgs = [pretrained('torchvision://resnet50'), pretrained('https://x/y.pth'),
            dict(type='Kaiming'), pretrained('local.pth')]
    assert local_pretrained_cfgs(cfgs) == [pretrained('local.pth')]
    assert local_pretrained_cfgs(pretrained('open-mmlab://resnet50_caffe')) == []


def test_read_checkpoint_maps_zip_files_and_reads_legacy_ones(tmp_path):
    state = {'w': torch.arange(4.)}
    torch.save(state, str(tmp_path / 'zip.pth'))
    torch.save(state, str(tmp_path / 'legacy.pth'), _use_new_zipfile_serialization=False)
    for name in ('zip.pth', 'legacy.pth'):
        assert torch.equal(read_checkpoint(str(tmp_path / name), mmap=True)['w'], state['w'])
