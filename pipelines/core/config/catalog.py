"""The data catalog: every table a pipeline reads or writes, by name, derived from the config.

Names: each ingest source's table (bronze, by its table name), `features` (silver), `predictions` and `drift`
(gold), `ingest_log` (bronze/_ingest_log), `quarantine_rows` and `quarantine_files`. The optional `catalog:`
section overrides a dataset's layer, table or engine. A dataset's path is <workspace>/tables/<layer>/<table>.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pipelines.core.config.base import ConfigError, Strict, TableName

if TYPE_CHECKING:
    from pipelines.core.config.root import Config

LAYERS = ("landing", "bronze", "silver", "gold", "quarantine")
Layer = Literal["bronze", "silver", "gold", "quarantine"]
Engine = Literal["auto", "delta-spark", "embedded"]


class CatalogEntryConf(Strict):
    """Override of one derived dataset; unset fields keep the derived value."""

    layer: Layer | None = None
    table: TableName | None = None
    engine: Engine | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    layer: str
    table: str
    path: str
    engine: str  # storage engine for this table (auto, delta-spark, embedded)
    partition_by: tuple[str, ...] = ()


class Catalog:
    """Datasets by name; `landing` is the landing zone (files, not a table)."""

    def __init__(self, datasets: dict[str, Dataset], landing: str) -> None:
        self._datasets = dict(datasets)
        self.landing = landing

    def names(self) -> list[str]:
        return sorted(self._datasets)

    def get(self, name: str) -> Dataset:
        try:
            return self._datasets[name]
        except KeyError:
            raise ConfigError(f"catalog: unknown dataset {name!r}; datasets are {self.names()}") from None

    def path(self, name: str) -> str:
        return self.get(name).path

    def __contains__(self, name: object) -> bool:
        return name in self._datasets

    def __iter__(self):  # noqa: ANN204 - iterator of Dataset
        return iter(self._datasets.values())


def build_catalog(cfg: Config) -> Catalog:
    """Derive the datasets from the config, apply `catalog:` overrides, refuse unknown names and shared paths."""
    root = f"{cfg.workspace.rstrip('/')}/tables"
    engine = cfg.storage.engine
    derived: list[tuple[str, str, str, tuple[str, ...]]] = []  # name, layer, table, partition_by
    for src in cfg.ingest.sources.values():
        derived.append((src.table, "bronze", src.table, tuple(src.partition_by)))
    flow = cfg.flow
    date_part = (flow.date_name,) if getattr(flow, "has_date", False) else ()  # image, text: no dates
    derived += [
        ("features", "silver", cfg.features.output_table, ()),
        ("predictions", "gold", cfg.scoring.table, date_part),
        ("drift", "gold", cfg.monitor.table, ("window",)),
        ("ingest_log", "bronze", "_ingest_log", ()),
        ("quarantine_rows", "quarantine", "rows", ("source",)),
        ("quarantine_files", "quarantine", "files", ()),
    ]
    names = sorted({d[0] for d in derived})
    unknown = sorted(set(cfg.catalog_overrides) - set(names))
    if unknown:
        raise ConfigError(f"catalog: unknown datasets {unknown}; datasets are {names}")
    datasets: dict[str, Dataset] = {}
    for name, layer, table, parts in derived:
        if name in datasets:
            raise ConfigError(f"catalog: two datasets are named {name!r} (an ingest source's table takes the name)")
        over = cfg.catalog_overrides.get(name, CatalogEntryConf())
        layer, table = over.layer or layer, over.table or table
        datasets[name] = Dataset(name, layer, table, f"{root}/{layer}/{table}", over.engine or engine, parts)
    by_path: dict[str, str] = {}
    for d in datasets.values():
        if d.path in by_path:
            raise ConfigError(f"catalog: datasets {by_path[d.path]!r} and {d.name!r} both resolve to {d.path}")
        by_path[d.path] = d.name
    return Catalog(datasets, f"{root}/landing")
