"""Reading a flow's bronze inputs through the catalog at pinned or latest versions."""

from __future__ import annotations

from pyspark.sql import DataFrame

from pipelines.core.config import Config, ConfigError
from pipelines.core.delta import DeltaStore


def read_sources(store: DeltaStore, cfg: Config, names: list[str], pinned: dict[str, int] | None = None
                 ) -> tuple[dict[str, DataFrame], dict[str, int]]:
    """The named bronze datasets at their pinned versions (latest when unpinned): frames and versions.

    Pinning a table the flow does not read is an error, so a typo cannot silently read the latest version.
    """
    pinned = pinned or {}
    unknown = sorted(set(pinned) - set(names))
    if unknown:
        raise ConfigError(f"features.bronze_versions: {unknown} are not read by this pipeline (it reads {names})")
    frames, versions = {}, {}
    for name in names:
        path = cfg.catalog.path(name)
        latest = store.version(path)
        if latest is None:
            raise FileNotFoundError(f"no bronze table {name!r} at {path}: run ingest first")
        version = pinned.get(name, latest)
        if version > latest:
            raise ConfigError(f"features.bronze_versions.{name}: version {version} does not exist "
                              f"(latest is {latest})")
        frames[name], versions[name] = store.read(path, version), version
    return frames, versions
