"""The adaptive training rationale of Kingma & Gao (2023, Sec. 5.1, App. F): σ drawn from p(σ) ∝ r_T(σ)·L̄(σ).

L̄ is an exponential moving average of the (training-weighted) ε-loss per bin of log σ, updated at every step
from the whole batch (summed over data-parallel ranks). Within a bin σ follows the target rationale T, so each
example's loss is multiplied by the one number φ_T(σ)/p(σ) = m_b/π_b (m_b: T's mass in bin b, π_b: p's) and the
expected loss is exactly that of training with T as a fixed rationale: the sampling only changes the gradient's
variance (K&G eq. 9). Until every bin with target mass has been seen, p is T itself. A floor mixes a uniform
share FLOOR over those bins into p, so every bin keeps at least FLOOR/bins of the examples in expectation and
no weight exceeds m_b·bins/FLOOR.

Torch-free (NumPy float64): the training loop passes in per-bin sums and counts, the state travels in the
checkpoint as float64 and int64 arrays.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ied.rationales import (Binned, Rationale, RationaleError, bin_mass, build, check_table_domain, log_bins,
                            schedule_metadata)

FLOOR = 0.05  # the share of examples spread uniformly over the bins that hold target mass


class AdaptiveError(ValueError):
    """The adaptive state cannot be updated (a non-finite loss) or read (a table or state of another spec)."""


class AdaptiveSchedule:
    """The state of one adaptive rationale: per-bin EMA of the loss and examples seen, and the density they give."""

    def __init__(self, spec: Mapping[str, Any], name: str = "adaptive"):
        self.spec, self.name = dict(spec), name
        self.target = build(f"{name}.target", spec["target"])
        self.edges = log_bins(self.target.sigma_min, self.target.sigma_max, int(spec["bins"]))
        self.decay = float(spec["ema"])
        self.mass = bin_mass(self.target, self.edges)
        self.live = self.mass > 0
        if not self.live.any():
            raise RationaleError(name, "target", "the target has no mass in any bin")
        self.loss = np.zeros(len(self.mass))  # L̄_b (meaningful where count_b > 0)
        self.count = np.zeros(len(self.mass), dtype=np.int64)  # examples seen per bin, over the whole training
        self._rationale: Binned | None = None

    def probabilities(self) -> np.ndarray:
        """π_b = (1 − FLOOR)·q_b + FLOOR/(bins with mass), q ∝ m·L̄ once every such bin was seen, else q = m."""
        q = self.mass
        if (self.count[self.live] > 0).all():
            weighted = self.mass * np.maximum(self.loss, 0.0)
            if weighted.sum() > 0:
                q = weighted
        uniform = self.live / self.live.sum()
        return (1.0 - FLOOR) * q / q.sum() + FLOOR * uniform

    def rationale(self) -> Binned:
        """The current density p as a rationale (σ(t) by its inverse CDF, as every rationale)."""
        if self._rationale is None:
            self._rationale = Binned(self.name, self.target, self.edges, self.probabilities(), self.spec)
        return self._rationale

    def draw(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """σ = σ_p(t), the importance weights φ_T/p = m_b/π_b (a loss so weighted estimates the target's objective)
        and the bins of the uniform draws `t`."""
        p = self.rationale()
        sigma, bins = p.draw(t)
        with np.errstate(all="ignore"):
            weights = p.mass[bins] / p.probabilities[bins]
        if not np.isfinite(weights).all():
            b = int(bins[~np.isfinite(weights)][0])
            raise AdaptiveError(f"non-finite importance weight m_b/π_b = {p.mass[b]:.3g}/{p.probabilities[b]:.3g} in "
                                f"bin {b} (σ ∈ [{self.edges[b]:.6g}, {self.edges[b + 1]:.6g}])")
        return sigma, weights, bins

    def update(self, sums: np.ndarray, counts: np.ndarray, step: int) -> None:
        """One step's loss sums and example counts per bin (all ranks): the EMA moves where the bin was drawn."""
        sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
        if not np.isfinite(sums).all():
            raise AdaptiveError(f"non-finite loss at step {step + 1}")
        hit = counts > 0
        mean = np.where(hit, sums / np.maximum(counts, 1.0), 0.0)
        first = hit & (self.count == 0)
        self.loss = np.where(first, mean, np.where(hit, self.decay * self.loss + (1.0 - self.decay) * mean, self.loss))
        self.count += counts.astype(np.int64)
        self._rationale = None

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.copy(), "count": self.count.copy(), "spec": json.dumps(self.spec, sort_keys=True)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint's state, which must be of this spec: its keys, shapes, finiteness and signs checked
        (a checksum proves only that the file is the one written, not that what was written is a state)."""
        missing = [key for key in ("loss", "count", "spec") if key not in state]
        if missing:
            raise AdaptiveError(f"the adaptive state lacks {', '.join(missing)}")
        try:
            same = json.loads(state["spec"]) == json.loads(json.dumps(self.spec))
        except (TypeError, ValueError):
            same = False
        if not same:
            raise AdaptiveError("the adaptive state is of another adaptive spec")
        loss, count = np.asarray(state["loss"]), np.asarray(state["count"])
        for key, value in (("loss", loss), ("count", count)):
            if value.shape != self.mass.shape:
                raise AdaptiveError(f"the adaptive state's {key} has shape {value.shape}, not ({len(self.mass)},) "
                                    f"(one per bin)")
        if not (np.issubdtype(loss.dtype, np.floating) and np.isfinite(loss).all() and (loss >= 0).all()):
            raise AdaptiveError("the adaptive state's loss EMA must be finite and ≥ 0 in every bin")
        if not (np.issubdtype(count.dtype, np.integer) and (count >= 0).all()):
            raise AdaptiveError("the adaptive state's counts must be integers ≥ 0")
        self.loss = loss.astype(np.float64).copy()
        self.count = count.astype(np.int64).copy()
        self._rationale = None

    def table(self, step: int):
        """The learned density at `step`: per bin its σ range, σ (geometric mid), p(σ) there, π, m, L̄, count."""
        import pandas as pd

        p = self.rationale()
        mid = np.sqrt(self.edges[:-1] * self.edges[1:])
        return pd.DataFrame({"step": step, "sigma_lo": self.edges[:-1], "sigma_hi": self.edges[1:], "sigma": mid,
                             "pdf": p.pdf(mid), "probability": p.probabilities, "target_mass": self.mass,
                             "loss": np.where(self.count > 0, self.loss, np.nan), "count": self.count})


def write_density(path: str | Path, schedule: AdaptiveSchedule, step: int) -> None:
    """The learned density at `step` as Parquet (atomically), the adaptive spec in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ied.io import atomic_path

    table = pa.Table.from_pandas(schedule.table(step), preserve_index=False)
    meta = {b"ied.adaptive": json.dumps(schedule.spec, sort_keys=True).encode(), b"ied.step": str(step).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_density(path: str | Path) -> tuple[dict, int, Any]:
    """A `write_density` table: the adaptive spec, the step, and the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path))
    except (OSError, pa.ArrowException) as err:
        raise AdaptiveError(f"{path}: not a readable Parquet table ({type(err).__name__})") from None
    meta = table.schema.metadata or {}
    if b"ied.adaptive" not in meta:
        raise AdaptiveError(f"{path}: not an adaptive rationale's density table")
    return json.loads(meta[b"ied.adaptive"]), int(meta[b"ied.step"]), table.to_pandas()


def learned_rationale(name: str, adaptive_spec: Mapping[str, Any], rows: Any) -> Binned:
    """The density a density table holds, as a rationale (its target's shape within each bin)."""
    target = build(f"{name}.target", adaptive_spec["target"])
    edges = np.concatenate([rows["sigma_lo"].to_numpy(), rows["sigma_hi"].to_numpy()[-1:]])
    return Binned(name, target, edges, rows["probability"].to_numpy())


def _checked_bins(path: str | Path, adaptive_spec: Mapping[str, Any], edges: Any, job: str) -> None:
    """A table's bin edges must be the adaptive spec's: `bins` bins evenly in log σ over the target's domain."""
    expected = log_bins(adaptive_spec["sigma_min"], adaptive_spec["sigma_max"], adaptive_spec["bins"])
    edges = np.asarray(edges, dtype=np.float64)
    check_table_domain(path, edges[0] if len(edges) else math.nan, edges[-1] if len(edges) else math.nan,
                       adaptive_spec, job, AdaptiveError)
    if edges.shape != expected.shape or not np.allclose(edges, expected, rtol=1e-9, atol=0):
        raise AdaptiveError(f"{path}: its {len(edges) - 1} bins are not the {adaptive_spec['bins']} bins of the "
                            f"adaptive spec (evenly in log σ); delete it and rerun its {job} job")


def domain_rationale(spec: Mapping[str, Any], name: str = "training rationale") -> Rationale:
    """A training rationale built from its spec, or an adaptive one's target: either has the model's σ domain."""
    return build(f"{name}.target", spec["target"]) if spec["family"] == "adaptive" else build(name, spec)


def check_learned_spec(spec: Any) -> None:
    """A resolved `learned` spec as its job needs it: the model, an integer step and the model's adaptive spec
    (target, bins, decay). AdaptiveError names the key."""
    def fail(key: str, message: str):
        raise AdaptiveError(f"learned spec: key {key!r}: {message}")

    if not isinstance(spec, Mapping) or spec.get("family") != "learned":
        fail("family", f"must be a mapping with family 'learned', got {spec!r}")
    if not isinstance(spec.get("model"), str):
        fail("model", f"must name the adaptive model, got {spec.get('model')!r}")
    if isinstance(spec.get("step"), bool) or not isinstance(spec.get("step"), int):
        fail("step", f"must be the checkpoint's step (an integer), got {spec.get('step')!r}")
    adaptive = spec.get("adaptive")
    if not isinstance(adaptive, Mapping) or adaptive.get("family") != "adaptive":
        fail("adaptive", f"must be the model's resolved adaptive spec, got {adaptive!r}")
    try:
        AdaptiveSchedule(adaptive, f"{spec['model']}")
    except (KeyError, TypeError, ValueError) as err:
        fail("adaptive", f"not a resolved adaptive spec ({type(err).__name__}: {err})")


def save_learned(density: str | Path, spec: Mapping[str, Any], name: str, out: str | Path) -> None:
    """The `learned_rationale` job: a density table's learned density, which must be of `spec`'s model and step,
    as a schedule table (the columns of `tabulate`), its bins and probabilities in the metadata."""
    from ied.rationales import tabulate

    check_learned_spec(spec)
    adaptive_spec, step, rows = read_density(density)
    if adaptive_spec != json.loads(json.dumps(dict(spec["adaptive"]))) or step != int(spec["step"]):
        raise AdaptiveError(f"{density}: the density of another adaptive spec or step than {name!r} reads "
                            f"(step {step}, expected {spec['step']}); rerun its training segment")
    rerun = "train_adaptive_segment"
    lo, hi = rows["sigma_lo"].to_numpy(), rows["sigma_hi"].to_numpy()
    _checked_bins(density, adaptive_spec, np.concatenate([lo, hi[-1:]]), rerun)
    if not np.array_equal(hi[:-1], lo[1:]):
        raise AdaptiveError(f"{density}: its bins are not the {adaptive_spec['bins']} bins of the adaptive spec (a "
                            f"bin's upper edge is not the next one's lower edge); delete it and rerun its {rerun} job")
    try:
        rationale = learned_rationale(name, adaptive_spec, rows)
    except RationaleError as err:
        raise AdaptiveError(f"{density}: not a density ({err}); delete it and rerun its {rerun} job") from None
    table = tabulate(rationale)
    table.name, table.spec = name, dict(spec)
    bins = {"edges": rationale.edges.tolist(), "probabilities": rationale.probabilities.tolist()}
    table.to_parquet(str(out), extra={"ied.bins": json.dumps(bins)})


def load_learned(path: str | Path, spec: Mapping[str, Any]) -> Binned:
    """The learned rationale of a `save_learned` table, which must have been made for `spec`."""
    meta = schedule_metadata(path, spec, "ied.bins", "learned_rationale", AdaptiveError)
    bins = json.loads(meta[b"ied.bins"])
    _checked_bins(path, spec["adaptive"], bins["edges"], "learned_rationale")
    target = build("learned.target", spec["adaptive"]["target"])
    try:
        return Binned(meta[b"ied.rationale"].decode(), target, bins["edges"], bins["probabilities"], dict(spec))
    except RationaleError as err:
        raise AdaptiveError(f"{path}: not a density ({err}); delete it and rerun its learned_rationale job") from None
