# Retrain the pruned ResNet-20 found by dmcp_resnet20_fmnist_supernet.py from scratch.
_base_ = ['dmcp_resnet20_fmnist_supernet.py']

model = dict(
    _delete_=True,
    type='sub_model',
    cfg=_base_.supernet,
    fix_subnet='work_dirs/dmcp_resnet20_fmnist_supernet/model_sample/expected_ch.json',
    mode='mutator',
)

optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))

# the pruned net is cheap to train: the whole 60,000-image training set
train_dataloader = dict(dataset=dict(indices=None))

max_epochs = 3
param_scheduler = [
    dict(type='LinearLR', start_factor=0.2, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=0.0, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
custom_hooks = []
