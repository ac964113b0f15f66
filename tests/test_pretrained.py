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
    refused(bad_args, tmp_path, "model_type 'NotANet' is not one of")


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
