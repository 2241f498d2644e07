# Retrain the pruned ResNet-50 found by dmcp_resnet50_supernet.py from scratch.
_base_ = ['dmcp_resnet50_supernet.py']

model = dict(
    _delete_=True,
    _scope_='mmrazor',
    type='sub_model',
    cfg=_base_.supernet,
    fix_subnet='work_dirs/dmcp_resnet50_supernet/model_sample/expected_ch.json',
    mode='mutator',
)

optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='SGD', lr=0.8, momentum=0.9, weight_decay=4e-5, nesterov=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.25, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=98, eta_min=0.0, by_epoch=True, begin=2, end=100,
         convert_to_iter_based=True),
]

train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=1)
custom_hooks = []
model_wrapper_cfg = None
