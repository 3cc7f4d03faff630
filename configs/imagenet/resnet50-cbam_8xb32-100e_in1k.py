# resnet50-cbam_8xb32-90e_in1k.py over 100 epochs, as the authors trained their released
# ResNet-50 + CBAM (77.62% top-1): lr / 10 every 30 epochs, so the last 10 run at 1e-4.
_base_ = './resnet50-cbam_8xb32-90e_in1k.py'

param_scheduler = dict(milestones=[30, 60, 90])
train_cfg = dict(max_epochs=100)
