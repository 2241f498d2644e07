# Retrain the pruned ResNet-18 found by dmcp_resnet18_supernet.py from scratch
# (the ResNet-50 retraining schedule).
_base_ = ['dmcp_resnet50_subnet.py']

model = dict(
    cfg=dict(backbone=dict(depth=18), head=dict(in_channels=512)),
    fix_subnet='work_dirs/dmcp_resnet18_supernet/model_sample/expected_ch.json',
)
