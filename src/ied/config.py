"""Load pipeline configs: merge files, validate against the JSON schema (filling defaults), check semantics."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ied.pipeline import ConfigError
from ied.pipeline import check as check_semantics

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def merge(base: dict, override: Mapping) -> dict:
    """Recursive dict update (as Snakemake merges --configfile and --config)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def _validator():
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)

    def set_defaults(validator, properties, instance, schema):
        for name, sub in properties.items():
            if isinstance(instance, dict) and "default" in sub:
                instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from cls.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})(schema)


def validate(config: Mapping[str, Any]) -> dict:
    """Schema-check with defaults filled in, then semantic checks; ConfigError names the first bad key."""
    config = copy.deepcopy(dict(config))
    errors = sorted(_validator().iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if errors:
        err = errors[0]
        key = ".".join(map(str, err.absolute_path)) or "(top level)"
        raise ConfigError(f"config key {key!r}: {err.message}")
    check_semantics(config)
    return config


def load(paths: Iterable[str | Path], check: bool = True) -> dict:
    """Merge YAML config files in order and (by default) validate the result."""
    config: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        config = merge(config, data)
    return validate(config) if check else config
