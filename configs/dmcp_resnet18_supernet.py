# DMCP search on ResNet-18 (ImageNet, 224x224; 1.82 GFLOPs), target 1.04 GFLOPs:
# the paper's ResNet-18 budget.  Everything else as dmcp_resnet50_supernet.py.
_base_ = ['dmcp_resnet50_supernet.py']

supernet = dict(
    backbone=dict(depth=18),
    head=dict(in_channels=512),
)

model = dict(
    architecture=dict(backbone=dict(depth=18), head=dict(in_channels=512)),
    target_flops=1040,
)
