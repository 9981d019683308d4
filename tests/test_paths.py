"""Table names and paths from config and --set stay inside their layer: a name or glob that would write (or read)
outside it is a configuration error naming the key, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.config import REPO_ROOT, ConfigError, load_config

pytestmark = pytest.mark.fast  # the fast tier: no JVM, cluster or training process

ESCAPES = [
    ("catalog.predictions.table=../../etc", "catalog.predictions.table"),
    ("catalog.drift.table=/etc", "catalog.drift.table"),
    ("scoring.table=../../etc", "scoring.table"),
    ("scoring.table=''", "scoring.table"),
    ("monitor.table=a/../../b", "monitor.table"),
    ("features.output_table=..", "features.output_table"),
    ("features.output_table=x/y", "features.output_table"),
    ("ingest.sources.flights.table=../silver/flight_features", "ingest.sources.flights.table"),
    ("ingest.sources.weather.path=../../../etc/*.csv", "ingest.sources.weather.path"),
    ("ingest.sources.weather.path=/etc/passwd", "ingest.sources.weather.path"),
    ("ingest.sources.weather.path=''", "ingest.sources.weather.path"),
    ("scoring.stream_path=incoming/../../../x/*.csv", "scoring.stream_path"),
    ("storage.workspace=/tmp/ws/../../etc", "storage.workspace"),
    ("storage.workspace=''", "storage.workspace"),
    ("storage.workspace=/", "storage.workspace"),
]


@pytest.mark.parametrize(("override", "key"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escaping_name_or_path_is_a_config_error(override: str, key: str, tmp_path: Path) -> None:
    overrides = [f"storage.workspace={tmp_path}", override]
    with pytest.raises(ConfigError) as err:
        load_config("local", overrides)
    assert f"{key}:" in str(err.value) and "[--set]" in str(err.value), str(err.value)


def test_profiles_still_load_and_every_table_is_under_its_layer(tmp_path: Path) -> None:
    for pipeline in ("flights", "digits", "tweets", "diamonds"):
        cfg = load_config("local", [f"storage.workspace={tmp_path}", f"pipeline={pipeline}",
                                    "scoring.stream_path=incoming/*.csv", "catalog.predictions.table=p.v2-x"])
        for d in cfg.catalog:
            layer_dir = (tmp_path / "tables" / d.layer).resolve()
            assert Path(d.path).resolve().parent == layer_dir, d


def test_job_exits_2_naming_the_key_and_writes_nothing(tmp_path: Path) -> None:
    """What an operator sees: the job refuses before Spark starts, and nothing outside the workspace appears."""
    res = subprocess.run([sys.executable, "-m", "jobs.score", "--date", "2013-01-01", "--set",
                          f"storage.workspace={tmp_path / 'ws'}", "--set", "scoring.table=../../../escaped"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "scoring.table:" in res.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "ws").exists()
