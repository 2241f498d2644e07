# The built-in default: DMCP search on a ResNet-20 for Fashion-MNIST (28x28),
# target about half of the supernet's 31.0 MFLOPs.  The search sees the first
# 18,000 training images for 3 epochs; with the retraining (all 60,000 images,
# 3 epochs) the pipeline takes about 12 minutes on 2 cores.
_base_ = [
    'mmcls::_base_/default_runtime.py',
    '_base_/fmnist_bs64.py',
]

supernet = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet_CIFAR', depth=20, in_channels=1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=64,
              loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original',
                        num_classes=10),
              topk=(1, 5)),
)

model = dict(
    type='DMCP',
    architecture=supernet,
    distiller=dict(
        type='ConfigurableDistiller',
        distill_losses=dict(loss_kl=dict(type='KLDivergence', tau=1, loss_weight=1))),
    mutator_cfg=dict(
        type='DMCPChannelMutator',
        channel_unit_cfg=dict(type='DMCPChannelUnit', default_args=dict(choice_mode='number')),
        parse_cfg=dict(type='ChannelAnalyzer', demo_input=(1, 1, 28, 28),
                       tracer_type='BackwardTracer'),
        pruning_cfg=(0.1, 1.0, 0.1),
        prob_type='sigmoid'),
    strategy=['max', 'min', 'scheduled_random', 'arch_random'],
    arch_start_train=200,
    arch_train_freq=5,
    distillation_times=200,
    flop_loss_weight=0.1,
    flops_loss_type='log_l1',
    target_flops=15,
)

optim_wrapper = dict(
    architecture=dict(
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
        paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0)),
    mutator=dict(optimizer=dict(type='Adam', lr=0.05, weight_decay=1e-3)),
)

max_epochs = 3
param_scheduler = [
    dict(type='LinearLR', start_factor=0.2, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=0.01, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
custom_hooks = [dict(type='DMCPSubnetHook', subnet_sample_num=3)]
randomness = dict(seed=2020, diff_rank_seed=True)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=25))
