# DMCP search on MobileNetV2 1.5x (ImageNet, 224x224; 673 MFLOPs), target 100
# MFLOPs.  The authors searched their MobileNetV2 structures on this 1.5x
# supernet (mmrazor's converted DMCP_MBV2_100M.json asks for up to 1280 of its
# 1920 last-layer channels); everything else as dmcp_mbv2_supernet.py.
_base_ = ['dmcp_mbv2_supernet.py']

supernet = dict(
    backbone=dict(widen_factor=1.5),
    head=dict(in_channels=1920),
)

model = dict(
    architecture=dict(backbone=dict(widen_factor=1.5), head=dict(in_channels=1920)),
    target_flops=100,
)
