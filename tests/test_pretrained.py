"""ied.pretrained: EDM network pickles (written in the upstream format by tests/edm_pickle.py) imported as data,
bit for bit, and every other file refused before anything is written."""
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch

import edm_pickle
from ied.checkpoints import load_ema_denoiser
from ied.cli import main
from ied.networks import DhariwalUNet, EDMPrecond, SongUNet, VEPrecond, VPPrecond
from ied.pretrained import PretrainedError, import_edm, read

DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
              channel_mult_noise=1, resample_filter=[1, 1])
NCSNPP = dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
TINY_SONG = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
TINY_ADM = dict(model_type="DhariwalUNet", model_channels=64, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[4], dropout=0.0)
CASES = {  # preconditioner, constructor arguments (tiny instances of each published kind)
    "edm-ddpmpp-cond": (EDMPrecond, dict(img_resolution=8, img_channels=3, label_dim=10, augment_dim=9, **DDPMPP,
                                         **TINY_SONG)),
    "edm-ncsnpp-uncond": (EDMPrecond, dict(img_resolution=8, img_channels=3, label_dim=0, **NCSNPP, **TINY_SONG)),
    "edm-adm-cond-fp16": (EDMPrecond, dict(img_resolution=8, img_channels=3, label_dim=10, use_fp16=True,
                                           **TINY_ADM)),
    "vp-ddpmpp": (VPPrecond, dict(img_resolution=8, img_channels=1, label_dim=10, **DDPMPP, **TINY_SONG)),
    "ve-ncsnpp": (VEPrecond, dict(img_resolution=8, img_channels=1, label_dim=0, **NCSNPP, **TINY_SONG)),
}


def tiny(name, seed=0):
    """A case's network with every parameter perturbed (no zero-initialised layer hides a mistake)."""
    cls, kwargs = CASES[name]
    torch.manual_seed(seed)
    net = cls(**kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval(), kwargs


def inputs(net, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, net.img_channels, net.img_resolution, net.img_resolution, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * 1.5)
    labels = torch.randint(0, 10, (n,), generator=g) if net.label_dim else None
    return x, sigma, labels


@pytest.mark.parametrize("name", CASES)
def test_import_reproduces_the_denoiser_bit_for_bit(name, tmp_path):
    net, kwargs = tiny(name)
    pkl = edm_pickle.write(tmp_path / f"{name}.pkl", net, kwargs)
    summary = import_edm(pkl, tmp_path / "ckpt-0.pt")
    denoiser, info = load_ema_denoiser(tmp_path / "ckpt-0.pt", step=0)
    assert type(denoiser) is type(net) and info["num_classes"] == kwargs["label_dim"]
    assert list(denoiser.state_dict()) == list(net.state_dict())  # names in the same order
    x, sigma, labels = inputs(net)
    with torch.no_grad():
        assert torch.equal(denoiser(x, sigma, labels), net(x, sigma, labels))
    spec = info["spec"]
    assert spec["network"] == {"architecture": type(net).__name__, "kwargs": kwargs}
    from ied.io import sha256_file
    assert spec["pretrained"]["sha256"] == sha256_file(pkl) == summary["sha256"]
    import hashlib
    assert spec["pretrained"]["module_src_sha256"] == hashlib.sha256(edm_pickle.MODULE_SRC.encode()).hexdigest()
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules  # nothing of upstream was imported


def test_the_training_distribution_recorded_for_the_likelihood(tmp_path):
    """EDM: log-normal with the loss's P_mean and P_std on [0.002, 80]; VE: log-uniform on its σ range; VP: the
    density of σ(t), t ~ U[ε_t, 1], whose CDF is (t(σ) − ε_t)/(1 − ε_t)."""
    from ied.rationales import build
    specs = {}
    for name in ("edm-ddpmpp-cond", "ve-ncsnpp", "vp-ddpmpp"):
        net, kwargs = tiny(name)
        import_edm(edm_pickle.write(tmp_path / f"{name}.pkl", net, kwargs), tmp_path / f"{name}.pt")
        specs[name] = load_ema_denoiser(tmp_path / f"{name}.pt")[1]["spec"]["rationale"]
    assert specs["edm-ddpmpp-cond"] == {"family": "lognormal", "sigma_min": 0.002, "sigma_max": 80.0,
                                        "p_mean": -1.2, "p_std": 1.2}
    assert specs["ve-ncsnpp"] == {"family": "ve", "sigma_min": 0.02, "sigma_max": 100.0}
    vp = build("vp", specs["vp-ddpmpp"])
    net = VPPrecond(**CASES["vp-ddpmpp"][1])
    for t, sigma in ((1e-5, vp.sigma_min), (1.0, vp.sigma_max)):  # σ(t), in float64 (upstream's float32: ±3 %)
        assert sigma == pytest.approx(np.sqrt(np.expm1(0.5 * 19.9 * t**2 + 0.1 * t)), rel=1e-12)
        assert sigma == pytest.approx(float(net.sigma(t)), rel=0.03)
    sigma = np.array([0.05, 0.5, 5.0, 50.0])
    t = net.sigma_inv(torch.tensor(sigma, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(vp.cdf(sigma), (t - 1e-5) / (1 - 1e-5), rtol=1e-6)


def test_import_edm_cli_and_the_shape_and_class_checks(tmp_path):
    net, kwargs = tiny("edm-ddpmpp-cond")
    pkl = edm_pickle.write(tmp_path / "net.pkl", net, kwargs)
    assert main(["import-edm", str(pkl), "--out", str(tmp_path / "a.pt"), "--expect-shape", "3,8,8",
                 "--expect-classes", "10"]) == 0
    with pytest.raises(PretrainedError, match=r"makes 3×8×8 images, the dataset's are 3×32×32"):
        import_edm(pkl, tmp_path / "b.pt", expect_shape=(3, 32, 32))
    with pytest.raises(PretrainedError, match="conditioned on 10 classes, the dataset has 1000"):
        import_edm(pkl, tmp_path / "b.pt", expect_classes=1000)
    with pytest.raises(PretrainedError, match="does not start with the expected 00000000"):
        import_edm(pkl, tmp_path / "b.pt", expect_sha256="00000000")
    assert not (tmp_path / "b.pt").exists()
    uncond, uk = tiny("edm-ncsnpp-uncond")
    import_edm(edm_pickle.write(tmp_path / "u.pkl", uncond, uk), tmp_path / "u.pt", expect_classes=1000)


# --- refusals: nothing runs, nothing is written ------------------------------------------------------------
class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def refused(path, tmp_path, fragment):
    out = tmp_path / "ckpt-0.pt"
    with pytest.raises(PretrainedError, match=fragment) as info:
        import_edm(path, out)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".ckpt-0.pt.*"))
    return info.value


def test_a_pickle_that_would_run_a_command_is_refused_naming_the_global(tmp_path):
    net, kwargs = tiny("edm-ddpmpp-cond")
    marker = tmp_path / "ran"
    pkl = edm_pickle.write(tmp_path / "evil.pkl", net, kwargs, extra={"augment_pipe": RunsACommand(marker)})
    refused(pkl, tmp_path, r"refused global (posix|os)\.system: not part of an EDM network pickle")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(RunsACommand(marker)))
    refused(plain, tmp_path, r"refused global (posix|os)\.system")
    assert not marker.exists()
    from test_cli import assert_one_line, ied  # the CLI: one line, exit status 1
    assert_one_line(ied("import-edm", pkl, "--out", tmp_path / "c.pt", cwd=tmp_path), "refused global")
    assert not marker.exists() and not (tmp_path / "c.pt").exists()


def test_other_refusals(tmp_path):
    net, kwargs = tiny("edm-ddpmpp-cond")
    unknown = edm_pickle.write(tmp_path / "unknown.pkl", net, kwargs, class_names={net: "iDDPMPrecond"})
    refused(unknown, tmp_path, r"unknown class_name 'iDDPMPrecond'")
    inner = edm_pickle.write(tmp_path / "inner.pkl", net, kwargs, class_names={net.model.map_layer0: "Evil"})
    refused(inner, tmp_path, r"module 'model.map_layer0': Evil in the file, Linear here")
    # the state of another architecture: a wider network under the same arguments
    wide = EDMPrecond(**{**kwargs, "model_channels": 32})
    mismatch = edm_pickle.write(tmp_path / "shape.pkl", wide, kwargs)
    refused(mismatch, tmp_path, r"state 'model.map_label.weight' has shape \(32, 10\) in the file, \(16, 10\) here")
    fewer = EDMPrecond(**{**kwargs, "augment_dim": 0})
    refused(edm_pickle.write(tmp_path / "modules.pkl", fewer, kwargs), tmp_path,
            r"module 'model.map_augment': absent in the file, Linear here")
    no_bias, _ = tiny("edm-ddpmpp-cond")
    del no_bias.model.map_layer1._parameters["bias"]
    refused(edm_pickle.write(tmp_path / "keys.pkl", no_bias, kwargs), tmp_path,
            r"state 'model.map_layer1.bias' is missing from the file")
    whole = edm_pickle.write(tmp_path / "whole.pkl", net, kwargs)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    refused(truncated, tmp_path, "not a complete EDM network pickle")
    no_ema = edm_pickle.write(tmp_path / "no-ema.pkl", net, kwargs, payload={"net": 1})
    refused(no_ema, tmp_path, "no network under 'ema'")
    bad_args = edm_pickle.write(tmp_path / "args.pkl", net, {**kwargs, "model_type": "NotANet"})
    refused(bad_args, tmp_path, "'model_type' is 'NotANet', not one of")


def test_numpy_scalars_of_numpy_1_files_are_read(tmp_path):
    """Files written with numpy 1.x name numpy.core.multiarray.scalar, numpy 2 numpy._core: both are allowed."""
    from ied.pretrained import ALLOWED, _Dtype, _numpy_scalar
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        assert ALLOWED[module, "scalar"] is _numpy_scalar
    dtype = _Dtype("f8")
    dtype.__setstate__((3, "<", None, None, None, -1, -1, 0))
    assert _numpy_scalar(dtype, np.float64(0.7071).tobytes()) == 0.7071
    with pytest.raises(PretrainedError, match="only numbers are read"):
        _numpy_scalar(_Dtype("O"), b"\0" * 8)
    net, kwargs = tiny("edm-ddpmpp-cond")
    data = read(edm_pickle.write(tmp_path / "n.pkl", net, kwargs))
    assert data["loss_fn"].state["P_mean"] == -1.2 and type(data["loss_fn"].state["P_mean"]) is float


# --- the malformed-file corpus (tests/malformed_edm.py): one line naming the file, nothing run, nothing written --
import malformed_edm  # noqa: E402


@pytest.mark.parametrize("case", malformed_edm.CASES)
def test_every_malformed_file_is_one_line(case, tmp_path):
    build, fragment, inspected = malformed_edm.CASES[case]
    marker = tmp_path / "ran"
    path = build(tmp_path / f"{case}.pkl", marker)
    refused(path, tmp_path, fragment)
    if inspected:  # the config check refuses it the same way, reading no weight values
        from ied.pretrained import inspect
        with pytest.raises(PretrainedError, match=fragment) as info:
            inspect(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_the_cli_refuses_the_corpus_in_one_line(tmp_path):
    from test_cli import assert_one_line, ied
    for case in ("offset-past-storage", "float-channels", "module-chain-50000", "binbytes8-16-tib"):
        build, fragment, _ = malformed_edm.CASES[case]
        path = build(tmp_path / f"{case}.pkl", tmp_path / "ran")
        assert_one_line(ied("import-edm", path, "--out", tmp_path / "c.pt", cwd=tmp_path), fragment.split(r"\(")[0])
    assert not (tmp_path / "c.pt").exists()


def test_the_allowed_globals_are_exactly_the_formats():
    from ied.pretrained import ALLOWED
    assert set(ALLOWED) == {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"), ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"), ("torch.storage", "_load_from_bytes"),
        ("torch.nn.modules.container", "ModuleDict"), ("collections", "OrderedDict"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


def test_inspect_reads_no_weight_values(tmp_path):
    """inspect: the same class, arguments, shape and classes as the import, with every tensor on the meta device."""
    from ied.pretrained import inspect
    net, kwargs = tiny("edm-ddpmpp-cond")
    pkl = edm_pickle.write(tmp_path / "net.pkl", net, kwargs)
    summary = inspect(pkl, expect_shape=(3, 8, 8), expect_classes=10)
    assert (summary.class_name, summary.shape, summary.classes) == ("EDMPrecond", (3, 8, 8), 10)
    assert summary.kwargs == kwargs
    data = read(pkl, with_values=False)
    assert data["ema"].state["_modules"]["model"].state["_modules"]["map_layer0"].state["_parameters"][
        "weight"].device.type == "meta"
    with pytest.raises(PretrainedError, match="the network makes 3×8×8 images, the dataset's are 1×8×8"):
        inspect(pkl, expect_shape=(1, 8, 8))


def test_a_storage_shared_by_two_tensors_within_bounds_is_read(tmp_path):
    """Two views of one storage, each inside it: read, and the values are the storage's."""
    net = malformed_edm.network()
    shared = torch.arange(64 * 16 * 2, dtype=torch.float32).storage()
    params = dict(net.model.map_layer0._parameters)
    params["weight"] = malformed_edm.tensor(shared, 1024, (64, 16), (16, 1))
    bias = dict(net.model.map_layer1._parameters)
    bias["bias"] = malformed_edm.tensor(shared, 0, (64,), (1,))
    pkl = edm_pickle.write(tmp_path / "shared.pkl", net, malformed_edm.KWARGS,
                           states={net.model.map_layer0: {"_parameters": params},
                                   net.model.map_layer1: {"_parameters": bias}})
    data = read(pkl)
    model = data["ema"].state["_modules"]["model"].state["_modules"]
    assert torch.equal(model["map_layer0"].state["_parameters"]["weight"].flatten(), torch.arange(1024, 2048.0))
    assert torch.equal(model["map_layer1"].state["_parameters"]["bias"], torch.arange(64.0))


def test_the_loss_parameters_are_read_from_the_file(tmp_path):
    """EDMLoss's P_mean and P_std as the file has them (not the defaults) become the training distribution."""
    net, kwargs = tiny("edm-ddpmpp-cond")
    pkl = edm_pickle.write(tmp_path / "loss.pkl", net, kwargs, extra={
        "loss_fn": edm_pickle.Persistent("EDMLoss", P_mean=np.float64(-0.4), P_std=1.7, sigma_data=0.5)})
    import_edm(pkl, tmp_path / "ckpt.pt")
    assert load_ema_denoiser(tmp_path / "ckpt.pt")[1]["spec"]["rationale"] == {
        "family": "lognormal", "sigma_min": 0.002, "sigma_max": 80.0, "p_mean": -0.4, "p_std": 1.7}


# --- the published networks against EDM's definitions (Karras et al. 2022, Table 1 and App. B) --------------------
class Recorder(torch.nn.Module):
    """F(x; c_noise) = 3 x + c_noise, recording what it was given."""

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        self.x, self.noise = x, noise_labels
        return 3 * x + noise_labels.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("name", ["edm-ddpmpp-cond", "vp-ddpmpp", "ve-ncsnpp"])
def test_preconditioning_is_edms_table_1(name):
    """D(x; σ) = c_skip x + c_out F(c_in x; c_noise) with Table 1's closed forms, written here in float64."""
    net, kwargs = tiny(name)
    net.model = Recorder()
    sigma = np.array([0.002, 0.05, 0.5, 2.0, 30.0, 80.0])
    x = torch.randn(len(sigma), kwargs["img_channels"], 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(x, torch.tensor(sigma)).double().numpy()
    s = sigma[:, None, None, None]
    if name.startswith("edm"):
        sd = 0.5
        c_skip, c_out, c_in, c_noise = sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2), \
            1 / np.sqrt(s**2 + sd**2), np.log(sigma) / 4
    elif name.startswith("vp"):
        bd, bmin, M = 19.9, 0.1, 1000
        t = (np.sqrt(bmin**2 + 2 * bd * np.log(sigma**2 + 1)) - bmin) / bd  # σ⁻¹(σ) of σ(t) = √(e^{½β_d t² + β_min t} − 1)
        c_skip, c_out, c_in, c_noise = 1.0, -s, 1 / np.sqrt(s**2 + 1), (M - 1) * t
    else:
        c_skip, c_out, c_in, c_noise = 1.0, s, 1.0, np.log(0.5 * sigma)
    xs = x.double().numpy()
    np.testing.assert_allclose(net.model.x.double().numpy(), c_in * xs, rtol=1e-5, atol=1e-6)
    noise = net.model.noise.double().numpy()
    large = sigma >= 0.5  # VP's t(σ) takes log(1 + σ²) in float32, as upstream: 1 % off at σ = 0.002
    np.testing.assert_allclose(noise[large], np.broadcast_to(c_noise, sigma.shape)[large], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(noise, c_noise, rtol=2e-2, atol=1e-4)
    expected = c_skip * xs + c_out * (3 * c_in * xs + np.reshape(c_noise, (-1, 1, 1, 1)))
    np.testing.assert_allclose(out, expected, rtol=1e-5 if not name.startswith("vp") else 2e-2, atol=1e-4)


def test_song_unet_embeddings_and_skip_scale_are_their_formulas():
    """DDPM++: [sin, cos] of x ω_j, ω_j = 10000^(−j/(C/2 − 1)) (endpoint); NCSN++: [cos, sin] of 2π x f_j with the
    buffer f ~ N(0, 16²); every block's skip scale is √½."""
    from ied.networks.layers import FourierEmbedding, UNetBlock
    x = torch.tensor([0.0, 0.3, -1.7, 12.0], dtype=torch.float64)
    ddpmpp, _ = tiny("edm-ddpmpp-cond")
    model = ddpmpp.model
    half = model.map_noise.num_channels // 2
    omega = 10000.0 ** (-np.arange(half) / (half - 1))
    angles = np.outer(x.numpy(), omega)
    emb = model.map_noise(x).numpy()
    # ω in float32 as upstream: the angle is exact to ~3e-6 relative
    np.testing.assert_allclose(emb, np.concatenate([np.cos(angles), np.sin(angles)], 1), atol=1e-4)
    assert not np.allclose(emb, np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=1e-2)
    torch.manual_seed(3)
    fourier = FourierEmbedding(16)
    f = fourier.freqs.double().numpy()
    assert 8 < np.std(fourier.freqs.numpy()) < 30  # scale 16
    angles = np.outer(x.numpy(), 2 * np.pi * f)
    # angles up to ~4000 rad in float32 (as upstream): exact to ~2e-4
    np.testing.assert_allclose(fourier(x).numpy(), np.concatenate([np.cos(angles), np.sin(angles)], 1), atol=1e-3)
    blocks = [m for m in model.modules() if isinstance(m, UNetBlock)]
    assert blocks and all(b.skip_scale == pytest.approx(np.sqrt(0.5), abs=1e-15) for b in blocks)


def test_label_dropout_drops_each_example_with_its_rate():
    from ied.networks.layers import drop_labels
    torch.manual_seed(0)
    labels = torch.nn.functional.one_hot(torch.randint(0, 10, (20_000,)), 10).float()
    for p in (0.1, 0.5):
        kept = drop_labels(labels, p).sum(1)
        assert set(kept.unique().tolist()) <= {0.0, 1.0}
        dropped = 1 - kept.mean().item()
        assert abs(dropped - p) < 4 * np.sqrt(p * (1 - p) / len(labels))  # 4 binomial standard errors
    assert torch.equal(drop_labels(labels, 0.0), labels)
