"""A small emulation of NVlabs/edm's network pickles, for the tests: our own modules written the way upstream's
`torch_utils.persistence` writes its modules (each reduced to `_reconstruct_persistent_obj(meta)`, meta =
{type, version, module_src, class_name, state}), inside `dict(ema=…, loss_fn=…, augment_pipe=…, dataset_kwargs=…)`,
pickle protocol 4. Nothing here is upstream code; the stand-in module exists only while a file is written."""
from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

PERSISTENT = {"EDMPrecond", "VPPrecond", "VEPrecond", "SongUNet", "DhariwalUNet", "UNetBlock", "Conv2d", "Linear",
              "GroupNorm", "PositionalEmbedding", "FourierEmbedding"}
MODULE_SRC = "# the source of training/networks.py would be here; the importer never runs it\n"


class Persistent:
    """A non-module persistent object (EDMLoss, AugmentPipe): a class name and a state."""

    def __init__(self, class_name: str, **state: Any):
        self.class_name, self.state = class_name, state


def _stand_in_module() -> types.ModuleType:
    module = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise RuntimeError("this emulation only writes files")

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    return module


class Raw:
    """An object pickled as the given reduce tuple (a hostile tensor, storage or call), with a BUILD state if given."""

    def __init__(self, function, args: tuple, state: Any = None):
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return (self.function, self.args) if self.state is None else (self.function, self.args, self.state)


class _Pickler(pickle.Pickler):
    def __init__(self, file, reconstruct, init_kwargs: dict[int, dict], class_names: dict[int, str],
                 states: dict[int, dict]):
        super().__init__(file, protocol=4)
        self.reconstruct, self.init_kwargs, self.class_names, self.states = reconstruct, init_kwargs, class_names, states

    def reducer_override(self, obj):
        if isinstance(obj, Persistent):
            return self._meta(obj.class_name, dict(obj.state), {})
        if isinstance(obj, torch.nn.Module) and type(obj).__name__ in PERSISTENT:
            state = dict(obj.__getstate__())  # the module's __dict__, as upstream's reduce takes it
            # upstream keeps numpy scalars (np.sqrt(0.5), …) in module attributes: exercise those globals too
            state = {k: np.float64(v) if type(v) is float else v for k, v in state.items()}
            name = self.class_names.get(id(obj), type(obj).__name__)
            return self._meta(name, state, self.init_kwargs.get(id(obj), {}), self.states.get(id(obj), {}))
        return NotImplemented

    def _meta(self, class_name: str, state: dict, init_kwargs: dict, overrides: dict | None = None):
        state.update(_init_args=(), _init_kwargs=init_kwargs)
        state.update(overrides or {})
        return self.reconstruct, (dict(type="class", version=6, module_src=MODULE_SRC, class_name=class_name,
                                       state=state),)


def write(path: str | Path, network: torch.nn.Module, init_kwargs: dict, *, extra: dict | None = None,
          class_names: dict[torch.nn.Module, str] | None = None, payload: dict | None = None,
          states: dict[torch.nn.Module, dict] | None = None) -> Path:
    """Write `network` (built with `init_kwargs`) as an EDM network pickle at `path`.

    `class_names` renames chosen modules' metas; `states` updates chosen modules' meta states (their `_parameters`,
    `_init_kwargs`, …); `payload` replaces the whole pickled dict; `extra` is merged into it."""
    module = _stand_in_module()
    package = types.ModuleType("torch_utils")
    package.persistence = module
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": module})
    data = payload if payload is not None else {
        "ema": network, "loss_fn": Persistent("EDMLoss", P_mean=np.float64(-1.2), P_std=1.2, sigma_data=0.5),
        "augment_pipe": Persistent("AugmentPipe", p=np.float32(0.12), xflip=1e8, yflip=1),
        "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "datasets/x.zip",
                           "use_labels": True, "xflip": False, "cache": True}}
    data.update(extra or {})
    try:
        with open(path, "wb") as f:
            _Pickler(f, module._reconstruct_persistent_obj, {id(network): dict(init_kwargs)},
                     {id(m): n for m, n in (class_names or {}).items()},
                     {id(m): s for m, s in (states or {}).items()}).dump(data)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return Path(path)
