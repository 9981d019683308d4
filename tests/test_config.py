"""Layered config: base < env < --set, typed validation, errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core.config import REPO_ROOT, ConfigError, load_config


def _conf(tmp_path: Path, local_yaml: str) -> Path:
    root = tmp_path / "conf"
    (root / "base").mkdir(parents=True)
    (root / "local").mkdir()
    for f in (REPO_ROOT / "conf" / "base").glob("*.yaml"):
        (root / "base" / f.name).write_text(f.read_text())
    (root / "local" / "spark.yaml").write_text(local_yaml)
    return root


def test_layers_and_overrides(tmp_path: Path) -> None:
    root = _conf(tmp_path, "spark:\n  master: local[3]\n  conf:\n    spark.sql.shuffle.partitions: 5\n")
    cfg = load_config("local", ["demo.fraction=0.25", "spark.conf.spark.sql.shuffle.partitions=6"], root)
    assert cfg.spark.master == "local[3]"  # env layer over base
    assert cfg.demo.fraction == 0.25  # --set over base
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "6"  # --set over env
    assert cfg.spark.conf["spark.sql.session.timeZone"] == "UTC"  # base kept where not overridden
    assert cfg.ingest.sources["flights"].columns["time_hour"] == "timestamp"


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    root = _conf(tmp_path, "spark:\n  mastr: local[1]\n")
    with pytest.raises(ConfigError) as e:
        load_config("local", [], root)
    assert "spark.mastr: unknown key" in str(e.value)
    assert "conf/local/spark.yaml" in str(e.value)


def test_wrong_type_names_key_and_file(tmp_path: Path) -> None:
    root = _conf(tmp_path, "spark:\n  executor_cores: two\n")
    with pytest.raises(ConfigError) as e:
        load_config("local", [], root)
    msg = str(e.value)
    assert "spark.executor_cores" in msg and "conf/local/spark.yaml" in msg and "'two'" in msg


def test_bad_override_value_names_set() -> None:
    with pytest.raises(ConfigError, match=r"demo.fraction: .*less than or equal to 1.*\[--set\]"):
        load_config("local", ["demo.fraction=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("local", ["demo.fraction"])


def test_unknown_env_and_bad_column_type() -> None:
    with pytest.raises(ConfigError, match="unknown environment"):
        load_config("prod")
    with pytest.raises(ConfigError, match=r"ingest.sources.airlines.columns: .*unsupported column types"):
        load_config("local", ["ingest.sources.airlines.columns.name=varchar"])


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "ws"))
    cfg = load_config("local")
    assert cfg.workspace == str(tmp_path / "ws")
    assert cfg.table_path("bronze", "flights") == f"{tmp_path}/ws/tables/bronze/flights"
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/ws/mlflow.db"
    monkeypatch.delenv("PIPELINE_HOME")
    assert load_config("local").workspace.endswith("/workspace")
    with pytest.raises(ConfigError, match="MLFLOW_TOKEN_FOR_TEST is not set"):
        load_config("local", ["mlflow.tracking_uri=${MLFLOW_TOKEN_FOR_TEST}"])


def test_conf_holds_no_secrets() -> None:
    text = "\n".join(p.read_text().lower() for p in (REPO_ROOT / "conf").rglob("*.yaml"))
    for word in ("password:", "secret:", "token:", "api_key:"):
        assert word not in text


def test_pipeline_profile_layers_between_base_and_env(tmp_path: Path) -> None:
    root = _conf(tmp_path, "demo:\n  seed: 11\n")
    (root / "pipelines" / "digits").mkdir(parents=True)
    (root / "pipelines" / "digits" / "mlflow.yaml").write_text("mlflow:\n  registered_model: digit-cnn\n"
                                                              "demo:\n  seed: 3\n  fraction: 0.5\n")
    assert load_config("local", [], root).mlflow.registered_model == "flight-delay"
    cfg = load_config("local", ["pipeline=digits"], root)
    assert (cfg.pipeline, cfg.mlflow.registered_model) == ("digits", "digit-cnn")
    assert (cfg.demo.seed, cfg.demo.fraction) == (11, 0.5)  # env layer over the profile, profile over base
    with pytest.raises(ConfigError, match=r"unknown pipeline 'cats'; available: \['flights', 'digits'\]"):
        load_config("local", ["pipeline=cats"], root)
