# Retrain mmrazor's published 100M MobileNetV2 structure (converted from the
# authors' repository, searched on MobileNetV2 1.5x) from scratch, with the
# MobileNetV2 retraining schedule.  configs/mmrazor/DMCP_MBV2_100M_1.5x.json is
# mmrazor's DMCP_MBV2_100M.json with the 1.5x supernet's unit keys and channel
# counts (dmcp.units.rebase_subnet); its choices are unchanged: 85.4 MFLOPs as
# dmcp counts (conv and FC multiply-adds), the paper's 87M entry.  To retrain a
# structure of your own, point fix_subnet at dmcp_mbv2_1.5x_supernet.py's
# work_dirs/dmcp_mbv2_1.5x_supernet/model_sample/expected_ch.json.
_base_ = ['dmcp_mbv2_subnet.py']

model = dict(
    cfg=dict(backbone=dict(widen_factor=1.5), head=dict(in_channels=1920)),
    fix_subnet='configs/mmrazor/DMCP_MBV2_100M_1.5x.json',
)
