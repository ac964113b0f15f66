
import pytest
import torch

from ied.networks import UNet, build_denoiser, parameter_count
from ied.specs import network

from conftest import TINY_NET


def tiny(**kw):
    return build_denoiser({**TINY_NET, "dropout": 0.0, **kw}, 8, 1, 10).eval()


def test_shapes_and_class_conditioning():
    d = tiny()
    for p in d.parameters():  # the zero-initialised output layers would hide the conditioning
        torch.nn.init.normal_(p, std=0.1)
    x, sigma = torch.randn(4, 1, 8, 8), torch.full((4,), 0.7)
    a = d(x, sigma, torch.tensor([0, 1, 2, 3]))
    b = d(x, sigma, torch.tensor([5, 1, 2, 3]))
    assert a.shape == x.shape
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1:], b[1:])
    with pytest.raises(ValueError, match="class_labels"):
        d(x, sigma, None)


def test_sigma_embedding_is_quarter_log_sigma_and_preconditioning():
    d = tiny()
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x, c_noise, labels):
            seen["c_noise"], seen["x"] = c_noise, x
            return torch.ones_like(x)

    d.net = Probe()
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.01, 0.5, 40.0])
    out = d(x, sigma, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(seen["c_noise"], sigma.log() / 4)
    s, sd = sigma.view(-1, 1, 1, 1), 0.5
    torch.testing.assert_close(seen["x"], x / (s**2 + sd**2).sqrt())
    torch.testing.assert_close(out, sd**2 / (s**2 + sd**2) * x + s * sd / (s**2 + sd**2).sqrt())


def test_paper_size_unet_at_32():
    d = build_denoiser(network({}), 32, 3, 10)  # the schema's defaults are the paper's U-Net
    count = parameter_count(d)
    print("paper-size U-Net at 32x32:", count, "parameters")
    assert 30e6 < count < 40e6
    # three poolings 32 → 4, attention in the 4×4 bottleneck
    assert sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in d.modules()) == 3
    assert d(torch.randn(2, 3, 32, 32), torch.tensor([0.1, 10.0]), torch.tensor([1, 2])).shape == (2, 3, 32, 32)


def test_resolution_must_divide():
    with pytest.raises(ValueError, match="divisible"):
        UNet(12, 1, 10, **{k: v for k, v in network({}).items() if k != "sigma_data"})  # 3 poolings: 12 ∤ 8
