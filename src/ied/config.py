"""Pipeline configs at the bottom: strict YAML, the JSON schema (the one home of defaults) and the typing of every
number, the only normaliser. The checks the schema cannot express live in `ied.checks`, above the specs and the
layout; `ied.checks.load` is what every caller uses.

Allowed values — families, weightings, datasets, extractors, samplers, device names, estimators — come from the
code's registries, filled into the schema here. Torch-free: the Snakefile runs it while it parses.
"""
from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ied.data import DATASETS, EXTRACTORS
from ied.device import DEVICE_PATTERN, PRECISIONS
from ied.nll import ESTIMATORS
from ied.fitting import FIT_METHODS, FITTED_SAMPLERS
from ied.rationales import FAMILIES, KG_WEIGHTINGS
from ied.samplers import SAMPLERS

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "config.yaml"


class ConfigError(ValueError):
    """An invalid pipeline config; the message names the key."""


def fail(key: str, message: str):
    raise ConfigError(f"config key {key!r}: {message}")


# --- strict YAML ------------------------------------------------------------------------------------
MAX_VALUES = 100_000  # values in one config file with its aliases expanded; bounds the work of every check


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values `node` stands for once YAML aliases are expanded (each node counted once: linear work)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_VALUES + 1  # an alias back into a node being counted (a cycle) expands without end
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, memo) for item in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_VALUES + 1)
    return memo[key]


def _duplicates(node: yaml.Node, path: tuple[str, ...], source: Path, seen_nodes: set[int] | None = None) -> None:
    """Refuse a mapping key given twice (YAML would silently keep the last), naming its dotted path.

    A node reached again through an alias is checked once."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                fail(".".join(path + (key,)), f"given twice in {source} (lines {seen[key]} and {line}); "
                                             f"YAML would silently keep the last")
            seen[key] = line
            _duplicates(value, path + (key,), source, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicates(item, path + (str(i),), source, seen_nodes)


def _compose(text: str, source: str) -> yaml.Node | None:
    """The YAML node tree of `text`, refused if its aliases expand it beyond MAX_VALUES values."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None and _expanded_size(node, {}) > MAX_VALUES:
        raise ConfigError(f"{source}: expands to more than {MAX_VALUES} values through YAML aliases; write the "
                          f"config out without them")
    return node


def read_yaml(path: str | Path) -> dict:
    """One config file as a mapping; ConfigError names the file, or a key given twice with its lines."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        node = _compose(text, str(path))
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML: {problem}") from None
    if node is not None:
        _duplicates(node, (), path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def parse_overrides(entries: Iterable[str]) -> dict:
    """`--config key=value` entries as typed values: numbers, booleans, and nested YAML mappings."""
    out: dict = {}
    for entry in entries:
        key, sep, text = entry.partition("=")
        if not sep:
            raise ConfigError(f"--config {entry!r}: expected key=value")
        for parse in (int, float):
            try:
                value = parse(text)
                break
            except ValueError:
                continue
        else:
            try:
                node = _compose(text, f"--config {key}")
                if node is not None:
                    _duplicates(node, (key,), Path("--config"))
                value = yaml.safe_load(text) if text else None
            except yaml.YAMLError as err:
                raise ConfigError(f"--config {key}: not valid YAML ({getattr(err, 'problem', err)})") from None
        out = merge(out, {key: value})
    return out


def merge(base: dict, override: Mapping) -> dict:
    """Recursive dict update (as Snakemake merges --configfile and --config)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def read(configfiles: Iterable[str | Path], overrides: Iterable[str] = ()) -> dict:
    """The config files merged in order (config/config.yaml if none), then the `--config key=value` overrides, as
    Snakemake merges them; not yet normalised or checked."""
    merged: dict = {}
    for path in list(configfiles) or [DEFAULT_CONFIG]:
        merged = merge(merged, read_yaml(path))  # strict YAML: a key given twice is an error
    return merge(merged, parse_overrides(overrides))


# --- the schema, with the registries filled in ----------------------------------------------------------
@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """workflow/schemas/config.schema.yaml with the allowed values of the code's registries."""
    doc = yaml.safe_load(SCHEMA.read_text())
    rationale = doc["$defs"]["rationale"]["properties"]
    rationale["family"]["enum"] = sorted(FAMILIES)
    rationale["weighting"]["enum"] = sorted(KG_WEIGHTINGS)
    rationale["method"]["enum"] = list(FIT_METHODS)
    rationale["sampler"]["enum"] = list(FITTED_SAMPLERS)
    doc["$defs"]["sampler"]["properties"]["sampler"]["enum"] = sorted(SAMPLERS)
    props = doc["properties"]
    props["dataset"]["properties"]["name"]["enum"] = sorted(DATASETS)
    props["evaluate"]["properties"]["extractor"]["enum"] = ["auto", *EXTRACTORS]
    for section in ("train", "sample", "evaluate", "nll"):
        props[section]["properties"]["device"]["pattern"] = DEVICE_PATTERN
    props["nll"]["properties"]["estimator"]["enum"] = list(ESTIMATORS)
    for section in ("train", "sample"):
        props[section]["properties"]["precision"]["enum"] = list(PRECISIONS)
    return doc


def _validator(root: dict):
    import jsonschema

    cls = jsonschema.validators.validator_for(root)

    def set_defaults(validator, properties, instance, sub):
        for name, prop in properties.items():
            if isinstance(instance, dict) and "default" in prop:
                instance.setdefault(name, copy.deepcopy(prop["default"]))
        yield from cls.VALIDATORS["properties"](validator, properties, instance, sub)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})(root)


def _schema_errors(instance: Any, root: dict, prefix: str = "") -> None:
    errors = sorted(_validator(root).iter_errors(instance), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if errors:
        err = errors[0]
        key = ".".join([prefix] * bool(prefix) + list(map(str, err.absolute_path))) or "(top level)"
        fail(key, err.message)


def _definition(name: str) -> dict:
    """A schema of one of the config schema's $defs."""
    root = schema()
    return {"$schema": root["$schema"], "$defs": root["$defs"], "$ref": f"#/$defs/{name}"}


def fill_defaults(definition: str, entry: Mapping[str, Any]) -> dict:
    """One entry of a schema definition (rationale, network, resource) with its defaults filled in."""
    entry = copy.deepcopy(dict(entry))
    _finite(entry, (definition,))
    _schema_errors(entry, _definition(definition), definition)
    return _typed(entry, _definition(definition), schema())


# --- numbers: finite, and typed as the schema declares them ---------------------------------------------
def _finite(value: Any, path: tuple[str, ...]) -> None:
    """Refuse NaN and ±inf anywhere (JSON Schema's bounds let NaN through). Sampler options are checked against
    their declared ranges instead (S_tmax may be inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        fail(".".join(path), f"must be a finite number, got {value}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not (key == "options" and path[:2] == ("sample", "samplers")):
                _finite(item, path + (str(key),))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _finite(item, path + (str(i),))


def _branches(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A schema node ($ref resolved) followed by the branches of its anyOf, oneOf and allOf-then."""
    if "$ref" in node:
        node = root["$defs"][node["$ref"].removeprefix("#/$defs/")]
    out = [node]
    for key in ("anyOf", "oneOf"):
        for sub in node.get(key, []):
            out += _branches(sub, root)
    for sub in node.get("allOf", []):
        out += _branches(sub.get("then", {}), root)
    return out


def _typed(value: Any, node: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    """`value` with its numbers as the schema types them: an integral float where an integer is allowed becomes an
    int (1.0e+6 steps), an int where only a number is allowed a float (dropout 0). So one value has one spelling,
    and a job's identity does not depend on how a number was written."""
    branches = _branches(node, root)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        types = set()
        for branch in branches:
            declared = branch.get("type", [])
            types |= {declared} if isinstance(declared, str) else set(declared)
        if "integer" in types and float(value).is_integer():
            return int(value)
        return float(value) if "number" in types else value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            sub = next((b["properties"][key] for b in branches if key in b.get("properties", {})), None) or \
                next((b["additionalProperties"] for b in branches if isinstance(b.get("additionalProperties"), dict)),
                     None)
            out[key] = item if sub is None else _typed(item, sub, root)
        return out
    if isinstance(value, list):
        items = next((b["items"] for b in branches if isinstance(b.get("items"), dict)), None)
        return value if items is None else [_typed(item, items, root) for item in value]
    return value


def normalize(config: Mapping[str, Any]) -> dict:
    """Every number finite, the schema checked with its defaults filled in, and every number typed as the schema
    declares it; ConfigError names the key."""
    config = copy.deepcopy(dict(config))
    _finite(config, ())
    _schema_errors(config, schema())
    return _typed(config, schema(), schema())


def reference_split(config: Mapping[str, Any]) -> str | None:
    """The split FID is computed against (None: against evaluate.reference_statistics)."""
    evaluate = config["evaluate"]
    if evaluate["reference_statistics"]:
        return None
    split = evaluate["reference_split"]
    return DATASETS[config["dataset"]["name"]].reference_split if split == "auto" else split


def check_resources(config: Mapping[str, Any], rules: Iterable[str]) -> None:
    """`resources:` is keyed by the workflow's rule names; an unknown key is refused."""
    rules = set(rules)
    for key in config["resources"]:
        if key not in rules:
            fail(f"resources.{key}", f"not a rule of this workflow (rules: {sorted(rules)})")


def resource(config: Mapping[str, Any], rule: str) -> dict:
    """`resources.<rule>` with the schema's defaults filled in."""
    return fill_defaults("resource", config["resources"].get(rule) or {})


def extractor(config: Mapping[str, Any]) -> str:
    """The feature extractor: the dataset's default for `auto`."""
    chosen = config["evaluate"]["extractor"]
    return DATASETS[config["dataset"]["name"]].extractor if chosen == "auto" else chosen
