"""Published EDM networks (NVlabs/edm's `edm-*.pkl`) as checkpoints of this project, read as data.

An EDM network pickle is `dict(ema=…, loss_fn=…, augment_pipe=…, dataset_kwargs=…)`; every module in it is reduced
to `torch_utils.persistence._reconstruct_persistent_obj(meta)`, meta = {type, version, module_src, class_name,
state}, and upstream loads it by exec'ing `module_src`. Here nothing of the file runs: `EDMUnpickler.find_class`
allows exactly the globals this format needs (ALLOWED), each mapped to a stand-in that builds data, sets the
state only of the stand-ins that take one, and refuses anything else, naming the global and the file. A tensor storage is the
legacy `torch.save` record of one storage; it is parsed here (its own allow-list: the storage classes), its declared
size checked against the bytes it holds before anything is allocated, and every tensor's offset and extent checked
against its storage.

The network is then this project's own class of the same name (ied.networks). Its constructor arguments are checked
(types, finite, bounded by the file's own tensors), it is built on the meta device (nothing allocated) and its
modules and state are compared with the file's name for name and shape; only then is it built with the file's
weights (`load_state_dict(strict=True)`). `inspect` does all of this without reading the weights' values: the
config check runs it before any job.

torch is imported inside the functions: the config checks read FORMATS without it.
"""
from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

FORMATS = ("edm",)
META_VERSION = 6  # torch_utils.persistence's format version
LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001  # torch.serialization's legacy format
MAX_DEPTH = 64  # modules nested deeper than this are not a network of this format (EDM's nest 4 deep)
MAX_RESOLUTION = 4096


class PretrainedError(RuntimeError):
    """A network file that is not a usable EDM network pickle; the message names the file and what is wrong."""


@dataclass(frozen=True)
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

    def __setstate__(self, state: Any) -> None:
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


# --- tensor storages: the legacy torch.save record of one storage, parsed here ---------------------------------
STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
                  "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
                  "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}


@dataclass(frozen=True)
class Storage:
    """One storage of the file: its dtype and element count, and its values (None when only inspected)."""

    dtype: Any
    numel: int
    values: Any = None


class _LegacyUnpickler(pickle.Unpickler):
    """The small pickles of a legacy storage record: numbers, strings, a dict, a list, one persistent id."""

    def find_class(self, module: str, name: str):
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]  # a string: calling it or building on it fails
        raise PretrainedError(f"refused global {module}.{name} inside a tensor storage")

    def persistent_load(self, pid: Any) -> tuple[str, int]:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and pid[1] in STORAGE_DTYPES.values()
                and isinstance(pid[2], str) and isinstance(pid[3], str) and type(pid[4]) is int and pid[4] >= 0
                and pid[5] is None):
            raise PretrainedError("a tensor storage's record is not ('storage', type, key, location, numel, None)")
        return pid[1], pid[4]


def _parse_storage(payload: bytes, with_values: bool) -> Storage:
    """A legacy storage record: magic, protocol, system info, the storage's persistent id, its key, then the
    element count and the raw bytes. Its declared size must be exactly the bytes that follow: nothing is inflated
    and nothing allocated beyond the payload."""
    import torch

    stream = io.BytesIO(payload)
    try:
        magic, protocol, info = (_LegacyUnpickler(stream).load() for _ in range(3))
        dtype_name, numel = _LegacyUnpickler(stream).load()
        keys = _LegacyUnpickler(stream).load()
        header = stream.read(8)
    except PretrainedError:
        raise
    except Exception as err:  # not a legacy record (a zip, compressed or not, is not what these files hold)
        raise PretrainedError(f"a tensor storage is not a legacy torch.save record ({type(err).__name__})") from None
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL or not isinstance(info, dict) \
            or info.get("little_endian") is not True or not isinstance(keys, list) or len(keys) != 1:
        raise PretrainedError("a tensor storage is not a legacy torch.save record of one little-endian storage")
    dtype = getattr(torch, dtype_name)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    start = stream.tell()
    if len(header) != 8 or struct.unpack("<q", header)[0] != numel or len(payload) - start != numel * itemsize:
        raise PretrainedError(f"a tensor storage declares {numel} elements of {dtype_name} but holds "
                              f"{max(len(payload) - start, 0)} bytes")
    values = None
    if with_values and numel:
        values = torch.frombuffer(bytearray(payload[start:]), dtype=dtype)
    elif with_values:
        values = torch.empty(0, dtype=dtype)
    return Storage(dtype, numel, values)


class EDMUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD can be restricted
    """An unpickler that makes an EDM network pickle data: ALLOWED globals only, each a stand-in, and BUILD (which
    sets an object's state: a tensor's would reach `Tensor.set_` unchecked) only on the stand-ins that take one.

    `with_values=False` reads the structure only: storages keep their size, tensors are on the meta device."""

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, (Container, _Dtype)):
            raise PretrainedError(f"refused: the file sets the state of a {type(target).__name__}")
        target.__setstate__(state)

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}

    def __init__(self, file, path: Path, with_values: bool = True):
        super().__init__(file)
        self.path, self.with_values = path, with_values
        self.extents: dict[int, tuple[Storage, int]] = {}  # per storage: the largest extent a tensor uses
        self.standins = {key: getattr(self, value) if isinstance(value, str) else value
                         for key, value in ALLOWED.items()}

    def find_class(self, module: str, name: str):
        if (module, name) in self.standins:
            return self.standins[module, name]
        raise PretrainedError(f"refused global {module}.{name}: not part of an EDM network pickle")

    def persistent_load(self, pid: Any):
        raise PretrainedError("refused a persistent id: not part of an EDM network pickle")

    def _storage(self, payload: Any) -> Storage:
        """torch.storage._load_from_bytes's stand-in."""
        if not isinstance(payload, bytes):
            raise PretrainedError("a storage's payload is not bytes")
        return _parse_storage(payload, self.with_values)

    def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any):
        """torch._utils._rebuild_tensor_v2's stand-in: a view of the storage, inside it."""
        import torch

        if not isinstance(storage, Storage) or not isinstance(size, tuple) or not isinstance(stride, tuple) \
                or not all(type(v) is int for v in (offset, *size, *stride)) or len(size) != len(stride) \
                or len(size) > 8:
            raise PretrainedError("a tensor is not (storage, offset, size, stride)")
        if offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
            raise PretrainedError(f"a tensor has a negative offset, size or stride ({offset}, {size}, {stride})")
        extent = 0 if 0 in size else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
        if extent > storage.numel or offset > storage.numel:
            raise PretrainedError(f"a tensor of size {size} at offset {offset} runs past its storage of "
                                  f"{storage.numel} elements")
        seen = self.extents.get(id(storage), (storage, 0))[1]
        self.extents[id(storage)] = (storage, max(seen, extent))
        if storage.values is None:
            return torch.empty_strided(size, stride, dtype=storage.dtype, device="meta")
        return storage.values.as_strided(size, stride, offset)

    def _parameter(self, data: Any, *rest: Any):
        """torch._utils._rebuild_parameter's stand-in: the tensor itself (a parameter's data)."""
        import torch

        if not isinstance(data, torch.Tensor):
            raise PretrainedError("a parameter is not built on a tensor")
        return data

    def check_storages(self) -> None:
        """Every storage is used, and no more of it is stored than its tensors use."""
        for storage, extent in self.extents.values():
            if storage.numel > extent:
                raise PretrainedError(f"a tensor storage holds {storage.numel} elements, its tensors use {extent}")


class _Dtype:
    """numpy.dtype's stand-in for the numpy scalars in a meta's state (EDM's np.sqrt(0.5) and the like)."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True):
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def numpy(self) -> np.dtype:
        try:
            dtype = np.dtype(self.spec) if isinstance(self.spec, str) and len(self.spec) <= 8 else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in "biuf":
            raise PretrainedError(f"a numpy scalar of dtype {self.spec!r}: only numbers are read")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> int | float | bool:
    """numpy's scalar reconstruction, for numbers only: a Python number."""
    if not isinstance(dtype, _Dtype) or not isinstance(data, bytes):
        raise PretrainedError("a numpy scalar is not (dtype, bytes)")
    numpy_dtype = dtype.numpy()
    if len(data) != numpy_dtype.itemsize:
        raise PretrainedError(f"a numpy scalar of {numpy_dtype} holds {len(data)} bytes")
    return np.frombuffer(data, dtype=numpy_dtype, count=1)[0].item()


# The globals an EDM network pickle may name, each to its stand-in (a method name: bound to the unpickler).
ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _meta,
    ("torch._utils", "_rebuild_tensor_v2"): "_tensor",
    ("torch._utils", "_rebuild_parameter"): "_parameter",
    ("torch.storage", "_load_from_bytes"): "_storage",
    ("torch.nn.modules.container", "ModuleDict"): Container,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # files written with numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # and with numpy 2
}


def read(path: str | Path, with_values: bool = True) -> dict:
    """The file as data: a dict whose modules are Metas and Containers and whose tensors are CPU tensors (meta
    tensors when `with_values` is False)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if not raw.startswith(b"\x80"):
            raise PretrainedError("not a pickle (no protocol header): not an EDM network pickle")
        unpickler = EDMUnpickler(io.BytesIO(raw), path, with_values)  # reads never past the end
        data = unpickler.load()
        unpickler.check_storages()
    except PretrainedError as err:
        raise PretrainedError(f"{path}: {err}; nothing was written") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as err:
        raise PretrainedError(f"{path}: not a complete EDM network pickle ({type(err).__name__}: "
                              f"{str(err)[:120]}); nothing was written") from None
    except OSError as err:
        raise PretrainedError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("ema"), Meta):
        raise PretrainedError(f"{path}: no network under 'ema' (an EDM network pickle holds dict(ema=…, loss_fn=…, "
                              f"…)); nothing was written")
    return data


# --- the network: its modules, tensors and constructor arguments, checked before anything is allocated ----------
def _flatten(ema: Meta) -> tuple[dict, dict]:
    """The state dict (persistent parameters and buffers, in order) and the class of every module below `ema`."""
    tensors: dict[str, Any] = {}
    classes: dict[str, str] = {}
    stack = [(ema, "")]
    while stack:
        node, prefix = stack.pop()
        name = prefix.rstrip(".")
        if prefix.count(".") > MAX_DEPTH:
            raise PretrainedError(f"modules nested deeper than {MAX_DEPTH} (at {name[:80]}…)")
        if isinstance(node, Meta):
            classes[name] = node.class_name
        elif isinstance(node, Container):
            classes[name] = "ModuleDict"
        else:
            raise PretrainedError(f"module {name or '(top)'} is a {type(node).__name__}, not a module")
        _module_tensors(node.state, prefix, tensors)
        children = node.state.get("_modules") or {}
        if not isinstance(children, Mapping) or not all(isinstance(k, str) for k in children):
            raise PretrainedError(f"module {name or '(top)'}: _modules is not a mapping of names")
        stack += reversed([(child, f"{prefix}{key}.") for key, child in children.items() if child is not None])
    return tensors, classes


def _module_tensors(state: Mapping[str, Any], prefix: str, tensors: dict) -> None:
    """A module's persistent parameters and buffers, each a tensor."""
    import torch

    skipped = state.get("_non_persistent_buffers_set") or ()
    if not isinstance(skipped, (set, frozenset, list, tuple)):
        raise PretrainedError(f"module {prefix.rstrip('.') or '(top)'}: _non_persistent_buffers_set is not a set")
    for kind in ("_parameters", "_buffers"):
        entries = state.get(kind) or {}
        if not isinstance(entries, Mapping) or not all(isinstance(k, str) for k in entries):
            raise PretrainedError(f"module {prefix.rstrip('.') or '(top)'}: {kind} is not a mapping of names")
        for name, tensor in entries.items():
            if tensor is None or name in skipped:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise PretrainedError(f"state {prefix + name!r} is a {type(tensor).__name__}, not a tensor")
            tensors[prefix + name] = tensor


# The constructor arguments a published network may record, by kind (others reach the class and are refused there).
COUNTS = ("img_resolution", "img_channels", "model_channels", "channel_mult_emb", "channel_mult_noise", "M")
SIZES = ("label_dim", "augment_dim", "num_blocks")  # may be 0
COUNT_LISTS = ("channel_mult", "attn_resolutions")
FRACTIONS = ("dropout", "label_dropout")
POSITIVE = ("sigma_data", "beta_d", "beta_min", "epsilon_t", "sigma_max")
NON_NEGATIVE = ("sigma_min",)
STRINGS = ("model_type", "embedding_type", "encoder_type", "decoder_type")


def _json_data(value: Any, key: str, depth: int = 0) -> Any:
    """A constructor argument as JSON data: numbers (finite; EDM's default σ_max = inf excepted), strings,
    booleans, None, and lists of them; tuples become lists."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or (math.isinf(value) and not (key == "sigma_max" and value > 0)):
            raise PretrainedError(f"constructor argument {key!r} is {value}, not a finite number")
        return value
    if isinstance(value, (list, tuple)) and depth == 0 and len(value) <= 64:
        return [_json_data(v, key, 1) for v in value]
    raise PretrainedError(f"constructor argument {key!r} is a {type(value).__name__}, not a number, string or list")


def constructor_arguments(meta: Meta) -> dict:
    """The network's constructor arguments as recorded in its meta (positional ones named as our signature), each
    JSON data."""
    from inspect import signature

    from ied.networks import ARCHITECTURES

    args, kwargs = meta.state.get("_init_args", ()), meta.state.get("_init_kwargs", {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, Mapping) \
            or not all(isinstance(k, str) for k in kwargs):
        raise PretrainedError("_init_args and _init_kwargs are not a sequence and a mapping of names")
    names = list(signature(ARCHITECTURES[meta.class_name]).parameters)
    if len(args) > len(names) - 1:
        raise PretrainedError(f"{len(args)} positional constructor arguments, {meta.class_name} takes "
                              f"{len(names) - 1}")
    kwargs = {**kwargs, **dict(zip(names, args))}
    return {key: _json_data(value, key) for key, value in kwargs.items()}


def _with_defaults(class_name: str, kwargs: Mapping[str, Any]) -> dict:
    """The arguments as the network is built with them: the file's, then the preconditioner's and the U-Net's
    defaults."""
    from inspect import Parameter, signature

    from ied.networks import ARCHITECTURES
    from ied.networks.precond import MODELS

    def defaults(cls: type) -> dict:
        return {k: list(p.default) if isinstance(p.default, tuple) else p.default
                for k, p in signature(cls).parameters.items() if p.default is not Parameter.empty}

    args = {**defaults(ARCHITECTURES[class_name]), **kwargs}
    if args.get("model_type") not in MODELS:
        raise PretrainedError(f"constructor argument 'model_type' is {args.get('model_type')!r}, not one of "
                              f"{sorted(MODELS)}")
    return {**defaults(MODELS[args["model_type"]]), **args}


def _check_arguments(class_name: str, kwargs: Mapping[str, Any], tensors: Mapping[str, Any], modules: int) -> None:
    """Types, ranges, and sizes bounded by the file's own tensors (no channel count wider than its widest tensor,
    no more blocks than its modules), so building the network allocates nothing the file does not hold."""
    def count(key: str, value: Any, low: int) -> int:
        if type(value) is not int or value < low:
            raise PretrainedError(f"constructor argument {key!r} is {value!r}, not an integer ≥ {low}")
        return value

    for key in COUNTS + SIZES:
        if key in kwargs:
            count(key, kwargs[key], 1 if key in COUNTS else 0)
    for key in COUNT_LISTS:
        if key in kwargs:
            if not isinstance(kwargs[key], list) or (key == "channel_mult" and not kwargs[key]):
                raise PretrainedError(f"constructor argument {key!r} is {kwargs[key]!r}, not a list of integers")
            for value in kwargs[key]:
                count(key, value, 1)
    for key in FRACTIONS + POSITIVE + NON_NEGATIVE:
        value = kwargs.get(key, 0.5)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (key in FRACTIONS and value > 1) or (key in POSITIVE and value <= 0):
            raise PretrainedError(f"constructor argument {key!r} is {value!r}, out of its range")
    for key in STRINGS:
        if key in kwargs and not isinstance(kwargs[key], str):
            raise PretrainedError(f"constructor argument {key!r} is {kwargs[key]!r}, not a name")
    if not isinstance(kwargs.get("use_fp16", False), bool):
        raise PretrainedError(f"constructor argument 'use_fp16' is {kwargs['use_fp16']!r}, not a boolean")
    taps = kwargs.get("resample_filter", [1, 1])
    if not isinstance(taps, list) or not 1 <= len(taps) <= 16 or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) for t in taps) or sum(taps) == 0:
        raise PretrainedError(f"constructor argument 'resample_filter' is {taps!r}, not a list of taps")
    _check_sizes(_with_defaults(class_name, kwargs), tensors, modules)


def _check_sizes(args: Mapping[str, Any], tensors: Mapping[str, Any], modules: int) -> None:
    """Channel counts no wider than the file's widest tensor, blocks no more than its modules."""
    widest = max((max(t.shape, default=1) for t in tensors.values()), default=0)
    model = args["model_channels"]
    widths = {"img_channels": args["img_channels"], "label_dim": args.get("label_dim", 0),
              "augment_dim": args.get("augment_dim", 0),
              "model_channels × max(channel_mult)": model * max(args["channel_mult"]),
              "model_channels × channel_mult_emb": model * args["channel_mult_emb"]}
    if "channel_mult_noise" in args:
        widths["model_channels × channel_mult_noise"] = model * args["channel_mult_noise"]
    for key, width in widths.items():
        if width > widest:
            raise PretrainedError(f"constructor argument {key} = {width} is wider than any tensor of the file "
                                  f"(the widest has {widest} channels)")
    levels = len(args["channel_mult"])
    if levels * (2 * args["num_blocks"] + 2) > modules:
        raise PretrainedError(f"constructor arguments channel_mult and num_blocks ask for more blocks than the file's "
                              f"{modules} modules")
    resolution = args["img_resolution"]
    if resolution > MAX_RESOLUTION or resolution % (1 << (levels - 1)):
        raise PretrainedError(f"constructor argument 'img_resolution' is {resolution}: not a multiple of "
                              f"2^{levels - 1} up to {MAX_RESOLUTION}")


def _construct(class_name: str, kwargs: Mapping[str, Any], device: str):
    """Our network of `class_name` with `kwargs`, on `device` ("meta": nothing allocated)."""
    import torch

    from ied.networks import ARCHITECTURES

    try:
        with torch.device(device):
            return ARCHITECTURES[class_name](**kwargs)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        message = (str(err).splitlines() or [""])[0][:200]
        raise PretrainedError(f"{class_name} with the file's arguments: {message}") from None


def _compare(network, tensors: Mapping[str, Any], classes: Mapping[str, str]) -> None:
    """The file's modules and state are ours, name for name, class for class and shape for shape."""
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
        if not tensors[name].is_floating_point():
            raise PretrainedError(f"state {name!r} is a {tensors[name].dtype} tensor, not floating-point")


def _required(kwargs: Mapping[str, Any]) -> None:
    for key in ("img_resolution", "img_channels"):
        if key not in kwargs:
            raise PretrainedError(f"constructor argument {key!r} is missing")


def check_network(meta: Meta) -> tuple[dict, dict]:
    """The constructor arguments and the state dict of the network under 'ema', every check passed and nothing of
    the network allocated (it is built on the meta device)."""
    from ied.networks import ARCHITECTURES

    if meta.class_name not in ARCHITECTURES:
        raise PretrainedError(f"unknown class_name {meta.class_name!r} under 'ema' (known: {sorted(ARCHITECTURES)})")
    tensors, classes = _flatten(meta)
    kwargs = constructor_arguments(meta)
    _required(kwargs)
    _check_arguments(meta.class_name, kwargs, tensors, len(classes))
    _compare(_construct(meta.class_name, kwargs, "meta"), tensors, classes)
    return kwargs, tensors


def build(meta: Meta):
    """Our network of the meta's class, with the file's weights (arguments, names, shapes, classes and values
    checked), and its constructor arguments."""
    import torch

    kwargs, tensors = check_network(meta)
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise PretrainedError(f"state {name!r} holds non-finite values")
    network = _construct(meta.class_name, kwargs, "cpu")
    network.load_state_dict(tensors, strict=True)
    return network.eval().requires_grad_(False), kwargs


def _loss_parameter(loss: Any, key: str, default: float) -> float:
    """A finite number of EDMLoss's state (P_mean, P_std), or its default when the file has no EDMLoss."""
    state = loss.state if isinstance(loss, Meta) and loss.class_name == "EDMLoss" else {}
    value = state.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PretrainedError(f"loss_fn.{key} is {value!r}, not a finite number")
    return float(value)


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
    return {"family": "lognormal", "sigma_min": 0.002, "sigma_max": 80.0,
            "p_mean": _loss_parameter(loss, "P_mean", -1.2), "p_std": _loss_parameter(loss, "P_std", 1.2)}


@dataclass(frozen=True)
class Summary:
    """What a network file makes: its class, constructor arguments, image shape and classes, training σ."""

    class_name: str
    kwargs: dict
    shape: tuple[int, int, int]
    classes: int
    rationale: dict


def _summary(path: Path, data: Mapping[str, Any], kwargs: dict, expect_shape: tuple[int, int, int] | None,
             expect_classes: int | None) -> Summary:
    """The file's image shape, classes and training distribution, checked against the dataset's."""
    from ied.rationales import RationaleError, build as build_rationale

    meta = data["ema"]
    shape = (int(kwargs["img_channels"]), int(kwargs["img_resolution"]), int(kwargs["img_resolution"]))
    classes = int(kwargs.get("label_dim", 0))
    if expect_shape is not None and shape != tuple(expect_shape):
        raise PretrainedError(f"{path}: the network makes {'×'.join(map(str, shape))} images, the dataset's are "
                              f"{'×'.join(map(str, expect_shape))}")
    if expect_classes is not None and classes not in (0, expect_classes):
        raise PretrainedError(f"{path}: the network is conditioned on {classes} classes, the dataset has "
                              f"{expect_classes}")
    try:
        rationale = training_rationale(meta.class_name, kwargs, data.get("loss_fn"))
        build_rationale("training distribution", rationale)
    except (PretrainedError, RationaleError) as err:
        raise PretrainedError(f"{path}: its training distribution is unusable: {err}") from None
    return Summary(meta.class_name, kwargs, shape, classes, rationale)


def inspect(path: str | Path, *, expect_shape: tuple[int, int, int] | None = None,
            expect_classes: int | None = None) -> Summary:
    """Every check of `import_edm` but the weights' values, reading no value and building the network on the meta
    device: what the config check runs before any job."""
    path = Path(path)
    data = read(path, with_values=False)
    try:
        kwargs, _ = check_network(data["ema"])
    except PretrainedError as err:
        raise PretrainedError(f"{path}: {err}") from None
    return _summary(path, data, kwargs, expect_shape, expect_classes)


def import_edm(path: str | Path, out: str | Path, *, step: int = 0, expect_sha256: str | None = None,
               expect_shape: tuple[int, int, int] | None = None, expect_classes: int | None = None) -> dict:
    """Write the EDM network pickle `path` as a checkpoint of this project at `out`; return its summary.

    The checkpoint holds the EMA weights, the architecture and its constructor arguments (ied.networks), the
    file's SHA-256 and that of the module source embedded in it; `ied.checkpoints.load_ema_denoiser` loads it like
    a trained one. `expect_*` check the file's digest (or its leading digits), the image shape and the classes
    against the dataset's (an unconditional network fits any dataset)."""
    from ied import checkpoints, specs
    from ied.io import sha256_file

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
    summary = _summary(path, data, kwargs, expect_shape, expect_classes)
    source = {"format": "edm", "sha256": digest, "file": path.name,
              "module_src_sha256": hashlib.sha256(meta.module_src.encode()).hexdigest()}
    spec = {"pretrained": source, "rationale": summary.rationale,
            "network": {"architecture": meta.class_name, "kwargs": kwargs}}
    state = checkpoints.make_state(step=step, ema=network.state_dict(), spec=spec,
                                   config_hash=specs.identity_hash(specs.pretrained_identity(digest)),
                                   channels=summary.shape[0], resolution=summary.shape[1],
                                   num_classes=summary.classes, source=source)
    checkpoints.save(out, state)
    return {"checkpoint": str(out), "architecture": meta.class_name, "model_type": kwargs.get("model_type"),
            "parameters": sum(t.numel() for t in state["ema"].values()), "sha256": digest,
            "module_src_sha256": source["module_src_sha256"], "classes": summary.classes, "shape": summary.shape}
