"""Layered config: base < pipeline profile < env < --set, typed validation, errors that name the key and the file;
the flow union, environment interpolation and the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core.config import REPO_ROOT, CategoryLabel, ConfigError, load_config

pytestmark = pytest.mark.fast  # the fast tier: no JVM, cluster or training process


def _conf(tmp_path: Path, local_yaml: str, profiles: tuple[str, ...] = ("flights",)) -> Path:
    """A copy of conf/base and of the named profiles (conf/pipelines/<name>), with conf/local/spark.yaml given."""
    root = tmp_path / "conf"
    (root / "base").mkdir(parents=True)
    (root / "local").mkdir()
    for f in (REPO_ROOT / "conf" / "base").glob("*.yaml"):
        (root / "base" / f.name).write_text(f.read_text())
    for name in profiles:
        (root / "pipelines" / name).mkdir(parents=True)
        for f in (REPO_ROOT / "conf" / "pipelines" / name).glob("*.yaml"):
            (root / "pipelines" / name / f.name).write_text(f.read_text())
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
    assert cfg.catalog.path("flights") == f"{tmp_path}/ws/tables/bronze/flights"
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/ws/mlflow.db"
    monkeypatch.delenv("PIPELINE_HOME")
    assert load_config("local").workspace.endswith("/workspace")
    with pytest.raises(ConfigError, match="MLFLOW_TOKEN_FOR_TEST is not set"):
        load_config("local", ["mlflow.tracking_uri=${oc.env:MLFLOW_TOKEN_FOR_TEST}"])


def test_conf_holds_no_secrets() -> None:
    text = "\n".join(p.read_text().lower() for p in (REPO_ROOT / "conf").rglob("*.yaml"))
    for word in ("password:", "secret:", "token:", "api_key:"):
        assert word not in text


def test_pipeline_profile_layers_between_base_and_env(tmp_path: Path) -> None:
    root = _conf(tmp_path, "demo:\n  seed: 11\n")
    (root / "pipelines" / "digits").mkdir(parents=True)
    (root / "pipelines" / "digits" / "mlflow.yaml").write_text("mlflow:\n  registered_model: digit-cnn\n"
                                                              "demo:\n  seed: 3\n  fraction: 0.5\n"
                                                              "flow:\n  kind: image\n")
    assert load_config("local", [], root).mlflow.registered_model == "flight-delay"
    cfg = load_config("local", ["pipeline=digits"], root)
    assert (cfg.pipeline, cfg.mlflow.registered_model) == ("digits", "digit-cnn")
    assert (cfg.demo.seed, cfg.demo.fraction) == (11, 0.5)  # env layer over the profile, profile over base
    with pytest.raises(ConfigError, match=r"unknown pipeline 'cats'; available: \['flights', 'digits'\]"):
        load_config("local", ["pipeline=cats"], root)




def test_flow_section_is_validated_by_its_kinds_model(tmp_path: Path) -> None:
    cfg = load_config("local")
    assert (cfg.flow.kind, cfg.flow.label.kind, cfg.flow.split.by) == ("tabular", "threshold", "month")
    with pytest.raises(ConfigError, match=r"flow\.kind: unknown kind 'video'; kinds are \['image', 'tabular', "
                                          r"'text'\] .*flow\.module\) \[--set\]"):
        load_config("local", ["flow.kind=video"])
    with pytest.raises(ConfigError, match=r"flow\.module: no module 'nowhere\.toy' on the Python path \[--set\]"):
        load_config("local", ["flow.kind=toy", "flow.module=nowhere.toy"])
    with pytest.raises(ConfigError, match=r"flow\.module: 'pipelines\.flows\.text' registers no flow of kind "
                                          r"'tabular' \[--set\]"):
        load_config("local", ["flow.module=pipelines.flows.text"])
    with pytest.raises(ConfigError, match=r"flow\.derived: unknown key \[--set\]"):  # digits: no tabular keys
        load_config("local", ["pipeline=digits", "flow.derived.x=1"])
    with pytest.raises(ConfigError, match=r"flow\.groups\.0\.kind: unknown kind 'text'"):
        load_config("local", ["flow.groups=[{kind: text, columns: [name]}]"])
    root = _conf(tmp_path, "spark: {}\n")
    flow = root / "pipelines" / "flights" / "flow.yaml"
    flow.write_text(flow.read_text().replace("buckets: 10", "buckets: 1"))
    with pytest.raises(ConfigError, match=r"flow\.groups\.2\.buckets: .*greater than or equal to 2 \(got 1\) "
                                          r"\(in bucketized group 'distance_bucket'\) "
                                          r"\[conf/pipelines/flights/flow\.yaml\]"):
        load_config("local", [], root)


def test_label_and_split_unions() -> None:
    cfg = load_config("local", ["flow.label={kind: category, column: tailnum, positive: [N1, N2]}",
                                "flow.split={by: date_range, train: [2013-01-01, 2013-09-30], "
                                "validation: [2013-10-01, 2013-11-30], test: [2013-12-01, 2013-12-31]}"])
    assert cfg.flow.label.positive == ["N1", "N2"] and not hasattr(cfg.flow.label, "name")
    assert [str(d) for d in cfg.flow.split.test] == ["2013-12-01", "2013-12-31"]
    cfg = load_config("local", ["flow.label={kind: regression, column: arr_delay}",
                                "flow.split={by: hash, validation: 0.1, test: 0.2}"])
    assert (cfg.flow.label.kind, cfg.flow.split.seed, cfg.flow.split_key) == ("regression", 7, cfg.flow.key)
    with pytest.raises(ConfigError, match=r"flow\.label\.kind: unknown kind 'ranking'"):
        load_config("local", ["flow.label.kind=ranking"])
    cfg = load_config("local", ["flow.label.kind=category", "flow.label.column=tailnum", "flow.label.positive=[N1]"])
    assert cfg.flow.label == CategoryLabel(column="tailnum", positive=["N1"])  # another kind replaces the mapping
    with pytest.raises(ConfigError, match=r"flow\.label\.positive: unknown key \[--set\]"):  # threshold has none
        load_config("local", ["flow.label.positive=[x]"])
    with pytest.raises(ConfigError, match=r"flow\.split\.by: unknown by 'week'"):
        load_config("local", ["flow.split.by=week"])
    with pytest.raises(ConfigError, match="date ranges of train and validation overlap"):
        load_config("local", ["flow.split={by: date_range, train: [2013-01-01, 2013-10-31], "
                              "validation: [2013-10-01, 2013-11-30]}"])
    with pytest.raises(ConfigError, match=r"flow\.split\.test: .*first <= last"):
        load_config("local", ["flow.split={by: date_range, train: [2013-01-01, 2013-10-31], "
                              "test: [2013-12-31, 2013-12-01]}"])
    with pytest.raises(ConfigError, match=r"flow\.split: .*sum < 1"):
        load_config("local", ["flow.split={by: hash, validation: 0.5, test: 0.5}"])
    with pytest.raises(ConfigError, match="more than one split"):
        load_config("local", ["flow.split.test=[9]"])
    with pytest.raises(ConfigError, match=r"flow\.groups: .*not known at prediction time: \['arr_delay'\]"):
        load_config("local", ["flow.unknown_at_prediction=[]", "flow.groups=[{kind: numeric, columns: [arr_delay]}]"])


def test_profile_inherits_nothing_from_flights() -> None:
    cfg = load_config("local", ["pipeline=tweets"])
    assert list(cfg.ingest.sources) == ["tweets"] and cfg.flow.kind == "text"
    assert not hasattr(cfg.flow, "derived") and not hasattr(cfg.flow, "joins")
    assert (cfg.mlflow.registered_model, cfg.features.source_table) == ("tweet-source", "tweets")
    assert list(load_config("local", ["pipeline=digits"]).ingest.sources) == ["digits"]
    flights = load_config("local")
    assert sorted(flights.ingest.sources) == ["airlines", "airports", "flights", "planes", "weather"]
    base = "\n".join(p.read_text() for p in (REPO_ROOT / "conf" / "base").glob("*.yaml"))
    assert "flight" not in base.replace("in-flight", "")


def test_env_interpolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CONF_TEST_VAR", raising=False)
    cfg = load_config("local", ["mlflow.experiment=exp-${oc.env:CONF_TEST_VAR,dflt}"])
    assert cfg.mlflow.experiment == "exp-dflt"
    monkeypatch.setenv("CONF_TEST_VAR", "")  # empty counts as unset
    assert load_config("local", ["mlflow.experiment=${oc.env:CONF_TEST_VAR,dflt}"]).mlflow.experiment == "dflt"
    monkeypatch.setenv("CONF_TEST_VAR", "set")
    assert load_config("local", ["mlflow.experiment=${oc.env:CONF_TEST_VAR,dflt}"]).mlflow.experiment == "set"
    root = _conf(tmp_path, "spark:\n  master: ${oc.env:CONF_TEST_MISSING}\n")
    with pytest.raises(ConfigError, match=r"spark\.master: environment variable CONF_TEST_MISSING is not set "
                                          r"\[conf/local/spark\.yaml\]"):
        load_config("local", [], root)


def test_catalog(tmp_path: Path) -> None:
    cfg = load_config("local", [f"storage.workspace={tmp_path}"])
    cat = cfg.catalog
    assert cat.landing == f"{tmp_path}/tables/landing"
    assert cat.path("flights") == f"{tmp_path}/tables/bronze/flights"
    assert cat.path("features") == f"{tmp_path}/tables/silver/flight_features"
    assert cat.path("ingest_log") == f"{tmp_path}/tables/bronze/_ingest_log"
    assert cat.path("quarantine_rows") == f"{tmp_path}/tables/quarantine/rows"
    d = cat.get("predictions")
    assert (d.layer, d.table, d.partition_by, d.engine) == ("gold", "predictions", ("flight_date",), "auto")
    assert cat.get("flights").partition_by == ("year", "month")
    assert set(cat.names()) == {"flights", "weather", "planes", "airlines", "airports", "features", "predictions",
                                "drift", "ingest_log", "quarantine_rows", "quarantine_files"}
    with pytest.raises(ConfigError, match=r"unknown dataset 'nope'; datasets are \['airlines', 'airports'"):
        cat.path("nope")
    over = load_config("local", [f"storage.workspace={tmp_path}", "catalog.drift.layer=silver",
                                 "catalog.drift.table=drift_v2", "catalog.drift.engine=embedded"]).catalog.get("drift")
    assert (over.path, over.engine) == (f"{tmp_path}/tables/silver/drift_v2", "embedded")
    with pytest.raises(ConfigError, match=r"catalog: unknown datasets \['nope'\]; datasets are .* \[--set\]"):
        load_config("local", ["catalog.nope.table=x"])
    with pytest.raises(ConfigError, match=r"catalog: datasets 'predictions' and 'drift' both resolve to "
                                          r".*/tables/gold/same"):
        load_config("local", ["scoring.table=same", "monitor.table=same"])
    with pytest.raises(ConfigError, match=r"catalog\.features\.layer: .*'bronze'"):
        load_config("local", ["catalog.features.layer=platinum"])
    assert not hasattr(cfg, "table_path") and not hasattr(cfg, "landing")


def test_error_keys_through_sections_named_like_their_kind() -> None:
    with pytest.raises(ConfigError, match=r"training\.network\.mlp\.dropout: .*less than 1 \(got 2\) \[--set\]"):
        load_config("local", ["training.network.mlp.dropout=2"])
    with pytest.raises(ConfigError, match=r"flow\.label\.threshold: .*valid number.*\[--set\]"):
        load_config("local", ["flow.label.threshold=high"])
