# ImageNet data, optimisers and schedule of the published DMCP supernet runs
# (mmrazor's imagenet_bs2048_dmcp settings, per process: 32 processes x 64).
dataset_type = 'ImageNet'
data_preprocessor = dict(
    num_classes=1000,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224),
    dict(type='ColorJitter', brightness=0.2, contrast=0.2, saturation=0.2),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackClsInputs'),
]

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackClsInputs'),
]

train_dataloader = dict(
    batch_size=64,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root='data/imagenet', ann_file='meta/train.txt',
                 data_prefix='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=64,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root='data/imagenet', ann_file='meta/val.txt',
                 data_prefix='val', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(
    architecture=dict(
        optimizer=dict(type='SGD', lr=0.5, momentum=0.9, weight_decay=3e-4, nesterov=True),
        paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0)),
    mutator=dict(optimizer=dict(type='Adam', lr=0.5, weight_decay=1e-3)),
)

max_epochs = 100
param_scheduler = [
    dict(type='LinearLR', start_factor=0.5, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=90, eta_min=0.08, by_epoch=True, begin=10,
         end=max_epochs, convert_to_iter_based=True),
]

train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()

custom_hooks = [dict(type='DMCPSubnetHook', subnet_sample_num=10)]

# the learning rates above are for 32 ranks x 64 images; train.py --auto-scale-lr
# scales them to (ranks x batch size) / 2048
auto_scale_lr = dict(base_batch_size=2048, enable=False)
