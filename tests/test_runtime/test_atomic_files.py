"""Local writes through mmengine are atomic after ``import cbam_mmdet``."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.runner import save_checkpoint

from cbam_mmdet.runtime import atomic_files
from cbam_mmdet.runtime.atomic_files import AtomicLocalBackend

WRITER = """
import sys
import cbam_mmdet  # noqa: F401
from mmengine.fileio import put
path, size = sys.argv[1], int(sys.argv[2])
for i in range(1, 1000):
    put(bytes([i % 256]) * size, path)
    print(i, flush=True)
"""


def test_mmengine_uses_the_atomic_backend_for_checkpoints(tmp_path):
    assert isinstance(get_file_backend(str(tmp_path)), AtomicLocalBackend)
    path = tmp_path / 'sub' / 'ckpt.pth'
    save_checkpoint({'state_dict': {'w': torch.ones(3)}}, str(path))
    assert torch.equal(torch.load(path)['state_dict']['w'], torch.ones(3))
    assert os.listdir(path.parent) == ['ckpt.pth']
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'last_checkpoint'
    path.write_text('iter_2.pth')

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_files.os, 'replace', crash)
    with pytest.raises(KeyboardInterrupt):
        AtomicLocalBackend().put_text('iter_4.pth', str(path))
    assert path.read_text() == 'iter_2.pth' and os.listdir(tmp_path) == ['last_checkpoint']


def test_sigkill_while_writing_leaves_a_complete_file(tmp_path):
    path, size = tmp_path / 'big.bin', 32 * 1024 * 1024
    for delay in (0.0, 0.03, 0.07, 0.11, 0.15):
        writer = subprocess.Popen([sys.executable, '-c', WRITER, str(path), str(size)],
                                  stdout=subprocess.PIPE, text=True)
        writer.stdout.readline()  # the first version is complete
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        data = path.read_bytes()
        assert len(data) == size and data.count(data[:1]) == size, 'a truncated or mixed file'
