# DMCP search on MobileNetV2 1.0x (ImageNet, 224x224), target 200 MFLOPs.
_base_ = [
    'mmcls::_base_/default_runtime.py',
    '_base_/imagenet_bs64_dmcp.py',
]

supernet = dict(
    _scope_='mmcls',
    type='ImageClassifier',
    # SyncBN: BN statistics over every rank's images (plain BN on one process)
    backbone=dict(type='MobileNetV2', widen_factor=1.0, norm_cfg=dict(type='SyncBN')),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1280,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original',
                  num_classes=1000),
        topk=(1, 5),
    ),
)

model = dict(
    _scope_='mmrazor',
    type='DMCP',
    architecture=supernet,
    distiller=dict(
        type='ConfigurableDistiller',
        distill_losses=dict(loss_kl=dict(type='KLDivergence', tau=1, loss_weight=1)),
        loss_forward_mappings=dict(
            loss_kl=dict(preds_S=dict(recorder='fc', from_student=True),
                         preds_T=dict(recorder='fc', from_student=False)))),
    mutator_cfg=dict(
        type='DMCPChannelMutator',
        channel_unit_cfg=dict(type='DMCPChannelUnit', default_args=dict(choice_mode='number')),
        parse_cfg=dict(type='ChannelAnalyzer', demo_input=(1, 3, 224, 224),
                       tracer_type='BackwardTracer'),
        pruning_cfg=(0.1, 1.0, 0.05)),
    strategy=['max', 'min', 'scheduled_random', 'arch_random'],
    arch_start_train=5000,
    arch_train_freq=500,
    distillation_times=10000,
    flop_loss_weight=0.1,
    flops_loss_type='log_l1',
    target_flops=200,
)

model_wrapper_cfg = dict(type='mmrazor.DMCPDDP', broadcast_buffers=False,
                         find_unused_parameters=True)

randomness = dict(seed=2020, diff_rank_seed=True)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=50))
