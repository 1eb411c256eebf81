import pytest
import torch
from torch import nn

from gendistill.nn.nets import ConvNet, InstanceNorm, create_network, list_networks
from gendistill.utils.errors import GendistillError, NetworkInputError


def test_convnet3_matches_reference_structure():
    net = create_network("convnet", 1, 10, 28)
    assert isinstance(net, ConvNet)
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, nn.GroupNorm)]
    pools = [m for m in net.features if isinstance(m, nn.AvgPool2d)]
    assert [c.out_channels for c in convs] == [128] * 3 and convs[0].padding == (3, 3) and convs[1].padding == (1, 1)
    assert all(n.num_groups == 128 and n.num_channels == 128 and n.affine for n in norms) and len(pools) == 3
    assert net.classifier.in_features == 2048
    assert net.embed(torch.zeros(2, 1, 28, 28)).shape == (2, 2048)
    net32 = create_network("convnet", 3, 10, 32)
    assert net32.features[0].padding == (1, 1) and net32.embed(torch.zeros(1, 3, 32, 32)).shape == (1, 2048)


def test_instance_norm_is_group_norm_and_runs_in_float32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(0)
    norm, ref = InstanceNorm(8), nn.GroupNorm(8, 8)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8, generator=gen))
        norm.bias.copy_(torch.randn(8, generator=gen))
    ref.load_state_dict(norm.state_dict())  # same parameters and keys as nn.GroupNorm(C, C)
    x = torch.randn(3, 8, 6, 6, generator=gen)
    torch.testing.assert_close(norm(x), ref(x))
    half = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        out = norm(half)
    assert out.dtype == torch.float32  # the norm of the bf16 activation, computed in float32
    torch.testing.assert_close(out, ref(half.detach().float()))
    out.sum().backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad).all()
    with torch.autocast("cpu", torch.bfloat16):  # a whole ConvNet-3 under autocast: float32 norms, finite logits
        logits = create_network("convnet", 1, 10, 28, seed=0)(torch.randn(2, 1, 28, 28, generator=gen))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name,norm", [("convnet_bn", nn.BatchNorm2d), ("convnet_ln", nn.LayerNorm),
                                       ("convnet_nn", None)])
def test_convnet_norm_variants(name, norm):
    net = create_network(name, 3, 10, 32)
    if norm is None:
        assert not any(isinstance(m, nn.GroupNorm | nn.BatchNorm2d | nn.LayerNorm) for m in net.modules())
    else:
        assert any(isinstance(m, norm) for m in net.modules())
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_convnet_depth_width_act_pool():
    net = create_network("convnet_d4_w32_sigmoid_max", 3, 7, 64)
    assert net.feature_dim == 32 * 4 * 4 and net(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    assert any(isinstance(m, nn.Sigmoid) for m in net.modules())
    assert any(isinstance(m, nn.MaxPool2d) for m in net.modules())


@pytest.mark.parametrize("name", sorted(set(list_networks())))
@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_every_registered_network_forwards_and_embeds(name, size, channels):
    if name == "alexcifarnet" and size != 32:
        with pytest.raises(NetworkInputError, match="32x32"):
            create_network(name, channels, 10, size)
        return
    net = create_network(name, channels, 10, size, seed=0)
    x = torch.randn(2, channels, size, size)
    net.eval()
    assert net(x).shape == (2, 10)
    emb = net.embed(x)
    assert emb.shape[0] == 2 and torch.allclose(net.classifier(emb), net(x), atol=1e-5)


def test_alexcifarnet_matches_dd_reference_layout():
    net = create_network("alexcifarnet", 3, 10, 32, seed=0)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    lrns = [m for m in net.modules() if isinstance(m, nn.LocalResponseNorm)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (5, 5)), (64, (5, 5))]
    assert [(m.in_features, m.out_features) for m in linears] == [(4096, 384), (384, 192), (192, 10)]
    assert len(lrns) == 2 and lrns[0].size == 4 and lrns[0].beta == 0.75
    assert net.embed(torch.zeros(1, 3, 32, 32)).shape == (1, 4096)


def test_xavier_init_has_dd_statistics():
    from gendistill.nn.nets import xavier_init_
    from gendistill.utils.seeding import seeded

    net = create_network("lenet", 1, 10, 28)
    with seeded(0):
        xavier_init_(net)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.count_nonzero(m.bias) == 0
            fan_in = m.weight[0].numel()
            fan_out = m.weight.shape[0] * (m.weight[0, 0].numel() if m.weight.dim() > 2 else 1)
            expected = (2.0 / (fan_in + fan_out)) ** 0.5
            assert abs(float(m.weight.detach().std()) - expected) < 0.15 * expected
            assert abs(float(m.weight.detach().mean())) < 3 * expected / m.weight.numel() ** 0.5


def test_resnet_large_images_use_imagenet_stem():
    net = create_network("resnet_ap10", 3, 10, 64)
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_timm_models():
    net = create_network("timm:resnet10t", 3, 10, 32, seed=0)
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    assert net(x).shape == (2, 10) and net.embed(x).shape[0] == 2


def test_seeded_creation_is_reproducible_and_isolated():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_network("convnet", 1, 10, 16, seed=5)
    after = torch.rand(1)
    b = create_network("convnet", 1, 10, 16, seed=5)
    c = create_network("convnet", 1, 10, 16, seed=6)
    assert torch.equal(before, after)  # the global RNG is untouched
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_too_small_images_get_one_line_error():
    with pytest.raises(NetworkInputError) as exc:
        create_network("convnet_d4", 1, 10, 8)
    assert "at least 16x16" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(NetworkInputError):
        create_network("vgg11", 3, 10, 16)


def test_unknown_network():
    with pytest.raises(GendistillError, match="unknown network"):
        create_network("convnett", 1, 10, 28)
