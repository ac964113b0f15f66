"""Published EDM networks (NVlabs/edm's `edm-*.pkl`) as checkpoints of this project, read as data.

An EDM network pickle is `dict(ema=…, loss_fn=…, augment_pipe=…, dataset_kwargs=…)`; every module in it is reduced
to `torch_utils.persistence._reconstruct_persistent_obj(meta)`, meta = {type, version, module_src, class_name,
state}, and upstream loads it by exec'ing `module_src`. Here nothing of the file runs: `EDMUnpickler.find_class`
allows exactly the globals this format needs, each mapped to a stand-in that builds data (a meta stays a `Meta`,
a storage is read with `torch.load(weights_only=True)`), and refuses anything else, naming the global and the file.
The network is then this project's own class of the same name (ied.networks), built from the meta's constructor
arguments, and its state dict must match the file's name for name and shape (`load_state_dict(strict=True)`).

torch is imported inside the functions: the config checks read FORMATS without it.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMATS = ("edm",)
META_VERSION = 6  # torch_utils.persistence's format version


class PretrainedError(RuntimeError):
    """A network file that is not a usable EDM network pickle; the message names the file and what is wrong."""


@dataclass
class Meta:
    """A persistent object of the file, kept as data: its class name, state (the module's __dict__) and source."""

    class_name: str
    state: dict
    module_src: str = field(repr=False)
    version: int


@dataclass
class Container:
    """torch.nn.ModuleDict as data: pickle builds it with NEWOBJ and BUILD (its __dict__ as the state)."""

    state: dict = field(default_factory=dict)

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise PretrainedError(f"a ModuleDict's state is a {type(state).__name__}, not a dict")
        self.state = state


def _meta(meta: Any) -> Meta:
    """_reconstruct_persistent_obj's stand-in: check the meta's fields and keep them."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str) \
            or not isinstance(meta.get("state"), dict) or not isinstance(meta.get("module_src"), str):
        raise PretrainedError("a persistent object's meta is not {type: 'class', class_name, state, module_src}")
    if meta.get("version") != META_VERSION:
        raise PretrainedError(f"persistence format version {meta.get('version')!r}, expected {META_VERSION}")
    return Meta(meta["class_name"], meta["state"], meta["module_src"], meta["version"])


def _storage(payload: bytes):
    """torch.storage._load_from_bytes's stand-in: the legacy torch.save blob of one storage, tensors only."""
    import torch

    if not isinstance(payload, bytes):
        raise PretrainedError("a storage's payload is not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            storage = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as err:
        raise PretrainedError(f"a tensor storage could not be read as data ({type(err).__name__})") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise PretrainedError(f"a storage payload holds a {type(storage).__name__}")
    return storage


def _tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2's stand-in: a view of the storage, its bounds checked by torch."""
    import torch

    if not isinstance(storage, torch.storage.TypedStorage) or not all(
            isinstance(v, int) for v in (offset, *size, *stride)):
        raise PretrainedError("a tensor is not (storage, offset, size, stride)")
    try:
        with warnings.catch_warnings():  # TypedStorage is how these files store tensors; the warning is not news
            warnings.simplefilter("ignore", UserWarning)
            untyped = storage.untyped()
        return torch.empty(0, dtype=storage.dtype).set_(untyped, offset, tuple(size), tuple(stride))
    except RuntimeError as err:
        raise PretrainedError(f"a tensor does not fit its storage ({str(err).splitlines()[0]})") from None


def _parameter(data, requires_grad=False, hooks=None, *rest):
    """torch._utils._rebuild_parameter's stand-in: the tensor itself (a parameter's data)."""
    import torch

    if not isinstance(data, torch.Tensor):
        raise PretrainedError("a parameter is not built on a tensor")
    return data


class _Dtype:
    """numpy.dtype's stand-in for the numpy scalars in a meta's state (EDM's np.sqrt(0.5) and the like)."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True):
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def numpy(self) -> np.dtype:
        dtype = np.dtype(self.spec) if isinstance(self.spec, str) else None
        if dtype is None or dtype.kind not in "biuf":
            raise PretrainedError(f"a numpy scalar of dtype {self.spec!r}: only numbers are read")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> int | float | bool:
    """numpy's scalar reconstruction, for numbers only: a Python number."""
    if not isinstance(dtype, _Dtype) or not isinstance(data, bytes):
        raise PretrainedError("a numpy scalar is not (dtype, bytes)")
    return np.frombuffer(data, dtype=dtype.numpy(), count=1)[0].item()


ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _meta,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch.storage", "_load_from_bytes"): _storage,
    ("torch.nn.modules.container", "ModuleDict"): Container,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # files written with numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # and with numpy 2
}


class EDMUnpickler(pickle.Unpickler):
    """An unpickler that makes an EDM network pickle data: ALLOWED globals only, each a stand-in."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return ALLOWED[module, name]
        raise PretrainedError(f"refused global {module}.{name}: not part of an EDM network pickle")

    def persistent_load(self, pid: Any):
        raise PretrainedError("refused a persistent id: not part of an EDM network pickle")


def read(path: str | Path) -> dict:
    """The file as data: a dict whose modules are Metas and Containers and whose tensors are CPU tensors."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = EDMUnpickler(f, path).load()
    except PretrainedError as err:
        raise PretrainedError(f"{path}: {err}; nothing was written") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError) as err:
        raise PretrainedError(f"{path}: not a complete EDM network pickle ({type(err).__name__}: "
                              f"{str(err)[:120]}); nothing was written") from None
    if not isinstance(data, dict) or not isinstance(data.get("ema"), Meta):
        raise PretrainedError(f"{path}: no network under 'ema' (an EDM network pickle holds dict(ema=…, loss_fn=…, "
                              f"…)); nothing was written")
    return data


def _flatten(node: Any, prefix: str, tensors: dict, classes: dict) -> None:
    """The state dict (persistent parameters and buffers, in order) and the class of every module below `node`."""
    if isinstance(node, Meta):
        classes[prefix.rstrip(".")] = node.class_name
    elif isinstance(node, Container):
        classes[prefix.rstrip(".")] = "ModuleDict"
    else:
        raise PretrainedError(f"module {prefix.rstrip('.') or '(top)'} is a {type(node).__name__}, not a module")
    state = node.state
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, tensor in (state.get(kind) or {}).items():
            if tensor is not None and name not in skipped:
                tensors[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _flatten(child, f"{prefix}{name}.", tensors, classes)


def constructor_arguments(meta: Meta) -> dict:
    """The network's constructor arguments as recorded in its meta (positional ones named as our signature)."""
    from inspect import signature

    from ied.networks import ARCHITECTURES

    args, kwargs = meta.state.get("_init_args") or (), dict(meta.state.get("_init_kwargs") or {})
    names = list(signature(ARCHITECTURES[meta.class_name]).parameters)
    kwargs.update(zip(names, args))
    return kwargs


def build(meta: Meta):
    """Our network of the meta's class, with the file's weights (names, shapes and module classes checked)."""
    import torch

    from ied.networks import ARCHITECTURES

    if meta.class_name not in ARCHITECTURES:
        raise PretrainedError(f"unknown class_name {meta.class_name!r} under 'ema' (known: {sorted(ARCHITECTURES)})")
    kwargs = constructor_arguments(meta)
    try:
        network = ARCHITECTURES[meta.class_name](**kwargs)
    except (TypeError, ValueError, KeyError) as err:
        raise PretrainedError(f"{meta.class_name} with the file's arguments: {err}") from None
    tensors, classes = {}, {}
    _flatten(meta, "", tensors, classes)
    ours = {name: type(m).__name__ for name, m in network.named_modules()}
    for name in list(classes) + [n for n in ours if n not in classes]:
        if classes.get(name) != ours.get(name):
            raise PretrainedError(f"module {name or '(top)'!r}: {classes.get(name) or 'absent'} in the file, "
                                  f"{ours.get(name) or 'absent'} here (unknown class_name or another architecture)")
    expected = network.state_dict()
    for name in list(tensors) + [n for n in expected if n not in tensors]:
        if name not in expected or name not in tensors:
            raise PretrainedError(f"state {name!r} is {'missing from the file' if name in expected else 'unexpected'}")
        if tuple(tensors[name].shape) != tuple(expected[name].shape):
            raise PretrainedError(f"state {name!r} has shape {tuple(tensors[name].shape)} in the file, "
                                  f"{tuple(expected[name].shape)} here")
        if not tensors[name].is_floating_point() or not torch.isfinite(tensors[name]).all():
            raise PretrainedError(f"state {name!r} is not a finite floating-point tensor")
    network.load_state_dict(tensors, strict=True)
    return network.eval().requires_grad_(False), kwargs


def training_rationale(class_name: str, kwargs: Mapping[str, Any], loss: Any) -> dict:
    """The training distribution of σ of the published network (its NLL domain): EDM's log-normal on EDM's
    sampling range [0.002, 80], VP's t ~ U[ε_t, 1] as a density in σ, VE's log-uniform σ."""
    if class_name == "VPPrecond":
        bd, bmin = float(kwargs.get("beta_d", 19.9)), float(kwargs.get("beta_min", 0.1))
        t = np.array([float(kwargs.get("epsilon_t", 1e-5)), 1.0])
        lo, hi = np.sqrt(np.expm1(0.5 * bd * t**2 + bmin * t))
        return {"family": "expression", "sigma_min": float(lo), "sigma_max": float(hi), "params": {"bd": bd, "bm": bmin},
                "density": "2*sigma/((1 + sigma**2)*sqrt(bm**2 + 2*bd*log1p(sigma**2)))"}  # dt/dσ
    if class_name == "VEPrecond":
        return {"family": "ve", "sigma_min": float(kwargs.get("sigma_min", 0.02)),
                "sigma_max": float(kwargs.get("sigma_max", 100.0))}
    state = loss.state if isinstance(loss, Meta) and loss.class_name == "EDMLoss" else {}
    return {"family": "lognormal", "sigma_min": 0.002, "sigma_max": 80.0,
            "p_mean": float(state.get("P_mean", -1.2)), "p_std": float(state.get("P_std", 1.2))}


def import_edm(path: str | Path, out: str | Path, *, step: int = 0, expect_sha256: str | None = None,
               expect_shape: tuple[int, int, int] | None = None, expect_classes: int | None = None) -> dict:
    """Write the EDM network pickle `path` as a checkpoint of this project at `out`; return its summary.

    The checkpoint holds the EMA weights, the architecture and its constructor arguments (ied.networks), the
    file's SHA-256 and that of the module source embedded in it; `ied.checkpoints.load_ema_denoiser` loads it like
    a trained one. `expect_*` check the file's digest (or its leading digits), the image shape and the classes
    against the dataset's (an unconditional network fits any dataset)."""
    from ied import checkpoints, specs
    from ied.io import sha256_file
    from ied.rationales import RationaleError, build as build_rationale

    path = Path(path)
    digest = sha256_file(path)
    if expect_sha256 and not digest.startswith(expect_sha256):
        raise PretrainedError(f"{path}: sha256 {digest[:12]}… does not start with the expected {expect_sha256}")
    data = read(path)
    meta = data["ema"]
    try:
        network, kwargs = build(meta)
    except PretrainedError as err:
        raise PretrainedError(f"{path}: {err}; nothing was written") from None
    shape = (int(kwargs["img_channels"]), int(kwargs["img_resolution"]), int(kwargs["img_resolution"]))
    classes = int(kwargs.get("label_dim", 0))
    if expect_shape is not None and shape != tuple(expect_shape):
        raise PretrainedError(f"{path}: the network makes {'×'.join(map(str, shape))} images, the dataset's are "
                              f"{'×'.join(map(str, expect_shape))}")
    if expect_classes is not None and classes not in (0, expect_classes):
        raise PretrainedError(f"{path}: the network is conditioned on {classes} classes, the dataset has "
                              f"{expect_classes}")
    rationale = training_rationale(meta.class_name, kwargs, data.get("loss_fn"))
    try:
        build_rationale("training distribution", rationale)
    except RationaleError as err:
        raise PretrainedError(f"{path}: its training distribution is unusable: {err}") from None
    source = {"format": "edm", "sha256": digest, "file": path.name,
              "module_src_sha256": hashlib.sha256(meta.module_src.encode()).hexdigest()}
    spec = {"pretrained": source, "rationale": rationale,
            "network": {"architecture": meta.class_name, "kwargs": kwargs}}
    state = {"step": step, "ema": network.state_dict(), "config_hash": specs.identity_hash(
                 specs.pretrained_identity(digest)), "config_json": json.dumps(spec, sort_keys=True),
             "num_classes": classes, "resolution": shape[1], "channels": shape[0], "source": source}
    checkpoints.save(out, state)
    return {"checkpoint": str(out), "architecture": meta.class_name, "model_type": kwargs.get("model_type"),
            "parameters": sum(t.numel() for t in state["ema"].values()), "sha256": digest,
            "module_src_sha256": source["module_src_sha256"], "classes": classes, "shape": shape}
