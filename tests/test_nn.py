"""dmcp.nn layers compose into a network that trains, and match a PyTorch
model with the same weights (float64 reference)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmcp import nn

torch.set_num_threads(1)
f32, f64 = np.float32, torch.float64


class TinyNet(nn.Module):
    """conv-bn-relu-maxpool-conv-bn-relu-gap-linear on 1x12x12 images, 4 classes."""

    def __init__(self, rng):
        self.layers = [
            nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(4, 8, 3, padding=1, rng=rng), nn.BatchNorm2d(8), nn.ReLU(),
            nn.GlobalAvgPool(), nn.Linear(8, 4, rng=rng),
        ]

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dout):
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout


def torch_twin(net):
    """The same network in PyTorch (float64), weights copied from `net`."""
    tnet = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, 1),
        torch.nn.Conv2d(4, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).double()
    pairs = []                  # (dmcp Parameter, torch parameter), in model order
    for mine, theirs in zip([m for m in net.layers if m.parameters()],
                            [m for m in tnet if list(m.parameters())]):
        for name in ("weight", "bias"):
            p = getattr(mine, name)
            if p is not None:
                tp = getattr(theirs, name)
                with torch.no_grad():
                    tp.copy_(torch.tensor(p.data, dtype=f64))
                pairs.append((p, tp))
    assert len(pairs) == len(net.parameters())
    return tnet, pairs


@pytest.fixture
def batch():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 1, 12, 12)).astype(f32)
    y = rng.integers(0, 4, 16)
    return x, y


def test_parameters_are_discovered_in_order():
    net = TinyNet(np.random.default_rng(0))
    names = [n for n, _ in net.named_parameters()]
    assert names == ["layers.0.weight", "layers.1.weight", "layers.1.bias", "layers.4.weight",
                     "layers.5.weight", "layers.5.bias", "layers.8.weight", "layers.8.bias"]
    assert [n for n, _ in net.named_buffers()][:3] == [
        "layers.1.running_mean", "layers.1.running_var", "layers.1.num_batches_tracked"]
    net.eval()
    assert not any(m.training for _, m in net.named_modules())
    net.train()
    assert all(m.training for _, m in net.named_modules())


def test_tiny_cnn_trains_with_sgd(batch):
    x, y = batch
    net = TinyNet(np.random.default_rng(0))
    crit = nn.CrossEntropyLoss()
    opt = nn.SGD(net.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        losses.append(crit(net(x), y))
        net.backward(crit.backward())
        opt.step()
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.3 * losses[0], losses


def test_tiny_cnn_matches_torch(batch, close):
    x, y = batch
    net = TinyNet(np.random.default_rng(0))
    tnet, pairs = torch_twin(net)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = crit(net(x), y)
    net.backward(crit.backward())

    xt = torch.tensor(x, dtype=f64)
    tloss = F.cross_entropy(tnet(xt), torch.tensor(y), label_smoothing=0.1)
    tloss.backward()
    close(loss, tloss.item(), "nn tiny cnn loss", rtol=1e-5, atol=1e-6)
    for p, tp in pairs:
        close(p.grad, tp.grad.numpy(), "nn tiny cnn grads", rtol=1e-4, atol=1e-6)
    for mine, theirs in ((net.layers[1], tnet[1]), (net.layers[5], tnet[5])):
        close(mine.running_mean, theirs.running_mean.numpy(), "nn batchnorm running stats")
        close(mine.running_var, theirs.running_var.numpy(), "nn batchnorm running stats")
        assert int(mine.num_batches_tracked) == int(theirs.num_batches_tracked) == 1

    # one SGD step each, then eval-mode logits agree too
    opt = nn.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3,
                           nesterov=True)
    opt.step()
    topt.step()
    for p, tp in pairs:
        close(p.data, tp.detach().numpy(), "nn sgd step", rtol=1e-5, atol=1e-6)
    net.eval()
    tnet.eval()
    with torch.no_grad():
        close(net(x), tnet(xt).numpy(), "nn tiny cnn eval logits", rtol=1e-4, atol=1e-5)


def test_adam_step_matches_torch(batch, close):
    x, y = batch
    net = TinyNet(np.random.default_rng(1))
    tnet, pairs = torch_twin(net)
    opt = nn.Adam(net.parameters(), lr=1e-2, weight_decay=1e-2)
    topt = torch.optim.Adam(tnet.parameters(), lr=1e-2, weight_decay=1e-2)
    crit = nn.CrossEntropyLoss()
    xt, yt = torch.tensor(x, dtype=f64), torch.tensor(y)
    for _ in range(2):
        opt.zero_grad()
        topt.zero_grad()
        crit(net(x), y)
        net.backward(crit.backward())
        F.cross_entropy(tnet(xt), yt).backward()
        opt.step()
        topt.step()
        # Adam normalises each update to ~lr, so grads' float32 rounding shows at ~1e-4 * lr
        for p, tp in pairs:
            close(p.data, tp.detach().numpy(), "nn adam step", rtol=1e-4, atol=1e-5)


def test_kldivergence_matches_torch(close):
    rng = np.random.default_rng(2)
    s, t = rng.standard_normal((6, 5)).astype(f32), rng.standard_normal((6, 5)).astype(f32)
    kd = nn.KLDivergence(tau=3.0, loss_weight=0.5)
    loss = kd(s, t)
    ds = kd.backward()
    st = torch.tensor(s, dtype=f64, requires_grad=True)
    ref = 0.5 * 9.0 * F.kl_div(F.log_softmax(st / 3, 1), F.softmax(torch.tensor(t, dtype=f64) / 3, 1),
                               reduction="batchmean")
    ref.backward()
    close(loss, ref.item(), "nn kldiv", rtol=1e-5, atol=1e-7)
    close(ds, st.grad.numpy(), "nn kldiv", rtol=1e-5, atol=1e-7)


def test_sliced_conv_linear_and_depthwise_follow_widths(close):
    """out_active and the input's channel count select the first channels."""
    rng = np.random.default_rng(3)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=True, rng=rng)
    conv.out_active = 5
    x = rng.standard_normal((2, 4, 7, 7)).astype(f32)
    out = conv(x)
    assert out.shape == (2, 5, 4, 4)
    ref = F.conv2d(torch.tensor(x), torch.tensor(conv.weight.data[:5, :4]),
                   torch.tensor(conv.bias.data[:5]), 2, 1)
    close(out, ref.numpy(), "nn sliced conv", rtol=1e-5, atol=1e-6)
    conv.backward(np.ones_like(out))
    assert not conv.weight.grad[5:].any() and not conv.weight.grad[:, 4:].any()

    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, rng=rng)
    xd = rng.standard_normal((2, 3, 5, 5)).astype(f32)
    outd = dw(xd)
    assert outd.shape == (2, 3, 5, 5)
    refd = F.conv2d(torch.tensor(xd), torch.tensor(dw.weight.data[:3]), None, 1, 1, 1, 3)
    close(outd, refd.numpy(), "nn sliced conv", rtol=1e-5, atol=1e-6)

    lin = nn.Linear(10, 6, rng=rng)
    lin.out_active = 4
    xl = rng.standard_normal((3, 7)).astype(f32)
    outl = lin(xl)
    refl = F.linear(torch.tensor(xl), torch.tensor(lin.weight.data[:4, :7]), torch.tensor(lin.bias.data[:4]))
    close(outl, refl.numpy(), "nn sliced linear", rtol=1e-5, atol=1e-6)

    bn = nn.BatchNorm2d(8)
    outb = bn(x)                                     # 4 of 8 channels
    assert outb.shape == x.shape and np.array_equal(bn.running_mean[4:], np.zeros(4, f32))


def test_relu6_dropout_and_input_checks():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 3, 4, 4)) * 5).astype(f32)
    r6 = nn.ReLU6()
    assert np.array_equal(r6(x), np.clip(x, 0, 6))
    drop = nn.Dropout(0.5, seed=1)
    y1 = drop(x)
    assert np.array_equal(drop.backward(np.ones_like(x)), drop._mask)
    y2 = drop(x)
    assert not np.array_equal(y1, y2), "each call draws a new mask"
    drop.eval()
    assert drop(x) is x or np.array_equal(drop(x), x)
    with pytest.raises(TypeError, match="float32"):
        nn.Conv2d(3, 4, 3)(x.astype(np.float64))
    with pytest.raises(ValueError, match="labels"):
        nn.CrossEntropyLoss()(np.zeros((2, 3), f32), np.zeros(3, np.int64))


class _ThreadRanks:
    """A process group whose ranks are threads: allreduce_sum sums over them."""

    def __init__(self, world_size):
        import threading
        self.world_size = world_size
        self._barrier = threading.Barrier(world_size)
        self._parts = [None] * world_size
        self.local = threading.local()

    def allreduce_sum(self, array):
        self._parts[self.local.rank] = array.copy()
        self._barrier.wait()
        total = np.sum(self._parts, axis=0)
        self._barrier.wait()
        array[...] = total
        return array


@pytest.mark.parametrize("epilogue", ["plain", "gate+relu6"])
def test_syncbn_over_ranks_equals_one_batch_norm(epilogue, close, monkeypatch):
    """SyncBN on 3 thread-ranks with a third of the batch each == BatchNorm2d on the
    whole batch (the reference tested against PyTorch): outputs, input gradients,
    summed parameter and gate gradients, running statistics; on a sliced input
    (5 of 8 channels), and at full width through a Markov gate and ReLU6."""
    import threading
    from dmcp import dist
    rng = np.random.default_rng(7)
    x = rng.normal(1.5, 2.0, (6, 5 if epilogue == "plain" else 8, 4, 3)).astype(np.float32)
    dy = rng.normal(0.0, 1.0, x.shape).astype(np.float32)
    gamma = rng.normal(1.0, 0.3, 8).astype(np.float32)
    beta = rng.normal(0.2, 0.3, 8).astype(np.float32)
    P = np.array([1.0, 0.8, 0.5], np.float32)            # min_ch 2, group_size 2 (blocks of 2)

    def make(cls):
        bn = cls(8)
        bn.weight.data[...] = gamma
        bn.bias.data[...] = beta
        return bn

    def run(bn, xs, dys):
        kw = {}
        dP = np.zeros_like(P)
        if epilogue != "plain":
            kw = dict(gate=(P, dP, 2, 2), act=6.0)
        y = bn.forward(xs, **kw)
        return y, bn.backward(dys), dP

    ref = make(nn.BatchNorm2d)
    y, dx, dP = run(ref, x, dy)
    group = _ThreadRanks(3)
    monkeypatch.setattr(dist, "_group", group)
    mods = [make(nn.SyncBatchNorm2d) for _ in range(3)]
    got = [None] * 3

    def rank(r):
        group.local.rank = r
        got[r] = run(mods[r], x[2 * r:2 * r + 2].copy(), dy[2 * r:2 * r + 2].copy())
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(g is not None for g in got)
    close(np.concatenate([g[0] for g in got]), y, "syncbn forward", 1e-5, 1e-6)
    close(np.concatenate([g[1] for g in got]), dx, "syncbn backward", 1e-5, 1e-6)
    close(sum(g[2] for g in got), dP, "syncbn gate grad", 1e-5, 1e-6)
    close(sum(m.weight.grad for m in mods), ref.weight.grad, "syncbn dgamma", 1e-5, 1e-6)
    close(sum(m.bias.grad for m in mods), ref.bias.grad, "syncbn dbeta", 1e-5, 1e-6)
    for m in mods:
        close(m.running_mean, ref.running_mean, "syncbn running stats", 1e-6, 1e-7)
        close(m.running_var, ref.running_var, "syncbn running stats", 1e-6, 1e-7)
        assert int(m.num_batches_tracked) == 1
    # eval mode and a single-process group never communicate
    monkeypatch.setattr(dist, "_group", None)
    solo = make(nn.SyncBatchNorm2d)
    np.testing.assert_array_equal(solo.forward(x), make(nn.BatchNorm2d).forward(x))


def test_norm_cfg_builds_the_named_layer():
    from dmcp.models import ResNet, norm_layer
    from dmcp.config import UserError
    net = ResNet(depth=20, small_input=True, in_channels=1,
                 norm_cfg=dict(type="SyncBN", requires_grad=True, eps=1e-3, momentum=0.05))
    bns = [m for _, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(type(m) is nn.SyncBatchNorm2d and m.eps == 1e-3 and m.momentum == 0.05
                       for m in bns)
    frozen = norm_layer(dict(type="BN", requires_grad=False))(4)
    assert type(frozen) is nn.BatchNorm2d and not frozen.weight.requires_grad
    for bad, says in [(dict(type="GN"), "'GN' is not one of"), (dict(type="SynBN"), "SyncBN"),
                      (dict(type="BN", eps=-1), "eps=-1"), (dict(type="BN", momentun=0.1), "momentun"),
                      (dict(type="BN", requires_grad="no"), "requires_grad")]:
        with pytest.raises(UserError, match=says):
            norm_layer(bad)
