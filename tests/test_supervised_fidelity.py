"""The supervised benchmarks against the official code (docs/fidelity.md): the Continual ImageNet ConvNet's
PyTorch-default init and CBP's redraw from it, the head zeroed and the class pairs of one order per seed,
the official per-(sample, position) dormant fraction, and the 17 CBP groups of the official CIFAR ResNet."""

import math

import pytest
import torch
from test_supervised import _NoLogs, _resume_matches, cfg_of, write_cifar100, write_imagenet_npy
from torch import nn

from rl_plasticity.core.convnet import ConvNet
from rl_plasticity.core.metrics import dormant_fraction_per_position, probe_metrics
from rl_plasticity.core.resnet import ResNet18
from rl_plasticity.problems import continual_imagenet, incremental_cifar

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(init):
    net = ConvNet(2, init=init)
    net.reset_parameters([torch.Generator().manual_seed(0)])
    return net


def _fan_in(layer):
    return layer.weight[0, 0].numel()


def test_pytorch_default_init_matches_torch_layers_and_is_2_45x_narrower_than_kaiming():
    net, kaiming = _net("pytorch_default"), _net("kaiming")
    fan_ins = [_fan_in(layer) for layer in net.layers]
    assert fan_ins == [75, 288, 576, 512, 128, 128]  # conv 5x5x3, 3x3x32, 3x3x64; fc 128*2*2, 128, 128
    for layer, k_layer, fan_in in zip(net.layers, kaiming.layers, fan_ins):
        bound = 1 / math.sqrt(fan_in)
        w, b = layer.weight.detach(), layer.bias.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        assert b.abs().max() <= bound and (b != 0).all()  # biases drawn, not 0
        if b.numel() >= 32:  # (the head has only 2)
            assert b.abs().max() > 0.8 * bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        assert (k_layer.bias == 0).all()
    # ReLU layers: Kaiming's bound sqrt(6/fan_in) is sqrt(6) = 2.449x the default's 1/sqrt(fan_in).
    assert kaiming.layers[0].bound / net.layers[0].bound == pytest.approx(math.sqrt(6))
    # torch's own defaults (what the official conv_net.py keeps) have the same bounds.
    torch.manual_seed(0)
    for layer in (nn.Conv2d(3, 32, 5), nn.Linear(512, 128)):
        bound = 1 / math.sqrt(layer.weight[0].numel())
        for t in (layer.weight, layer.bias):
            assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound


def test_cbp_redraws_a_unit_from_the_layers_own_default_distribution_with_bias_0():
    net = _net("pytorch_default")
    g = [torch.Generator().manual_seed(1)]
    for group, layer in zip(net.groups, net.layers):
        before = layer.weight.detach().clone()
        mask = torch.ones(1, group.num_units, dtype=torch.bool)
        mask[0, 0] = False
        group.reinit(mask, g)
        bound = 1 / math.sqrt(_fan_in(layer))
        w = layer.weight.detach()[0, 1:]
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert not torch.equal(w, before[0, 1:]) and torch.equal(layer.weight[0, 0], before[0, 0])
        assert (layer.bias[0, 1:] == 0).all() and layer.bias[0, 0] != 0  # official gen_new_features: bias 0


def test_official_dormant_fraction_counts_sample_position_pairs_by_hand():
    # 50 samples x 4 positions = 200 pairs per unit.
    f = torch.zeros(1, 50, 4, 2, 2)
    f[0, 0, 0, 0, 0] = 1.0  # unit 0: 1 pair (0.5%); per sample 1 of 50 (2%)
    f[0, :, 1, 0, 0] = 1.0  # unit 1: one position in every sample (25%)
    # unit 2: never active
    f[0, 0, 3, 0, 0] = f[0, 0, 3, 1, 1] = 1.0  # unit 3: 2 pairs = exactly 1%: not below it
    assert dormant_fraction_per_position(f).tolist() == [0.5]  # units 0 and 2
    # Through probe_metrics, on a stub net whose one group already holds f: averaging positions first
    # finds only unit 2 dormant (units 0 and 3 are active in 1 of 50 samples, 2%).
    net = _StubNet(f)
    assert probe_metrics(net, None, dormant="official")["conv/dormant_fraction"].tolist() == [0.5]
    assert probe_metrics(net, None, dormant="spatial_mean")["conv/dormant_fraction"].tolist() == [0.25]


class _StubNet:
    def __init__(self, activation):
        self.groups = [type("Group", (), {"name": "conv", "activation": activation})()]
        self.layers = []

    def __call__(self, x):
        pass


def test_cifar_cbp_acts_on_the_17_official_conv_outputs_or_the_8_inner_convs():
    inner, full = ResNet18(width=2), ResNet18(width=2, groups="all")
    assert len(inner.groups) == 8 and len(full.groups) == 17
    shortcuts = {id(m) for b in full.blocks if b.shortcut is not None for m in b.shortcut}
    assert not shortcuts & {id(g.incoming) for g in full.groups} and len(shortcuts) == 6  # 3 convs + 3 norms
    assert full.groups[0].incoming is full.stem and full.groups[0].norm is full.stem_bn
    assert full.groups[-1].incoming is full.blocks[-1].conv2 and full.groups[-1].outgoing is full.head
    for g, nxt in zip(full.groups, full.groups[1:]):
        assert g.outgoing is nxt.incoming  # the next conv of the official weight_layers list
    full.reset_parameters([torch.Generator().manual_seed(0)])
    x = torch.randn(3, 3, 32, 32)
    full(x)
    taps = full.feature_taps()
    assert all(torch.equal(t, g.activation) for t, g in zip(taps, full.groups))
    assert taps[-1].shape == (1, 3, 16) and taps[0].shape == (1, 3, 2, 32, 32)
    # A replaced residual-stream channel: fresh kernel, batch norm reset, the next conv's column zeroed.
    g = full.groups[2]  # block0.0.out
    mask = torch.zeros(1, g.num_units, dtype=torch.bool)
    mask[0, 1] = True
    with torch.no_grad():
        g.norm.weight.fill_(3.0)
    g.reinit(mask, [torch.Generator().manual_seed(2)])
    assert g.norm.weight[0, 1] == 1 and g.norm.weight[0, 0] == 3 and (g.outgoing.weight[0, :, 1] == 0).all()


def test_cifar_config_default_is_17_groups_and_cbp_resume_equals_uninterrupted(tmp_path):
    root = write_cifar100(tmp_path / "cifar-100-python")
    common = [f"data.path={root}", "increments=2", "classes_per_increment=3", "epochs_per_increment=2",
              "lr_milestones=[1]", "batch_size=4", "net.width=2", "log.probe_size=8",
              "cbp.replacement_rate=0.05", "cbp.maturity_threshold=2"]
    data = incremental_cifar.load_cifar100(root)
    inner = incremental_cifar.IncrementalCifarRun(cfg_of("incremental_cifar", "cbp", *common, "net.cbp_groups=inner"),
                                                  0, data)
    assert len(inner.learner.methods[0].groups) == 8
    cfg = cfg_of("incremental_cifar", "cbp", *common)
    straight, _ = _resume_matches(tmp_path, lambda: incremental_cifar.IncrementalCifarRun(cfg, 0, data), stop_after=3)
    cbp = straight.learner.methods[0]
    assert len(cbp.groups) == 17 and sum(int(r) for r in cbp.replacements) > 0
    h = straight.history[0]
    assert {"stem/dormant_fraction", "block3.1.out/dormant_fraction", "dormant_fraction"} <= set(h)
    assert 0 <= h["dormant_fraction"] <= 1


def test_continual_imagenet_zeroes_the_head_and_takes_pairs_from_one_class_order(tmp_path):
    write_imagenet_npy(tmp_path / "in32", classes=6, per_class=6)
    cfg = cfg_of("continual_imagenet", "bp", f"data.path={tmp_path / 'in32'}", "data.train_per_class=4",
                 "data.test_per_class=2", "tasks=7", "epochs_per_task=1", "batch_size=4", "net.channels=[2, 2, 2]",
                 "net.hidden=[4, 4]")
    classes = continual_imagenet.load_classes(cfg)
    run = continual_imagenet.ContinualImageNetRun(cfg, 0, classes)
    assert (run.net.head.weight == 0).all() and (run.net.head.bias == 0).all()
    assert (run.net.layers[0].bias != 0).all()  # PyTorch-default init below the head
    pairs = []
    while not run.done():
        pairs.append(tuple(run.pair))
        run.advance(_NoLogs())
        if run.epoch == 0 and not run.done():
            assert (run.net.head.weight == 0).all()  # zeroed again at the switch
    assert len(set(sum(pairs[:3], ()))) == 6  # one pass: 3 disjoint pairs cover the 6 classes
    assert pairs[3:6] == pairs[:3] and pairs[6] == pairs[0]  # then the same order again
