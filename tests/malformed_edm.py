"""The importer's malformed-file corpus: EDM network pickles made hostile or broken one way each, built from the
tiny published-format network of tests/edm_pickle.py or assembled opcode by opcode. Each case is (builder, the
fragment of its one-line refusal, whether `ied.pretrained.inspect` (no weight values read) refuses it too)."""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

import edm_pickle
from edm_pickle import Raw
from ied.networks import EDMPrecond

KWARGS = dict(img_resolution=8, img_channels=3, label_dim=10, model_type="SongUNet", embedding_type="positional",
              encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
              model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
REBUILD = torch._utils._rebuild_tensor_v2
LOAD_STORAGE = torch.storage._load_from_bytes


def network() -> EDMPrecond:
    torch.manual_seed(0)
    return EDMPrecond(**KWARGS).eval()


def storage(numel: int):
    """A float32 TypedStorage (pickled as upstream pickles one: a legacy torch.save record)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.zeros(numel).storage()


def tensor(source, offset: int, size: tuple, stride: tuple, state=None) -> Raw:
    """A tensor as `_rebuild_tensor_v2(storage, offset, size, stride, …)`, with a BUILD state if given."""
    return Raw(REBUILD, (source, offset, size, stride, False, collections.OrderedDict()), state)


def with_weight(path: Path, weight) -> Path:
    """The network with model.map_layer0.weight (64 × 16) replaced."""
    net = network()
    params = dict(net.model.map_layer0._parameters)
    return edm_pickle.write(path, net, KWARGS, states={net.model.map_layer0: {"_parameters": {**params, "weight": weight}}})


def with_arguments(path: Path, **changes) -> Path:
    net = network()
    return edm_pickle.write(path, net, {**KWARGS, **changes})


def with_state(path: Path, **state) -> Path:
    net = network()
    return edm_pickle.write(path, net, KWARGS, states={net: state})


def legacy_record(numel: int) -> bytes:
    return storage(numel).__reduce__()[1][0]


def compressed_record(numel: int) -> bytes:
    """A storage written by torch.save's zip format, its entries deflated."""
    plain = io.BytesIO()
    torch.save(storage(numel), plain)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain.getvalue())) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    return out.getvalue()


# --- pickles assembled opcode by opcode --------------------------------------------------------------------------
def _text(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _meta(class_name: str, child_memo: int | None) -> bytes:
    """_reconstruct_persistent_obj({type, version, class_name, module_src, state: {_modules: {m: memo[child]}}})."""
    modules = b"}" if child_memo is None else b"}(" + _text("m") + b"j" + struct.pack("<I", child_memo) + b"u"
    return (b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n}(" + _text("type") + _text("class")
            + _text("version") + b"K\x06" + _text("class_name") + _text(class_name) + _text("module_src") + _text("")
            + _text("state") + b"}(" + _text("_modules") + modules + b"uu\x85R")


def module_chain(path: Path, depth: int = 50_000) -> Path:
    """dict(ema=EDMPrecond) whose modules nest `depth` deep, one child each."""
    ops = [b"\x80\x02}", _text("ema"), _meta("Linear", None), b"r\0\0\0\0" + b"0"]
    for level in range(depth):
        ops.append(_meta("EDMPrecond" if level == depth - 1 else "Linear", 0) + b"r\0\0\0\0" + b"0")
    ops.append(b"j\0\0\0\0s.")
    path.write_bytes(b"".join(ops))
    return path


def huge_bytes(path: Path) -> Path:
    """20 bytes declaring a 16 TiB BINBYTES8."""
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 16 * 2**40) + b"\0" * 9)
    return path


def dotted_global(path: Path) -> Path:
    """A global reached through an allowed global's attributes (protocol 4 resolves dotted names)."""
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2.__globals__\n.")
    return path


def state_of_a_global(path: Path) -> Path:
    """BUILD on an allowed global: setting a stand-in's attributes."""
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_parameter\nN}(" + _text("__defaults__") + b")u\x86b.")
    return path


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# case → (builder(path, marker), refusal fragment, refused by inspect too)
CASES = {
    "offset-past-storage": (lambda p, m: with_weight(p, tensor(storage(1024), 1024, (64, 16), (16, 1))),
                            r"a tensor of size \(64, 16\) at offset 1024 runs past its storage of 1024 elements", True),
    "one-element-storage-as-64x16": (lambda p, m: with_weight(p, tensor(storage(1), 0, (64, 16), (16, 1))),
                                     r"runs past its storage of 1 elements", True),
    "negative-stride": (lambda p, m: with_weight(p, tensor(storage(1024), 1023, (64, 16), (-16, -1))),
                        r"a tensor has a negative offset, size or stride", True),
    "tensor-state-set": (lambda p, m: with_weight(p, tensor(storage(1024), 0, (64, 16), (16, 1),
                                                             state=(storage(1), 0, (64, 16), (16, 1)))),
                         r"refused: the file sets the state of a Tensor", True),
    "compressed-storage": (lambda p, m: with_weight(p, tensor(Raw(LOAD_STORAGE, (compressed_record(1024),)), 0,
                                                                (64, 16), (16, 1))),
                           r"a tensor storage is not a legacy torch.save record", True),
    "storage-shorter-than-declared": (lambda p, m: with_weight(p, tensor(
        Raw(LOAD_STORAGE, (legacy_record(1024)[:-100],)), 0, (64, 16), (16, 1))),
        r"a tensor storage declares 1024 elements of float32 but holds 3996 bytes", True),
    "storage-larger-than-its-tensors": (lambda p, m: with_weight(p, tensor(storage(1024 * 64), 0, (64, 16), (16, 1))),
                                        r"a tensor storage holds 65536 elements, its tensors use 1024", True),
    "storage-payload-runs-code": (lambda p, m: with_weight(p, tensor(Raw(LOAD_STORAGE, (pickle.dumps(
        RunsACommand(m)),)), 0, (64, 16), (16, 1))), r"refused global (posix|os)\.system inside a tensor storage", True),
    "tensor-slot-holds-an-int": (lambda p, m: with_weight(p, 5),
                                 r"state 'model.map_layer0.weight' is a int, not a tensor", True),
    "model-channels-384": (lambda p, m: with_arguments(p, model_channels=384),
                           r"model_channels × max\(channel_mult\) = 768 is wider than any tensor", True),
    "model-channels-4096": (lambda p, m: with_arguments(p, model_channels=4096),
                            r"model_channels × max\(channel_mult\) = 8192 is wider than any tensor", True),
    "num-blocks-huge": (lambda p, m: with_arguments(p, num_blocks=10**7),
                        r"channel_mult and num_blocks ask for more blocks than the file's", True),
    "negative-channels": (lambda p, m: with_arguments(p, model_channels=-16),
                          r"'model_channels' is -16, not an integer ≥ 1", True),
    "float-channels": (lambda p, m: with_arguments(p, model_channels=16.0),
                       r"'model_channels' is 16.0, not an integer ≥ 1", True),
    "resolution-missing": (lambda p, m: edm_pickle.write(p, network(), {k: v for k, v in KWARGS.items()
                                                                       if k != "img_resolution"}),
                           r"constructor argument 'img_resolution' is missing", True),
    "resolution-0": (lambda p, m: with_arguments(p, img_resolution=0),
                     r"'img_resolution' is 0, not an integer ≥ 1", True),
    "sigma-data-nan": (lambda p, m: with_arguments(p, sigma_data=math.nan),
                       r"constructor argument 'sigma_data' is nan, not a finite number", True),
    "sigma-data-inf": (lambda p, m: with_arguments(p, sigma_data=math.inf),
                       r"constructor argument 'sigma_data' is inf, not a finite number", True),
    "dropout-above-one": (lambda p, m: with_arguments(p, dropout=1.5),
                          r"constructor argument 'dropout' is 1.5, out of its range", True),
    "init-kwargs-int": (lambda p, m: with_state(p, _init_kwargs=5),
                        r"_init_args and _init_kwargs are not a sequence and a mapping of names", True),
    "init-kwargs-set": (lambda p, m: with_state(p, _init_kwargs={"model_channels", "num_blocks"}),
                        r"_init_args and _init_kwargs are not a sequence and a mapping of names", True),
    "init-kwargs-not-json": (lambda p, m: with_state(p, _init_kwargs={**KWARGS, "dropout": b"0.1"}),
                             r"constructor argument 'dropout' is a bytes, not a number, string or list", True),
    "init-kwargs-nested-list": (lambda p, m: with_state(p, _init_kwargs={**KWARGS, "channel_mult": [[1], [2]]}),
                                r"constructor argument 'channel_mult' is a list, not a number, string or list", True),
    "p-mean-a-string": (lambda p, m: edm_pickle.write(p, network(), KWARGS, extra={
        "loss_fn": edm_pickle.Persistent("EDMLoss", P_mean="-1.2", P_std=1.2, sigma_data=0.5)}),
        r"loss_fn.P_mean is '-1.2', not a finite number", True),
    "p-std-nan": (lambda p, m: edm_pickle.write(p, network(), KWARGS, extra={
        "loss_fn": edm_pickle.Persistent("EDMLoss", P_mean=-1.2, P_std=math.nan, sigma_data=0.5)}),
        r"loss_fn.P_std is nan, not a finite number", True),
    "module-chain-50000": (lambda p, m: module_chain(p), r"modules nested deeper than 64", True),
    "binbytes8-16-tib": (lambda p, m: huge_bytes(p), r"not a complete EDM network pickle", True),
    "dotted-global": (lambda p, m: dotted_global(p),
                      r"refused global torch._utils._rebuild_tensor_v2.__globals__", True),
    "state-of-an-allowed-global": (lambda p, m: state_of_a_global(p), r"refused: the file sets the state of a", True),
    "not-a-pickle": (lambda p, m: (p.write_text("# a network, honestly\n"), p)[1], r"not a pickle \(no protocol header\)",
                     True),
    "nan-weights": (lambda p, m: with_weight(p, torch.nn.Parameter(torch.full((64, 16), math.nan))),
                    r"state 'model.map_layer0.weight' holds non-finite values", False),
}
