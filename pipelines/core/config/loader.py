"""Layered YAML configuration on OmegaConf: conf/base, conf/pipelines/<pipeline>, conf/<env>, then --set overrides,
merged by OmegaConf, interpolated (environment variables as ${oc.env:VAR} or ${oc.env:VAR,default}), then
validated into the typed Config.

Every error names the dotted key and the file (or `--set`) that gave it, so a user can fix it without reading code.
Secrets are read from the environment that way, never stored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError

from pipelines.core.config.base import ConfigError
from pipelines.core.config.root import DEFAULT_PIPELINE, Config
from pipelines.core.logs import MASK, SECRET_KEY

REPO_ROOT = Path(__file__).resolve().parents[3]
ENVS = ("local", "standalone", "yarn")
_MISSING_ENV = re.compile(r"Environment variable '([^']+)' not found")
_ENV_REFERENCE = re.compile(r"\$\{oc\.env:\s*([A-Za-z_][A-Za-z0-9_]*)")
_NO_DEFAULT = object()


def _env(key: str, default: Any = _NO_DEFAULT) -> Any:
    """OmegaConf's `oc.env`, except that an empty variable counts as unset (as the shell's ${VAR:-default} does),
    so `MLFLOW_TRACKING_URI= ./spark-submit.sh ...` is the same as not setting it."""
    value = os.environ.get(key, "")
    if value != "":
        return value
    if default is _NO_DEFAULT:
        raise KeyError(f"Environment variable '{key}' not found")
    return None if default is None else str(default)


OmegaConf.register_new_resolver("oc.env", _env, replace=True, use_cache=False)


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: dates stay ISO strings (OmegaConf holds no date objects; the schema
    parses them where a date is meant)."""


_Loader.yaml_implicit_resolvers = {
    c: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for c, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict:
    try:
        data = _yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", parsed value); the value is read as YAML so numbers and lists keep their type."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: bad key")
    try:
        value = _yaml(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _split_key(node: Any, key: str) -> list[str]:
    """Split a dotted override key along the merged config; a map with dotted keys (spark.conf) takes the rest.

    `spark.conf.spark.sql.shuffle.partitions` -> ["spark", "conf", "spark.sql.shuffle.partitions"].
    """
    parts: list[str] = key.split(".")
    path: list[str] = []
    while parts:
        rest = ".".join(parts)
        if isinstance(node, DictConfig):
            keys = [str(k) for k in node]
            if rest in keys or (parts[0] not in keys and any("." in k for k in keys)):
                return [*path, rest]
        path.append(parts.pop(0))
        node = node.get(path[-1]) if isinstance(node, DictConfig) else None
    return path


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def _record(origin: dict[str, str], before: Any, over: dict, where: str, prefix: str = "") -> None:
    """Remember which layer set each dotted key: a mapping merged into a mapping keeps its own origin."""
    for k, v in over.items():
        key = f"{prefix}{k}"
        prev = before.get(k) if isinstance(before, dict) else None
        if isinstance(v, dict) and isinstance(prev, dict):
            _record(origin, prev, v, where, key + ".")
            continue
        origin[key] = where
        if isinstance(v, dict):
            _record(origin, None, v, where, key + ".")


TAGS = ("kind", "by")  # discriminators of the config's unions (flow, label, split, groups)


def _replaced(before: Any, over: dict, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Mappings that `over` switches to another union member (a different `kind` or `by`): those are replaced,
    not merged, so `--set flow.label={kind: regression, column: price}` leaves no threshold behind."""
    out = []
    for k, v in over.items():
        prev = before.get(k) if isinstance(before, dict) else None
        if not (isinstance(v, dict) and isinstance(prev, dict)):
            continue
        if any(t in v and t in prev and v[t] != prev[t] for t in TAGS):
            out.append((*path, k))
        else:
            out.extend(_replaced(prev, v, (*path, k)))
    return out


def _merge(merged: DictConfig, over: dict, origin: dict[str, str], where: str) -> DictConfig:
    before = OmegaConf.to_container(merged, resolve=False)
    for path in _replaced(before, over):
        node = merged
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
        node = before
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
        prefix = ".".join(path)
        for key in [k for k in origin if k == prefix or k.startswith(prefix + ".")]:
            del origin[key]
    _record(origin, before, over, where)
    try:
        return OmegaConf.merge(merged, OmegaConf.create(over))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(f"{key}: {_omegaconf_error(key, e)} [{where}]") from None


def _pipeline_name(root: Path, env: str, overrides: list[str] | tuple[str, ...]) -> str:
    """The pipeline profile asked for: the last --set pipeline=..., else conf/<env> or conf/base, else the default."""
    for item in reversed(list(overrides)):
        key, value = parse_override(item)
        if key == "pipeline":
            return str(value)
    for layer in (root / env, root / "base"):
        for path in sorted(layer.glob("*.yaml"), reverse=True) if layer.is_dir() else []:
            data = _read_yaml(path)
            if "pipeline" in data:
                return str(data["pipeline"])
    return DEFAULT_PIPELINE


def _conf_root(conf_dir: str | Path | None) -> Path:
    return Path(conf_dir or os.environ.get("PIPELINE_CONF_DIR") or REPO_ROOT / "conf")


def env_references(conf_dir: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The environment variables a config may read: every ${oc.env:VAR} in the config folder's YAML files and in
    `overrides` (what a driver in another environment, a YARN container, must be handed to load the same config)."""
    texts = [p.read_text() for p in sorted(_conf_root(conf_dir).rglob("*.yaml"))] + list(overrides)
    return {name for text in texts for name in _ENV_REFERENCE.findall(text)}


def available_pipelines(conf_dir: str | Path | None = None) -> list[str]:
    """Pipeline profiles: one per folder in conf/pipelines/, the default (flights) first."""
    folder = _conf_root(conf_dir) / "pipelines"
    found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return sorted(found, key=lambda p: p != DEFAULT_PIPELINE)


def _resolve(merged: DictConfig, origin: dict[str, str]) -> dict:
    """Interpolate (${oc.env:VAR,default}, ${other.key}); a failure names the key and where it was set."""
    try:
        return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        missing = _MISSING_ENV.search(str(e).splitlines()[0])
        if missing:
            msg = f"environment variable {missing.group(1)} is not set"
        else:
            msg = f"{_omegaconf_error(key, e)} (environment variables are written ${{oc.env:VAR}} or " \
                  "${oc.env:VAR,default})"
        raise ConfigError(f"{key}: {msg} [{_origin_of(key, origin)}]") from None


def _omegaconf_error(key: str, e: OmegaConfBaseException) -> str:
    """OmegaConf's message, unless the key names a secret: OmegaConf quotes the value it could not parse."""
    return "not a valid value (not shown: the key names a secret)" if SECRET_KEY.search(key) else \
        str(e).splitlines()[0]


def load_config(
    env: str = "local", overrides: list[str] | tuple[str, ...] = (), conf_dir: str | Path | None = None
) -> Config:
    """Load conf/base/*.yaml, conf/pipelines/<pipeline>/*.yaml, conf/<env>/*.yaml, then `key=value` overrides;
    interpolate; validate; return Config. The pipeline profile (flights by default) selects a whole flow by name."""
    if env not in ENVS:
        raise ConfigError(f"env: unknown environment {env!r}; choose one of {ENVS}")
    root = _conf_root(conf_dir)
    if not (root / "base").is_dir():
        raise ConfigError(f"config folder {root}/base not found (set PIPELINE_CONF_DIR or --conf-dir)")
    origin: dict[str, str] = {"env": "--env"}
    merged: DictConfig = OmegaConf.create({"env": env})
    pipeline = _pipeline_name(root, env, overrides)
    if pipeline not in available_pipelines(root):
        raise ConfigError(f"pipeline: unknown pipeline {pipeline!r}; available: {available_pipelines(root)}")
    for layer in (root / "base", root / "pipelines" / pipeline, root / env):
        for path in sorted(layer.glob("*.yaml")) if layer.is_dir() else []:
            where = str(path.relative_to(root.parent) if root.parent in path.parents else path)
            merged = _merge(merged, _read_yaml(path), origin, where)
    for item in overrides:
        key, value = parse_override(item)
        merged = _merge(merged, _nest(_split_key(merged, key), value), origin, "--set")
    data = _resolve(merged, origin)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, origin, data)) from None
    try:
        cfg.catalog  # noqa: B018 - built now so that a bad catalog fails at load time
    except ConfigError as e:
        raise ConfigError(f"{e} [{_origin_of('catalog', origin)}]") from None
    return cfg


def _walk(data: Any, loc: tuple) -> tuple[str, str]:
    """The dotted key of a pydantic error location in the input (union tags such as a label's `threshold` are
    dropped), and a note naming the list item it is in when that item has a name (a feature group)."""
    parts: list[str] = []
    node, note = data, ""
    skipped: Any = None
    for i, p in enumerate(loc):
        if isinstance(node, dict) and node is not skipped and isinstance(p, str) and p in [node.get(t) for t in TAGS]:
            # The union member pydantic validated against (before the member's fields), unless it is also a key
            # that the rest of the location continues into (training.network: kind mlp, and a section mlp).
            nxt = loc[i + 1] if i + 1 < len(loc) else None
            inner = node.get(p)
            if p not in node or (nxt in node and not (isinstance(inner, dict) and nxt in inner)):
                skipped = node
                continue
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
            node = node[p]
            if isinstance(node, dict) and "name" in node:
                note = f"{node.get('kind', '')} group {node['name']!r}".strip()
        else:
            node = None
        parts.append(str(p))
    return ".".join(parts), note


def _describe(err: ValidationError, origin: dict[str, str], data: dict) -> str:
    lines = []
    for item in err.errors():
        key, note = _walk(data, item["loc"])
        msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            disc = str(item.get("ctx", {}).get("discriminator", "kind")).strip("'")
            key = f"{key}.{disc}" if key else disc
            tags = item.get("ctx", {}).get("expected_tags", "")
            msg = (f"unknown {disc} {item['ctx']['tag']!r}; {disc}s are [{tags}]"
                   if item["type"] == "union_tag_invalid" else f"missing {disc}; one of [{tags}]")
        elif item["type"] != "extra_forbidden" and "input" in item and not isinstance(item["input"], dict):
            msg += f" (got {item['input']!r})"
        if SECRET_KEY.search(key) and isinstance(item.get("input"), str) and item["input"]:
            msg = msg.replace(item["input"], MASK)  # a validator's message may quote the value itself
        if note:
            msg += f" (in {note})"
        lines.append(f"{key}: {msg} [{_origin_of(key, origin)}]")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _origin_of(key: str, origin: dict[str, str]) -> str:
    parts = key.split(".")
    while parts:
        k = ".".join(parts)
        if k in origin:
            return origin[k]
        parts.pop()
    return "defaults"
