"""Training, evaluation and checkpointing driven by a config (tools/train.py,
tools/test.py).  One Runner trains a DMCP supernet, a pruned sub_model, or a
plain ImageClassifier; the DMCP-specific steps live in dmcp/algorithm.py."""
import contextlib
import json
import os
import sys
import time
import datetime
import warnings

import numpy as np

from . import algorithm
from .algorithm import DMCP, build_algorithm_model
from .nn import BatchNorm2d, no_grad
from .checkpoint import read_checkpoint, resume_training, save_training
from .config import build, check_keys
from .optim import LRSchedule, build_optimizer, param_groups
from .units import UserError, cfg_number


class Logger:
    """mmengine-style lines to the terminal and TIMESTAMP.log; scalars to vis_data/scalars.json;
    a one-line progress bar between log lines when stdout is a terminal."""

    def __init__(self, work_dir, enabled=True):
        self.enabled = enabled
        self.tty = sys.stdout.isatty()
        self.stamp = time.strftime("%Y%m%d_%H%M%S")
        self.work_dir = work_dir
        self.file = self.scalars = None      # opened at the first line / record
        self._bar = False

    def _open(self, which):
        if which == "log":
            os.makedirs(self.work_dir, exist_ok=True)
            self.file = open(os.path.join(self.work_dir, f"{self.stamp}.log"), "a")
        else:
            os.makedirs(os.path.join(self.work_dir, "vis_data"), exist_ok=True)
            self.scalars = open(os.path.join(self.work_dir, "vis_data", "scalars.json"), "a")

    def info(self, msg, level="INFO"):
        if not self.enabled:
            return
        line = f"{time.strftime('%Y/%m/%d %H:%M:%S')} - dmcp - {level} - {msg}"
        if self._bar:
            sys.stdout.write("\r\033[K")
            self._bar = False
        print(line, flush=True)
        if self.file is None:
            self._open("log")
        self.file.write(line + "\n")
        self.file.flush()

    def warning(self, msg):
        self.info(msg, "WARNING")

    @contextlib.contextmanager
    def capturing_warnings(self):
        """Python warnings raised inside (a stalled search, a corrupt image) go to the
        log as WARNING lines instead of a bare stderr line."""
        shown = warnings.showwarning
        warnings.showwarning = lambda message, *a, **k: self.warning(str(message))
        try:
            yield
        finally:
            warnings.showwarning = shown

    def scalar(self, record):
        if self.enabled:
            if self.scalars is None:
                self._open("scalars")
            self.scalars.write(json.dumps(record) + "\n")
            self.scalars.flush()

    def progress(self, done, total, prefix):
        if not (self.enabled and self.tty) or total <= 0:
            return
        width = 30
        n = int(width * done / total)
        sys.stdout.write(f"\r{prefix} [{'#' * n}{'.' * (width - n)}] {done}/{total}")
        sys.stdout.flush()
        self._bar = True

    def close(self):
        for f in (self.file, self.scalars):
            if f is not None:
                f.close()
        self.file = self.scalars = None


def _remove_empty_dirs(path):
    """Remove `path` and its subfolders if no file is left in them."""
    for root, dirs, files in os.walk(path, topdown=False):
        if not files and not os.listdir(root):
            try:
                os.rmdir(root)
            except OSError:
                pass


def _fmt_eta(seconds):
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def config_seed(cfg):
    """randomness.seed, 2020 when unset."""
    seed = (cfg.get("randomness") or {}).get("seed")
    return cfg_number(seed, "randomness.seed", int) if seed is not None else 2020


def dmcp_subnet_hook(subnet_sample_num=10, priority=None, max_draws=2000):
    """mmrazor's DMCPSubnetHook: after training, ``subnet_sample_num`` direct samples
    (each from at most ``max_draws`` draws) and the expected-width subnet."""
    key = "custom_hooks.DMCPSubnetHook"
    return dict(num=cfg_number(subnet_sample_num, f"{key}.subnet_sample_num", int, 1),
                max_draws=cfg_number(max_draws, f"{key}.max_draws", int, 1))


HOOKS = {"DMCPSubnetHook": dmcp_subnet_hook}


def subnet_hook_of(cfg):
    """The DMCPSubnetHook's settings {num, max_draws} from custom_hooks, or None."""
    hook = None
    for i, h in enumerate(cfg.get("custom_hooks") or []):
        hook = build(HOOKS, h, f"custom_hooks[{i}]", what="hook")
    return hook


class Runner:
    """``resume``: a training checkpoint to continue, or "auto" for the work dir's last
    one; None follows the config (mmengine's ``resume``/``load_from``: resume=True
    continues load_from or the last checkpoint, load_from alone starts from its
    weights); False starts from the built model (tools/test.py loads its own)."""

    def __init__(self, cfg, work_dir=None, resume=None, launcher="none"):
        self.cfg = cfg
        stem = os.path.splitext(os.path.basename(cfg.filename or "config"))[0]
        self.work_dir = work_dir or cfg.get("work_dir") or os.path.join("work_dirs", stem)
        self.config_name = stem
        from . import dist
        self.dist = dist.init(launcher)
        self.rank, self.world = self.dist.rank, self.dist.world_size
        self.is_main = self.rank == 0
        created = self.is_main and not os.path.isdir(self.work_dir)
        if self.is_main:
            os.makedirs(self.work_dir, exist_ok=True)
        self.dist.barrier()
        self.log = Logger(self.work_dir, self.is_main)
        try:
            self._setup(cfg, resume, stem)
        except BaseException:
            if created:          # a run that could not start leaves no empty work dir behind
                self.log.close()
                _remove_empty_dirs(self.work_dir)
            raise

    def _setup(self, cfg, resume, stem):
        self.seed = config_seed(cfg)
        self.model = build_algorithm_model(cfg["model"], seed=self.seed)
        self.is_dmcp = isinstance(self.model, DMCP)
        self.net = self.model.architecture if self.is_dmcp else self.model
        if self.is_dmcp:       # the one size FLOPs and target_flops are counted at
            from .flops import flops_input_shape
            self.model.input_shape = flops_input_shape(cfg)
            full = self.model.mutator.current_flops(self.model.input_shape) / 1e6
            if self.model.target_mflops > full:
                raise UserError(f"model.target_flops={self.model.target_mflops:g}: above the "
                                f"supernet's {full:.2f} MFLOPs at input {self.model.input_shape}; "
                                f"there is nothing to prune")
        self.dist.broadcast_model(self.net, self.model.mutator if self.is_dmcp else None)
        self._build_data()
        self._build_optim()
        self.epoch, self.iter = 0, 0
        # width sampling must agree on every rank: one seed, not per rank
        self.rng = np.random.default_rng(self.seed + 7)
        tcfg = dict(cfg.get("train_cfg") or {})
        check_keys("train_cfg", tcfg, ("type", "by_epoch", "max_epochs", "val_interval",
                                       "val_begin"))
        if tcfg.get("by_epoch", True) is not True:
            raise UserError("train_cfg: only epoch-based training (by_epoch=True) is supported")
        self.max_epochs = cfg_number(tcfg.get("max_epochs", 1), "train_cfg.max_epochs", int, 1)
        self.val_interval = cfg_number(tcfg.get("val_interval", 1), "train_cfg.val_interval", int, 1)
        hooks = dict(cfg.get("default_hooks") or {})
        self.ckpt_interval = cfg_number((hooks.get("checkpoint") or {}).get("interval", 1),
                                        "default_hooks.checkpoint.interval", int, 1)
        self.log_interval = cfg_number((hooks.get("logger") or {}).get("interval", 50),
                                       "default_hooks.logger.interval", int, 1)
        self.subnet_hook = subnet_hook_of(cfg)
        self.max_iters = self.max_epochs * self.iters_per_epoch
        self.schedule = LRSchedule(cfg.get("param_scheduler"), self.base_lr, self.iters_per_epoch,
                                   self.max_iters)
        load_from = cfg.get("load_from")
        if load_from is not None and not isinstance(load_from, (str, os.PathLike)):
            raise UserError(f"load_from={load_from!r}: expected a checkpoint path or None")
        auto = cfg.get("resume", False)
        if not isinstance(auto, bool):
            raise UserError(f"resume={auto!r}: must be True or False (name the checkpoint with "
                            f"load_from=PATH)")
        if resume is None and auto:
            resume = load_from or "auto"
        if resume:
            self.resume(resume)
        elif resume is None and load_from:
            self.load_from(os.fspath(load_from))
        if self.is_main:
            cfg.dump(os.path.join(self.work_dir, f"{stem}.py"))

    # ------------------------------------------------------------ building
    def _build_data(self):
        from .data import build_dataloader
        cfg = self.cfg
        pre = cfg.get("data_preprocessor") or (cfg["model"].get("data_preprocessor")
                                               if isinstance(cfg["model"], dict) else None)
        if "train_dataloader" not in cfg:
            raise UserError(f"{cfg.filename}: 'train_dataloader' is required")
        train_cfg = dict(cfg["train_dataloader"])
        train_cfg.setdefault("drop_last", True)
        self.train_loader = build_dataloader(train_cfg, pre, seed=self.seed, rank=self.rank,
                                             world_size=self.world, where="train_dataloader")
        val_cfg = dict(cfg["val_dataloader"]) if cfg.get("val_dataloader") else None
        if val_cfg is not None and self.world > 1:
            # shards without padding, so the counts summed over ranks cover each image once
            val_cfg["sampler"] = dict(val_cfg.get("sampler") or dict(type="DefaultSampler"),
                                      round_up=False)
        self.val_loader = build_dataloader(val_cfg, pre, seed=self.seed, rank=self.rank,
                                           world_size=self.world, shuffle=False,
                                           where="val_dataloader") \
            if val_cfg is not None else None
        self.iters_per_epoch = len(self.train_loader)
        if self.iters_per_epoch < 1:
            raise UserError("train_dataloader yields no full batch: fewer samples than batch_size")

    def _build_optim(self):
        ocfg = dict(self.cfg.get("optim_wrapper") or {})
        if self.is_dmcp:
            if "architecture" not in ocfg:
                raise UserError("optim_wrapper for DMCP needs 'architecture' (and 'mutator') entries")
            wcfg, mcfg = dict(ocfg["architecture"]), dict(ocfg.get("mutator") or
                                                          dict(optimizer=dict(type="Adam", lr=0.5,
                                                                              weight_decay=1e-3)))
        elif "architecture" in ocfg and "optimizer" not in ocfg:
            # a pruned subnet from a DMCP config (model.fix_subnet) keeps the supernet's
            # optim_wrapper: its weights train with the architecture's optimizer
            wcfg, mcfg = dict(ocfg["architecture"]), None
            if ocfg.get("mutator"):
                self.log.info("optim_wrapper.mutator is not used: a pruned subnet has no "
                              "architecture parameters (its weights train with "
                              "optim_wrapper.architecture)")
        else:
            wcfg, mcfg = ocfg, None
        wcfg.pop("type", None)
        if "optimizer" not in wcfg:
            raise UserError("optim_wrapper: 'optimizer' is required")
        check_keys("optim_wrapper", wcfg, ("optimizer", "paramwise_cfg", "clip_grad",
                                           "accumulative_counts"))
        opt_cfg = dict(wcfg["optimizer"])
        groups = param_groups(self.net, cfg_number(opt_cfg.get("weight_decay", 0.0), "optimizer.weight_decay",
                                                   float, 0.0), wcfg.get("paramwise_cfg"))
        self.base_lr = cfg_number(opt_cfg.get("lr", 0.1), "optimizer.lr", float, 0.0)
        scale = self._lr_scale()
        self.base_lr *= scale
        opt_cfg["lr"] = self.base_lr
        self.optimizer = build_optimizer(opt_cfg, groups, "optim_wrapper.optimizer")
        self.names = {id(p): n for n, p in self.net.named_parameters()}
        self.arch_optimizer = None
        if self.is_dmcp:
            mcfg.pop("type", None)
            arch_params = self.model.mutator.arch_parameters()
            self.arch_optimizer = build_optimizer(mcfg["optimizer"], arch_params,
                                                  "optim_wrapper.mutator.optimizer")
            for g in self.arch_optimizer.param_groups:
                g["lr"] *= scale
            for u in self.model.mutator.units:
                self.names[id(u.alpha)] = f"mutator.{u.name}.alpha"

    def _lr_scale(self):
        """mmengine's ``auto_scale_lr = dict(base_batch_size=N, enable=True)``: every
        optimizer's learning rate times (ranks x train batch size) / N; 1 when off."""
        acfg = self.cfg.get("auto_scale_lr")
        if acfg is None:
            return 1.0
        if not isinstance(acfg, dict):
            raise UserError(f"auto_scale_lr={acfg!r}: expected dict(base_batch_size=N, enable=...)")
        check_keys("auto_scale_lr", acfg, ("base_batch_size", "enable"))
        enable = acfg.get("enable", False)
        if not isinstance(enable, bool):
            raise UserError(f"auto_scale_lr.enable={enable!r}: must be True or False")
        if not enable:
            return 1.0
        if "base_batch_size" not in acfg:
            raise UserError("auto_scale_lr: 'base_batch_size' is required when enabled")
        base = cfg_number(acfg["base_batch_size"], "auto_scale_lr.base_batch_size", int, 1)
        total = self.world * self.train_loader.batch_size
        scale = total / base
        self.log.info(f"auto_scale_lr: learning rates x{scale:g} ({self.world} rank(s) x batch "
                      f"{self.train_loader.batch_size} = {total}, base_batch_size {base})")
        return scale

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, name):
        if not self.is_main:
            return
        meta = dict(epoch=self.epoch, iter=self.iter, seed=self.seed,
                    rng=self.rng.bit_generator.state,
                    random_prob=getattr(self.model, "random_prob", None),
                    config=self.config_name)
        path = save_training(self.work_dir, name, self.model, self.optimizer, self.arch_optimizer,
                             self.names, meta)
        self.log.info(f"Saving checkpoint at {self.iter} iterations: {path}")

    def resume(self, path):
        path, meta = resume_training(path, self.work_dir, self.model, self.optimizer,
                                     self.arch_optimizer, self.names, self.iters_per_epoch)
        self.epoch, self.iter = meta["epoch"], meta["iter"]
        self.rng.bit_generator.state = meta["rng"]
        if self.is_dmcp and meta["random_prob"] is not None:
            self.model.random_prob = meta["random_prob"]
        self.log.info(f"Resumed from {path} at epoch {self.epoch}, iteration {self.iter}")

    def load_from(self, path):
        """mmengine's ``load_from``: the model starts from a checkpoint's weights (a dmcp
        .npz, an exported slim .npz, a .pth) with a fresh optimizer at epoch 0."""
        if not os.path.isfile(path):
            raise UserError(f"load_from: checkpoint '{path}' does not exist")
        self.model.load_state_dict(read_checkpoint(path))
        self.log.info(f"Loaded weights from {path} (load_from); training starts at epoch 0")

    # ------------------------------------------------------------ training
    def _set_lr(self):
        lr = self.schedule.lr(self.iter)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def train(self, stop_at_iter=None):
        """Train to max_epochs (or stop after ``stop_at_iter`` iterations, saving a
        checkpoint there, as a killed job that left one would)."""
        with self.log.capturing_warnings():
            self._train(stop_at_iter)

    def _train(self, stop_at_iter):
        net = self.net
        net.train()
        cfg_name = self.config_name
        self.log.info(f"Start training {cfg_name}: {self.max_epochs} epochs x {self.iters_per_epoch} "
                      f"iterations, {self.world} process(es), work_dir {self.work_dir}")
        if self.is_dmcp:
            full = self.model.mutator.current_flops(self.model.input_shape) / 1e6
            self.log.info(f"Supernet FLOPs {full:.2f} M at {self.model.input_shape}, target "
                          f"{self.model.target_mflops:.2f} M")
        t_start = time.time()
        it_start = self.iter
        while self.epoch < self.max_epochs:
            self.train_loader.set_epoch(self.epoch)
            first = self.iter - self.epoch * self.iters_per_epoch
            t_data = time.time()
            window = []
            for i, (x, y) in enumerate(self.train_loader.iter_from(first), start=first):
                data_time = time.time() - t_data
                t0 = time.time()
                lr = self._set_lr()
                if self.is_dmcp:
                    stats = algorithm.dmcp_train_step(self.model, self.optimizer, self.arch_optimizer,
                                                      x, y, self.iter, self.rng, self.dist)
                else:
                    stats = algorithm.plain_train_step(self.net, self.optimizer, x, y, self.dist)
                self.iter += 1
                step_time = time.time() - t0
                window.append((step_time, data_time, stats))
                self.log.progress(i + 1, self.iters_per_epoch, f"Epoch {self.epoch + 1}")
                if self.iter % self.log_interval == 0 or i + 1 == self.iters_per_epoch:
                    self._log_train(i + 1, lr, window, t_start, it_start)
                    window = []
                t_data = time.time()
                if stop_at_iter is not None and self.iter >= stop_at_iter:
                    self.save_checkpoint(f"iter_{self.iter}.npz")
                    return
            self.epoch += 1
            if self.epoch % self.ckpt_interval == 0 or self.epoch == self.max_epochs:
                self.save_checkpoint(f"epoch_{self.epoch}.npz")
            if self.val_loader is not None and (self.epoch % self.val_interval == 0
                                                or self.epoch == self.max_epochs):
                self.validate()
        if self.is_dmcp and self.subnet_hook:
            self.sample_subnets()
        self.log.info("Training finished")

    def _log_train(self, i, lr, window, t_start, it_start):
        steps = [w[0] for w in window]
        datas = [w[1] for w in window]
        keys = sorted({k for w in window for k in w[2]})
        means = {k: float(np.mean([w[2][k] for w in window if k in w[2]])) for k in keys}
        done = self.iter - it_start
        eta = (time.time() - t_start) / max(done, 1) * (self.max_iters - self.iter)
        parts = [f"Epoch(train) [{self.epoch + 1}][{i:>{len(str(self.iters_per_epoch))}}/"
                 f"{self.iters_per_epoch}]", f"lr: {lr:.4e}", f"eta: {_fmt_eta(eta)}",
                 f"time: {np.mean(steps):.4f}", f"data_time: {np.mean(datas):.4f}"]
        parts += [f"{k}: {v:.4f}" for k, v in means.items()]
        self.log.info("  ".join(parts))
        self.log.scalar(dict(epoch=self.epoch + 1, iter=self.iter, lr=lr, time=float(np.mean(steps)),
                             data_time=float(np.mean(datas)), **means))

    # ------------------------------------------------------------ evaluation
    def evaluate(self, loader=None, progress="val"):
        loader = loader or self.val_loader
        net = self.net
        was = net.training
        net.eval()
        self.dist.broadcast_buffers(net)        # every rank evaluates rank 0's BN statistics
        topk = getattr(net.head, "topk", (1, 5))
        correct = np.zeros(len(topk), np.int64)
        total = 0
        n = len(loader)
        for b, (x, y) in enumerate(loader):
            with no_grad():
                logits = net.forward(x)
            kmax = min(max(topk), logits.shape[1])
            top = np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax]
            order = np.argsort(-np.take_along_axis(logits, top, 1), axis=1)
            top = np.take_along_axis(top, order, 1)
            for j, k in enumerate(topk):
                correct[j] += int((top[:, :min(k, kmax)] == y[:, None]).any(1).sum())
            total += len(y)
            self.log.progress(b + 1, n, progress)
        net.train(was)
        correct, total = self.dist.sum_counts(correct, total)
        return {f"accuracy/top{k}": 100.0 * c / max(total, 1) for k, c in zip(topk, correct)}

    def recalibrate_bn(self, batches=5):
        """Recompute BN running statistics at the current widths (cumulative average over
        a few training batches)."""
        self.net.train()
        # BNs the backbone keeps in eval mode (norm_eval, frozen stages) keep their statistics
        bns = [m for _, m in self.net.named_modules() if isinstance(m, BatchNorm2d) and m.training]
        saved = [(m.momentum, m.running_mean.copy(), m.running_var.copy(),
                  m.num_batches_tracked.copy()) for m in bns]
        for m in bns:
            m.running_mean[...] = 0.0
            m.running_var[...] = 1.0
        for i, (x, _) in enumerate(self.train_loader.iter_from(0)):
            if i >= batches:
                break
            for m in bns:
                m.momentum = 1.0 / (i + 1)
            with no_grad():
                self.net.forward(x)
        for m, (mom, *_) in zip(bns, saved):
            m.momentum = mom
        return bns, saved

    def validate(self):
        if self.is_dmcp:
            mut = self.model.mutator
            results = {}
            for mode in ("max", "min"):
                mut.set_widths(mode)
                bns, saved = self.recalibrate_bn()
                r = self.evaluate(progress=f"val {mode}")
                for m, (_, rm, rv, nb) in zip(bns, saved):
                    m.running_mean[...] = rm
                    m.running_var[...] = rv
                    m.num_batches_tracked[...] = nb
                results.update({f"{mode}/{k}": v for k, v in r.items()})
            mut.set_widths("max")
        else:
            results = self.evaluate()
        self.log.info(f"Epoch(val) [{self.epoch}]  " + "  ".join(f"{k}: {v:.4f}" for k, v in results.items()))
        self.log.scalar(dict(epoch=self.epoch, iter=self.iter, **results))
        return results

    # ------------------------------------------------------------ DMCPSubnetHook
    def sample_subnets(self):
        samples = algorithm.sample_subnets(self.model, self.subnet_hook["num"], self.rng,
                                           self.subnet_hook["max_draws"])
        if self.is_main:
            write_samples(self.model, samples, os.path.join(self.work_dir, "model_sample"),
                          self.log, self.subnet_hook["max_draws"])
        return samples


def write_samples(model, samples, out_dir, log, max_draws):
    """model_sample/: subnet_*.json, expected_ch.json and the two charts; a WARNING
    when draws or expected_ch missed the window (their subnets are written all the same)."""
    os.makedirs(out_dir, exist_ok=True)
    if samples["missed"]:
        log.warning(algorithm.missed_window_message(samples, max_draws))
    if not samples.get("expected_in_window", True):
        log.warning(algorithm.expected_off_target_message(samples))
    for name, (choice, flops) in samples["subnets"].items():
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(choice, f, indent=2)
        log.info(f"Sampled {name}: {flops / 1e6:.2f} MFLOPs (target {samples['target_mflops']:.2f} M)")
    from .plots import plot_unit_widths, plot_flops_histogram
    plot_unit_widths(model, samples, os.path.join(out_dir, "unit_widths.png"))
    plot_flops_histogram(samples["histogram"], samples["target_mflops"],
                         os.path.join(out_dir, "flops_histogram.png"))
