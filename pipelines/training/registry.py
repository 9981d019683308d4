"""Model Registry: register the logged model and move the aliases.

The new version becomes `champion` only when its test metric beats the current champion's (the first version
is champion); otherwise it becomes `challenger`. Beating means higher, or lower for an error metric
(`lower_is_better`: RMSE, MAE, log loss). Each version carries its test metric as a tag, so the
comparison needs no run lookups and survives runs being deleted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class Promotion:
    name: str
    version: str
    alias: str  # champion | challenger
    metric: str
    value: float
    previous_champion: str | None
    previous_value: float | None


def current_champion(client: MlflowClient, name: str, metric_tag: str,
                     lower_is_better: bool = False) -> tuple[str, float] | None:
    """(version, metric) of the version holding alias champion, or None when there is none; a champion without
    the metric counts as the worst value."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    value = mv.tags.get(metric_tag)
    if value is None and mv.run_id:
        value = client.get_run(mv.run_id).data.metrics.get(metric_tag)
    worst = float("inf") if lower_is_better else float("-inf")
    return str(mv.version), float(value) if value is not None else worst


def register_and_promote(name: str, model_uri: str, metric_tag: str, value: float,
                         tags: dict[str, str] | None = None, lower_is_better: bool = False) -> Promotion:
    """Register `model_uri` as a new version of `name`, tag it, and give it alias champion or challenger."""
    client = MlflowClient()
    before = current_champion(client, name, metric_tag, lower_is_better)
    mv = mlflow.register_model(model_uri, name)
    for k, v in {**(tags or {}), metric_tag: repr(float(value))}.items():
        client.set_model_version_tag(name, mv.version, k, v)
    better = (value < before[1] if lower_is_better else value > before[1]) if before else True
    wins = before is None or (not math.isnan(value) and better)
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(name, alias, mv.version)
    return Promotion(name, str(mv.version), alias, metric_tag, float(value),
                     before[0] if before else None, before[1] if before else None)
