
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


# --- the published EDM networks (ied.networks.layers, song_unet, dhariwal_unet, precond) --------------------------
import math  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from ied.networks import DhariwalUNet, EDMPrecond, SongUNet  # noqa: E402
from ied.networks.layers import Conv2d, PositionalEmbedding, UNetBlock  # noqa: E402

CIFAR = dict(img_resolution=32, img_channels=3, model_type="SongUNet", embedding_type="positional",
             encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
             model_channels=128, channel_mult=[2, 2, 2], augment_dim=9, dropout=0.13)
NCSN = dict(embedding_type="fourier", encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
ADM64 = dict(img_resolution=64, img_channels=3, label_dim=1000, use_fp16=True, model_type="DhariwalUNet",
             model_channels=192, channel_mult=[1, 2, 3, 4], dropout=0.1)


@pytest.mark.parametrize("kwargs, millions, count", [
    ({**CIFAR, "label_dim": 10}, 56, 55_735_299), ({**CIFAR, **NCSN, "label_dim": 10}, 56, 56_400_643),
    ({**CIFAR, "img_resolution": 64, "channel_mult": [1, 2, 2, 2], "dropout": 0.05}, 62, 61_805_571),
    ({**CIFAR, **NCSN, "img_resolution": 64, "channel_mult": [1, 2, 2, 2], "dropout": 0.05}, 63, 62_761_091),
    (ADM64, 296, 295_899_267)], ids=["cifar-ddpmpp", "cifar-ncsnpp", "64-ddpmpp", "64-ncsnpp", "imagenet64-adm"])
def test_parameter_counts(kwargs, millions, count):
    """The published sizes (EDM: 56M for the CIFAR-10 networks, 62M and 63M at 64×64; ADM: 296M at ImageNet-64),
    and the exact counts of these architectures, which every name and shape adds up to."""
    assert round(parameter_count(EDMPrecond(**kwargs)) / 1e6) == millions
    assert parameter_count(EDMPrecond(**kwargs)) == count


def test_the_song_embedding_is_sin_then_cos_and_labels_are_scaled_by_sqrt_label_dim():
    net = SongUNet(8, 3, 3, label_dim=10, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                   dropout=0.0)
    c = torch.tensor([0.3, -1.2])
    seen = {}
    net.map_layer0.register_forward_pre_hook(lambda m, args: seen.setdefault("noise", args[0].clone()))
    net.map_label.register_forward_pre_hook(lambda m, args: seen.setdefault("labels", args[0].clone()))
    one_hot = F.one_hot(torch.tensor([3, 7]), 10).float()
    net.embedding(c, one_hot, None)
    j = torch.arange(8) / (8 - 1)  # 16 channels, endpoint: frequencies (1/10⁴)^(j / (C/2 − 1))
    angles = c[:, None] * 1e-4 ** j[None]
    torch.testing.assert_close(seen["labels"], one_hot * math.sqrt(10))
    label_term = net.map_label(one_hot * math.sqrt(10))
    torch.testing.assert_close(seen["noise"], torch.cat([angles.sin(), angles.cos()], 1) + label_term)
    emb = PositionalEmbedding(16)(c)  # ADM's: no endpoint, [cos, sin]
    angles = c[:, None] * 1e-4 ** (torch.arange(8) / 8)[None]
    torch.testing.assert_close(emb, torch.cat([angles.cos(), angles.sin()], 1))


def test_adm_labels_enter_after_the_mapping_through_a_bias_free_map():
    net = DhariwalUNet(8, 3, 3, label_dim=10, model_channels=64, channel_mult=[1, 2], num_blocks=1,
                       attn_resolutions=[4], dropout=0.0)
    assert net.map_label.bias is None and net.map_label.weight.shape == (256, 10)
    c, labels = torch.tensor([0.5]), F.one_hot(torch.tensor([4]), 10).float()
    expected = F.silu(net.map_layer1(F.silu(net.map_layer0(net.map_noise(c)))) + labels @ net.map_label.weight.t())
    torch.testing.assert_close(net.embedding(c, labels, None), expected)


def test_attention_interleaves_q_k_v_per_channel_and_heads_are_contiguous():
    """qkv channel 3c + j is part j (q, k, v) of channel c; head h holds channels h·C_h … (h+1)·C_h − 1."""
    torch.manual_seed(0)
    block = UNetBlock(128, 128, 16, attention=True, channels_per_head=64, dropout=0.0).eval()
    assert block.num_heads == 2
    x, emb = torch.randn(2, 128, 3, 3), torch.randn(2, 16)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
        out = block(x, emb)
        block.num_heads = 0
        h = block(x, emb)  # the residual part alone
        qkv = block.qkv(block.norm2(h)).reshape(2, 128, 3, 9)  # channel c, part j
        expected = torch.empty(2, 128, 9)
        for head in range(2):
            ch = slice(64 * head, 64 * (head + 1))
            q, k, v = qkv[:, ch, 0], qkv[:, ch, 1], qkv[:, ch, 2]
            weights = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / 8.0, dim=2)  # √64
            expected[:, ch] = torch.einsum("nqk,nck->ncq", weights, v)
        expected = (block.proj(expected.reshape(2, 128, 3, 3)) + h) * block.skip_scale
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_where_attention_sits_and_how_skips_join():
    """SongUNet: every encoder block at an attention resolution, only the last decoder block of each, and the first
    block at the lowest resolution. ADM: every block at its attention resolutions. A decoder block takes the encoder's
    skip by concatenation: its input channels are the running channels plus the skip's."""
    song = SongUNet(16, 3, 3, model_channels=16, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8])
    def heads(net):
        return {f"{part}.{n}": b.num_heads for part in ("enc", "dec") for n, b in getattr(net, part).items()
                if isinstance(b, UNetBlock)}

    assert {n for n, h in heads(song).items() if h} == {"enc.8x8_block0", "enc.8x8_block1", "dec.4x4_in0",
                                                         "dec.8x8_block2"}
    assert song.dec["16x16_block0"].in_channels == 32 + 16 and song.dec["16x16_block2"].in_channels == 16 + 16
    adm = DhariwalUNet(16, 3, 3, model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
    assert {n for n, h in heads(adm).items() if h} == {"enc.8x8_block0", "dec.8x8_in0", "dec.8x8_block0",
                                                        "dec.8x8_block1"}
    assert heads(adm)["enc.8x8_block0"] == 2  # 128 channels, 64 per head


def test_resampling_is_a_box_filter_and_its_transpose():
    """Filter [1, 1]: downsampling is 2×2 average pooling, upsampling nearest-neighbour repetition. A fused residual
    downsampling equals convolving first, then filtering with stride 2."""
    x = torch.randn(2, 3, 8, 8)
    down, up = Conv2d(3, 3, 0, down=True), Conv2d(3, 3, 0, up=True)
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    fused = Conv2d(3, 5, 3, down=True, resample_filter=[1, 3, 3, 1], fused_resample=True)
    f = torch.tensor([1.0, 3, 3, 1])
    kernel = (torch.outer(f, f) / 64)[None, None].tile(5, 1, 1, 1)
    conv = F.conv2d(x, fused.weight, padding=1 + 1) + fused.bias.reshape(1, -1, 1, 1)
    torch.testing.assert_close(fused(x), F.conv2d(conv - fused.bias.reshape(1, -1, 1, 1), kernel, groups=5, stride=2)
                               + fused.bias.reshape(1, -1, 1, 1))


def test_augment_labels_are_zero_at_sampling_and_fp16_is_for_cuda_only():
    torch.manual_seed(0)
    net = EDMPrecond(8, 3, label_dim=10, augment_dim=9, model_type="SongUNet", model_channels=16, channel_mult=[1, 2],
                     num_blocks=1, attn_resolutions=[4], dropout=0.0).eval()
    x, sigma, labels = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 3.0]), torch.tensor([1, 2])
    with torch.no_grad():
        torch.nn.init.normal_(net.model.map_augment.weight)
        assert torch.equal(net(x, sigma, labels), net(x, sigma, labels, augment_labels=torch.zeros(2, 9)))
        assert not torch.equal(net(x, sigma, labels), net(x, sigma, labels, augment_labels=torch.ones(2, 9)))
        assert torch.equal(net(x, sigma, labels), net(x, sigma, F.one_hot(labels, 10).float()))  # integer = one-hot
    adm = EDMPrecond(8, 3, label_dim=10, use_fp16=True, model_channels=64, channel_mult=[1, 2], num_blocks=1,
                     attn_resolutions=[4], dropout=0.0).eval()
    fp32 = EDMPrecond(8, 3, label_dim=10, use_fp16=False, model_channels=64, channel_mult=[1, 2], num_blocks=1,
                      attn_resolutions=[4], dropout=0.0).eval()
    fp32.load_state_dict(adm.state_dict())
    with torch.no_grad():
        out = adm(x, sigma, labels)
        assert out.dtype == torch.float32 and torch.equal(out, fp32(x, sigma, labels))  # on the CPU: float32
