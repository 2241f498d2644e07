# Default runtime of mmcls 1.x configs, reachable as
# `_base_ = ['mmcls::_base_/default_runtime.py']`.

# registry scope of unprefixed type names
default_scope = 'mmcls'

# hooks every runner has
default_hooks = dict(
    # record the time of every iteration
    timer=dict(type='IterTimerHook'),
    # print a log line every 100 iterations
    logger=dict(type='LoggerHook', interval=100),
    # step the parameter schedulers
    param_scheduler=dict(type='ParamSchedulerHook'),
    # save a checkpoint every epoch
    checkpoint=dict(type='CheckpointHook', interval=1),
    # reseed the sampler every epoch in distributed runs
    sampler_seed=dict(type='DistSamplerSeedHook'),
)

# environment
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

log_level = 'INFO'

# checkpoint to initialise the model from
load_from = None

# resume training from `load_from` (or the last checkpoint)
resume = False

# random seed (None: pick one) and deterministic kernels
randomness = dict(seed=None, deterministic=False)
