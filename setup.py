import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# What `mim` and users of an installed package need beside the code, shipped whole (whatever
# these folders hold) in cbam_mmdet/.mim/, where openmim and mmdet's layout look for them. In a
# source checkout (and so in an editable install) cbam_mmdet/.mim/ holds links to them instead.
MIM_FILES = ('configs', 'tools', 'model-index.yml')
MIM_IGNORED = shutil.ignore_patterns('__pycache__', '*.pyc')


class BuildPyWithMim(build_py):
    """build_py that copies the configs, tools and model index into the built package's .mim/."""

    def run(self):
        super().run()
        if self.editable_mode:  # the package is used in place, with its links
            return
        mim_dir = osp.join(self.build_lib, 'cbam_mmdet', '.mim')
        if osp.lexists(mim_dir):  # a stale build: never mix in files deleted since
            shutil.rmtree(mim_dir)
        os.makedirs(mim_dir)
        for name in MIM_FILES:
            if osp.isdir(name):
                shutil.copytree(name, osp.join(mim_dir, name), ignore=MIM_IGNORED)
            else:
                shutil.copy2(name, mim_dir)


version = {}
with open('cbam_mmdet/version.py') as f:
    exec(f.read(), version)

setup(
    name='cbam_mmdet',
    version=version['__version__'],
    description='CBAM (Convolutional Block Attention Module) for MMDetection 3.x',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['cbam_mmdet', 'cbam_mmdet.*']),
    # The CPU kernels' source, compiled on first use (cbam_mmdet/runtime/cpp_library.py).
    package_data={'cbam_mmdet': ['models/layers/cbam/csrc/*.cpp']},
    cmdclass={'build_py': BuildPyWithMim},
    python_requires='>=3.8',
    install_requires=[
        'torch>=1.13',
        'torchvision>=0.14',
        'mmengine>=0.10.7,<1',
        'mmcv>=2.0,<2.2',
        'mmdet>=3.3,<3.4',
        'pycocotools>=2.0',
    ],
)
