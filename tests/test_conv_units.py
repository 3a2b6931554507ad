"""Conv channels as units: CBP, ReDo and shrink-and-perturb on tiny conv nets checked by hand."""

import math

import pytest
import torch
from torch import nn

from rl_plasticity.core.conv import BatchNorm, ChannelGroup, Conv2d, flattened_columns
from rl_plasticity.core.convnet import ConvNet, LinearClassifier
from rl_plasticity.core.layers import Linear
from rl_plasticity.core.methods import ContinualBackprop, ReDo, ShrinkPerturb
from rl_plasticity.core.methods.reset import Reset
from rl_plasticity.core.metrics import probe_metrics
from rl_plasticity.core.optim import SGD, Adam
from rl_plasticity.core.resnet import ResNet18

pytestmark = pytest.mark.usefixtures("one_thread")


# Conv 1->2 channels (1x1 kernels, weights [1, 0.5]) on one 2x2 image [[1, 2], [3, 4]], flattened into
# a linear layer 8 -> 1. Channel 0 = [1, 2, 3, 4] (mean |h| 2.5), channel 1 = [0.5, 1, 1.5, 2] (1.25).
# Outgoing spatial blocks: channel 0 [1, 1, 1, 1] (mean |w| 1), channel 1 [0.4] * 4 (0.4).
# Contribution = [2.5, 0.5].
X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
CONTRIBUTION = torch.tensor([2.5, 0.5])


class ConvToLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = Conv2d(1, 2, 1, bound=0.3)
        self.fc = Linear(8, 1, bound=0.1)
        with torch.no_grad():
            self.conv.weight.view(-1)[:] = torch.tensor([1.0, 0.5])
            self.fc.weight[0, 0] = torch.tensor([1.0] * 4 + [0.4] * 4)
        self.layers = [self.conv, self.fc]
        self.groups = [ChannelGroup("conv", self.conv, self.fc, outgoing_view=flattened_columns(2))]

    def forward(self, x):
        h = torch.relu(self.conv(x))
        self.groups[0].activation = h.detach().unsqueeze(0)
        return self.fc(h.flatten(1))


class ConvBNConv(nn.Module):
    """conv 1->2 (no bias) -> batch norm -> relu -> conv 2->1 (3x3, with bias)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = Conv2d(1, 2, 1, bound=0.3, bias=False), BatchNorm(2)
        self.conv2 = Conv2d(2, 1, 3, bound=0.2, padding=1)
        self.layers = [self.conv1, self.conv2]
        self.groups = [ChannelGroup("conv1", self.conv1, self.conv2, norm=self.bn)]

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        self.groups[0].activation = h.detach().unsqueeze(0)
        return self.conv2(h)


def cbp_for(net, optimizer, **kw):
    return ContinualBackprop(net.groups, optimizer, [torch.Generator().manual_seed(0)], **kw)


def test_conv_contribution_averages_batch_and_positions_by_hand():
    net = ConvToLinear()
    cbp = cbp_for(net, SGD(net.parameters(), lr=0.0), replacement_rate=0.0, utility="contribution")
    net(X)
    cbp.after_step()
    assert torch.allclose(net.groups[0].mean_abs_outgoing()[0], torch.tensor([1.0, 0.4]))
    assert torch.allclose(cbp.bias_corrected_utility(0)[0], CONTRIBUTION)


def test_conv_adaptable_contribution_by_hand():
    net = ConvToLinear()
    cbp = cbp_for(net, SGD(net.parameters(), lr=0.0), replacement_rate=0.0, utility="adaptable_contribution")
    net(X)
    cbp.after_step()
    # |h - mean| over positions: channel 0 [1.5, .5, .5, 1.5] -> 1; channel 1 half that -> 0.5.
    # Mean |incoming w| = [1, 0.5] (bias is not a weight).
    expected = torch.tensor([1.0, 0.4]) * torch.tensor([1.0, 0.5]) / torch.tensor([1.0, 0.5])
    assert torch.allclose(cbp.bias_corrected_utility(0)[0], expected)


def test_replaced_channel_gets_fresh_kernel_zero_spatial_block_and_fresh_adam_state():
    net = ConvToLinear()
    adam = Adam(net.parameters(), lr=0.0)  # builds up state, leaves the hand-set weights alone
    for _ in range(5):
        adam.step([torch.randn_like(p) for p in net.parameters()])
    before = {k: [t.clone() for t in v] for k, v in adam.state.items()}
    fc_before = net.fc.weight.detach().clone()
    cbp = cbp_for(net, adam, replacement_rate=0.5, maturity_threshold=0, utility="contribution")
    net(X)
    cbp.after_step()  # 2 eligible x 0.5 = 1 replacement: channel 1 (contribution 0.5 < 2.5)
    assert cbp.replacements[0].item() == 1
    w = net.conv.weight[0]
    assert w[0].item() == 1.0 and w[1].item() != 0.5 and abs(w[1].item()) <= 0.3  # the layer's bound
    assert net.fc.weight[0, 0, 4:].tolist() == [0.0] * 4  # the whole spatial block
    assert torch.equal(net.fc.weight[0, 0, :4], fc_before[0, 0, :4])
    # Mean activation 1.25 x sum of its old block (1.6) moved into the output bias.
    assert net.fc.bias[0, 0].item() == pytest.approx(2.0)
    conv_w, conv_b, fc_w, fc_b = range(4)
    fresh_values = getattr(adam, "fresh_state", None) or {name: 0.0 for name in adam.state}
    for name, fresh in fresh_values.items():
        s, old = adam.state[name], before[name]
        assert torch.all(s[conv_w][0, 1] == fresh) and s[conv_b][0, 1] == fresh
        assert torch.all(s[fc_w][0, 0, 4:] == fresh)
        assert torch.equal(s[conv_w][0, 0], old[conv_w][0, 0]) and torch.equal(s[conv_b][0, 0], old[conv_b][0, 0])
        assert torch.equal(s[fc_w][0, 0, :4], old[fc_w][0, 0, :4]) and torch.equal(s[fc_b], old[fc_b])


def test_batch_norm_and_its_optimizer_state_are_reset_with_the_channel():
    torch.manual_seed(0)
    net = ConvBNConv()
    with torch.no_grad():
        net.conv1.weight.view(-1)[:] = torch.tensor([1.0, -0.01])
        net.conv2.weight.normal_()
        net.bn.weight[:] = torch.tensor([[2.0, 3.0]])
        net.bn.bias[:] = torch.tensor([[-0.5, -4.0]])  # channel 1 is dead after relu: dormant
    net(torch.rand(4, 1, 3, 3))  # training-mode forward moves the running statistics
    assert net.bn.running_var[0, 1].item() != 1.0
    opt = SGD(net.parameters(), lr=0.0, momentum=0.9)  # state only
    opt.step([torch.ones_like(p) for p in net.parameters()])
    conv2_before = net.conv2.weight.detach().clone()
    bn_mean_before = net.bn.running_mean[0, 0].item()
    redo = ReDo(net.groups, opt, [torch.Generator().manual_seed(1)], threshold=0.1, every=1)
    net(torch.rand(4, 1, 3, 3))
    redo.after_step()
    assert redo.resets[0].item() == 1
    assert net.bn.weight[0].tolist() == [2.0, 1.0] and net.bn.bias[0].tolist() == [-0.5, 0.0]
    assert net.bn.running_mean[0, 1].item() == 0.0 and net.bn.running_var[0, 1].item() == 1.0
    assert net.bn.running_mean[0, 0].item() != 0.0 and net.bn.running_mean[0, 0].item() != bn_mean_before
    assert torch.all(net.conv2.weight[0, :, 1] == 0)  # the whole 3x3 kernel slice read from channel 1
    assert torch.equal(net.conv2.weight[0, :, 0], conv2_before[0, :, 0])
    assert net.conv1.weight[0, 0].item() == 1.0 and net.conv1.weight[0, 1].item() != -0.01
    buf = opt.state["momentum"]  # params: conv1.weight, bn.weight, bn.bias, conv2.weight, conv2.bias
    assert buf[1][0].tolist() == [1.0, 0.0] and buf[2][0].tolist() == [1.0, 0.0]
    assert torch.all(buf[0][0, 1] == 0) and torch.all(buf[3][0, :, 1] == 0) and torch.all(buf[3][0, :, 0] == 1)


def test_constant_channel_folds_into_next_conv_bias_as_kernel_sum():
    net = ConvBNConv()
    with torch.no_grad():
        net.conv2.weight[0, 0, 0] = torch.arange(9.0).view(3, 3)  # sum 36
        net.conv2.weight[0, 0, 1] = 1.0  # sum 9
    net.groups[0].add_to_outgoing_bias(torch.tensor([[0.5, 2.0]]))
    assert net.conv2.bias[0, 0].item() == pytest.approx(0.5 * 36 + 2.0 * 9)


def test_paper_convnet_groups_and_cbp_replace_channels_and_fc_units():
    net = ConvNet(num_classes=2)
    net.reset_parameters([torch.Generator().manual_seed(0)])
    assert [g.name for g in net.groups] == ["conv0", "conv1", "conv2", "fc0", "fc1"]
    assert net.fcs[0].in_features == 128 * 2 * 2
    opt = SGD(net.parameters(), lr=0.01, momentum=0.9)
    cbp = cbp_for(net, opt, replacement_rate=0.05, maturity_threshold=1, utility="contribution")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.step(list(torch.autograd.grad(loss, list(net.parameters()))))
        cbp.after_step()
    # Eligible from step 2: 0.05 x units, floored, with the remainder carried (32 units: 1.6 -> 1, then
    # 0.6 + 31 x 0.05 = 2.15 -> 2; 64: 3 + 3; 128: 6 + 6).
    assert [int(r) for r in cbp.replacements] == [3, 6, 12, 12, 12]
    metrics = probe_metrics(net, x)
    assert set(metrics) >= {"conv2/dormant_fraction", "fc1/stable_rank", "layer5/mean_abs_weight"}


def test_head_reset_redraws_the_head_and_its_optimizer_state():
    net = LinearClassifier(12, 2)
    net.reset_parameters([torch.Generator().manual_seed(0)])
    opt = SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt.step([torch.ones_like(p) for p in net.parameters()])
    old = net.head.weight.detach().clone()
    reset = Reset([net], [], opt, [torch.Generator().manual_seed(5)], what="head")
    with torch.no_grad():
        net.head.bias += 1
    reset.on_task_switch()
    assert not torch.equal(net.head.weight, old) and torch.all(net.head.bias == 0)
    assert all(torch.all(b == 0) for b in opt.state["momentum"])
    assert net.head.weight.abs().max() <= math.sqrt(3 / 12)


def test_resnet_cbp_replaces_inner_channels_only():
    net = ResNet18(num_classes=10, width=4)
    net.reset_parameters([torch.Generator().manual_seed(0)])
    assert len(net.groups) == 8 and all(g.outgoing is b.conv2 for g, b in zip(net.groups, net.blocks))
    opt = SGD(net.parameters(), lr=0.0)
    x = torch.randn(4, 3, 32, 32)
    stream = {n: p.detach().clone() for n, p in net.named_parameters() if "conv1" not in n and "bn1" not in n}
    net(x)
    cbp = cbp_for(net, opt, replacement_rate=0.5, maturity_threshold=0, utility="contribution")
    cbp.after_step()
    assert all(int(r) >= 1 for r in cbp.replacements)
    for name, p in net.named_parameters():
        if name in stream and not name.endswith("conv2.weight"):
            assert torch.equal(p, stream[name]), name  # stem, shortcuts, bn2, head: the residual stream
    for i, block in enumerate(net.blocks):  # conv2 changed only in the replaced input channels
        replaced = cbp.age[i][0] == 0
        w, w0 = block.conv2.weight[0], stream[f"blocks.{i}.conv2.weight"][0]
        assert torch.all(w[:, replaced] == 0) and torch.equal(w[:, ~replaced], w0[:, ~replaced])
    assert net(x).shape == (4, 10) and net.features.shape == (4, 32)


def test_shrink_and_perturb_and_redo_run_on_resnet():
    net = ResNet18(num_classes=5, width=4)
    net.reset_parameters([torch.Generator().manual_seed(0)])
    params = list(net.parameters())
    opt = SGD(params, lr=0.01, momentum=0.9)
    g = [torch.Generator().manual_seed(3)]
    snp, redo = ShrinkPerturb(params, g, shrink=1e-3, noise_std=1e-3), ReDo(net.groups, opt, g, every=1)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    before = [p.detach().clone() for p in params]
    loss = nn.functional.cross_entropy(net(x), y)
    opt.step(list(torch.autograd.grad(loss, params)))
    snp.after_step()
    redo.after_step()
    assert all(not torch.equal(p, q) for p, q in zip(params, before))
    assert torch.isfinite(net(x)).all()
