from setuptools import find_packages, setup

version = {}
with open('cbam_mmdet/version.py') as f:
    exec(f.read(), version)

setup(
    name='cbam_mmdet',
    version=version['__version__'],
    description='CBAM (Convolutional Block Attention Module) for MMDetection 3.x',
    packages=find_packages(include=['cbam_mmdet', 'cbam_mmdet.*']),
    # The CPU kernels' source, compiled on first use (cbam_mmdet/runtime/cpp_library.py).
    package_data={'cbam_mmdet': ['models/layers/csrc/*.cpp']},
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
