"""Secrets stay in the environment: credentials in URIs and secret-named settings are masked wherever the project
writes them (one definition of "secret" for redact(), redact_config() and Spark's own redaction), config errors and
unhandled exceptions print them masked, and nothing secret is an argument of a command line. The whole-chain checks
(sentinel secrets searched for in every command line sampled during a run, every file it leaves, MLflow and the
console) ride on the standalone chain (tests/test_standalone.py) and the YARN cluster-mode score (tests/test_yarn.py);
the Spark UI's binding, the event log and the History Server on tests/test_operating.py's application."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipelines.core.config import REPO_ROOT, ConfigError, load_config
from tests.support.servers import free_port

SECRET = "Sx9Vq2LmT"  # a sentinel for the fast tests below


@pytest.mark.fast
def test_redact_values_and_config() -> None:
    """Credentials in URIs and secret-named keys are masked; everything else is kept as it was."""
    from pipelines.core.logs import redact, redact_config

    assert redact("http://alice:pw@host:5000/x") == "http://alice:***@host:5000/x"
    assert redact("--conf spark.hadoop.fs.s3a.secret.key=abc --set x=1") == \
        "--conf spark.hadoop.fs.s3a.secret.key=*** --set x=1"
    assert redact("'--set=spark.conf.spark.hadoop.fs.s3a.secret.key=abc' x") == \
        "'--set=spark.conf.spark.hadoop.fs.s3a.secret.key=***' x"
    # An unquoted value ends at the next key= or --option (its own end is unknowable in free text: it may hold spaces)
    assert redact("MLFLOW_TRACKING_TOKEN=tok123 ok --x 1") == "MLFLOW_TRACKING_TOKEN=*** --x 1"
    assert redact("spark://127.0.0.1:7077 and s3a://bucket/key") == "spark://127.0.0.1:7077 and s3a://bucket/key"
    cfg = {"mlflow": {"tracking_uri": "https://u:p@h"}, "spark": {"conf": {"spark.hadoop.fs.s3a.access.key": "A",
                                                                            "spark.sql.shuffle.partitions": "4"}}}
    assert redact_config(cfg) == {"mlflow": {"tracking_uri": "https://u:***@h"},
                                  "spark": {"conf": {"spark.hadoop.fs.s3a.access.key": "***",
                                                     "spark.sql.shuffle.partitions": "4"}}}


@pytest.mark.fast
def test_redact_masks_whole_values() -> None:
    """What the first rule missed: base64 padding ('='), commas and spaces in a value, the Azure account key (no
    secret word but 'account.key'), a password holding '@'."""
    from pipelines.core.logs import redact, redact_config

    assert redact("--conf spark.hadoop.fs.s3a.secret.key=abc/def== --x 1") == \
        "--conf spark.hadoop.fs.s3a.secret.key=*** --x 1"
    assert redact("--conf 'spark.x.password=a,b c' --conf y=1") == "--conf 'spark.x.password=***' --conf y=1"
    assert redact("spark conf: spark.x.token=a b,c spark.sql.shuffle.partitions=4") == \
        "spark conf: spark.x.token=*** spark.sql.shuffle.partitions=4"
    assert redact('export X_AUTH_TOKEN="a b=c" next=1') == 'export X_AUTH_TOKEN="***" next=1'
    azure = "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net"
    assert redact(f"{azure}=QUJD/ZEY+Zw== x=1") == f"{azure}=*** x=1"
    assert redact_config({"spark": {"conf": {azure: "QUJD"}}}) == {"spark": {"conf": {azure: "***"}}}
    assert redact("API request to http://u:p@ss=w@host:5000/api failed") == \
        "API request to http://u:***@host:5000/api failed"
    assert redact("http://u:p%40ss=w@host/x and https://h/y?mail=a@b.c") == \
        "http://u:***@host/x and https://h/y?mail=a@b.c"
    assert redact("{'fs.s3a.secret.key': 'a b', \"api_key\": \"x'y\"}") == \
        "{'fs.s3a.secret.key': '***', \"api_key\": \"***\"}"
    assert redact("partitions=8 master=local[2] file=/x/y.csv") == "partitions=8 master=local[2] file=/x/y.csv"


@pytest.mark.fast
def test_spark_redaction_follows_the_one_definition() -> None:
    """The session's spark.redaction.regex (keys and values) and spark.redaction.string.regex (text such as SQL
    plans) mask what redact() masks; a spark.conf of the user's own wins. (The regexes are Java's: only syntax that
    Python's re shares is used, so they are checked here; the real JVM's event log and History Server are checked
    in tests/test_operating.py.)"""
    from pipelines.core.logs import redact
    from pipelines.core.session import derived_conf

    conf = derived_conf(load_config("local", []), console=False)
    keys = re.compile(conf["spark.redaction.regex"])
    strings = re.compile(conf["spark.redaction.string.regex"])
    secret_keys = ["spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key", "spark.authenticate.secret",
                   "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net", "MLFLOW_TRACKING_TOKEN",
                   "spark.hadoop.fs.gs.auth.service.account.private.key", "x.API_KEY", "x.credentials", "x.passwd"]
    for key in secret_keys:
        assert keys.search(key), key
        assert redact(f"{key}=v1") == f"{key}=***", key
        assert strings.search(f"{key}=v1"), key
    for value in ["http://u:pw@host:5000", "https://u:p@ss@h/x"]:
        assert keys.search(value) and strings.search(value) and redact(value) != value, value
    for plain in ["spark.sql.shuffle.partitions", "spark.master", "local[2]", "hdfs://nn:8020/x", "spark.app.name"]:
        assert not keys.search(plain) and not strings.search(plain), plain
    own = derived_conf(load_config("local", ["spark.conf.spark.redaction.regex=(?i)mine"]), console=False)
    assert "spark.redaction.regex" not in own and "spark.redaction.string.regex" in own


@pytest.mark.parametrize("override", [
    f"mlflow.tracking_uri=[http://u:{SECRET}@h]",  # a wrong type: pydantic echoes the input
    f"storage.workspace=http://u:{SECRET}@h/../x",  # a validator's message quotes the value
    f".fs.s3a.secret.key={SECRET}",  # a bad key
    f"spark.conf.spark.hadoop.fs.s3a.secret.key=a${{b{SECRET}",  # a bad interpolation: OmegaConf quotes it
    f"mlflow.experiment={{password: {SECRET}}}",  # a wrong type under a secret-named key
])
@pytest.mark.fast
def test_config_errors_do_not_echo_secrets(override: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("local", [override])
    assert SECRET not in str(err.value), str(err.value)


@pytest.mark.fast
def test_submit_config_error_is_masked() -> None:
    """spark-submit.sh prints a config error itself (before any job): masked too."""
    res = subprocess.run([sys.executable, "-m", "pipelines.submit", "ingest", "--set",
                          f"mlflow.tracking_uri=[http://u:{SECRET}@h]", "--dry-run"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "mlflow.tracking_uri" in res.stderr, res.stderr
    assert SECRET not in res.stdout + res.stderr


def test_unhandled_exception_is_printed_masked(spark: SparkSession, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    """A job whose tracking server cannot be reached fails on an MLflow error that carries the tracking URL with its
    password: the job exits 1 and the traceback it prints (to cron's or Airflow's log) is masked."""
    import jobs.ingest as ingest_job
    from pipelines.core.logs import LOG, setup_logging

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):  # the job sets them: restored
        monkeypatch.setenv(var, os.environ.get(var, ""))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://pipeline:{SECRET}%40x=y@127.0.0.1:{free_port()}"  # nothing listens there
    setup_logging()
    (console,) = [h for h in LOG.handlers if type(h) is logging.StreamHandler]
    stream = console.setStream(sys.stderr)  # this test's stderr (the session's set-up ran under another capture)
    try:
        code = ingest_job.main(["--set", f"storage.workspace={tmp_path}", "--set", f"mlflow.tracking_uri={uri}"])
    finally:
        console.setStream(stream)
    out, err = capfd.readouterr()
    assert code == 1
    assert "Traceback" in err and "MlflowException" in err and "http://pipeline:***@127.0.0.1" in err, err[-3000:]
    assert SECRET not in out + err
    logs = list((tmp_path / "logs").glob("ingest-*.log"))
    assert logs and "MlflowException" in logs[0].read_text() and SECRET not in logs[0].read_text()


@pytest.mark.fast
def test_excepthooks_print_masked(tmp_path: Path) -> None:
    """Outside run_job (an import, a thread): the hooks setup_logging installs print tracebacks masked."""
    code = ("import threading\nfrom pipelines.core.logs import setup_logging\nsetup_logging()\n"
            "def fail(): raise RuntimeError('thread: ' + URL)\n"
            "t = threading.Thread(target=fail); t.start(); t.join()\n"
            "raise RuntimeError('main: ' + URL)\n")
    res = subprocess.run([sys.executable, "-c", f"URL = 'http://u:{SECRET}@h/x'\n{code}"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert res.returncode == 1
    assert "RuntimeError: thread: http://u:***@h/x" in res.stderr and "RuntimeError: main: http://u:***@h/x" \
        in res.stderr, res.stderr
    assert SECRET not in res.stderr + res.stdout


@pytest.mark.fast
def test_ingest_records_the_landing_zone_masked(tmp_path: Path) -> None:
    """ingest's MLflow record (the `landing` param and the file report) masks a landing URI's password."""
    from pipelines.stages.ingest.deliveries import FileResult, SourceResult
    from pipelines.stages.ingest.run import ingest_record

    cfg = load_config("local", [f"storage.workspace=hdfs://u:{SECRET}@nn:8020/ws"])
    files = [FileResult(f"{cfg.catalog.landing}/flights/f1.csv", 10, 1, "ingested", rows_in=2, rows_ok=2)]
    params, report = ingest_record(cfg, [SourceResult("flights", files)], "delta-spark")
    assert params["landing"] == "hdfs://u:***@nn:8020/ws/tables/landing"
    assert report["flights"]["files"][0]["file"] == "hdfs://u:***@nn:8020/ws/tables/landing/flights/f1.csv"
    assert SECRET not in json.dumps(params) + json.dumps(report)


@pytest.mark.fast
def test_private_files_are_private(tmp_path: Path) -> None:
    """The properties and job files a submit writes: 0600 in a 0700 folder, removed afterwards; Java's properties
    syntax escaped so Spark reads back exactly what was written."""
    from pipelines.core.handoff import private_dir, read_job_file, write_job_file, write_properties

    conf = {"spark.a": "x=y:z #1 \\ é", "spark.b key": " lead", "spark.c": "line1\nline2"}
    with private_dir() as d:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        props = write_properties(d / "spark.properties", conf)
        job = write_job_file(d / "job.json", ["a.b=1", f"x.secret={SECRET}"], {"MLFLOW_TRACKING_URI": "http://h"})
        assert stat.S_IMODE(props.stat().st_mode) == stat.S_IMODE(job.stat().st_mode) == 0o600
        assert _java_properties(props, tmp_path) == conf
        assert read_job_file({"PIPELINE_JOB_FILE": str(job)}) == (
            ["a.b=1", f"x.secret={SECRET}"], {"MLFLOW_TRACKING_URI": "http://h"})
    assert not d.exists()
    assert read_job_file({}) == ([], {})


def _java_properties(path: Path, workdir: Path) -> dict[str, str]:
    """`path` as java.util.Properties.load reads it (UTF-8, as Spark does), printed back as JSON strings."""
    src = workdir / "Dump.java"
    src.write_text(
        "import java.io.*; import java.nio.charset.StandardCharsets; import java.util.*;\n"
        "public class Dump { public static void main(String[] a) throws Exception {\n"
        "  Properties p = new Properties();\n"
        "  try (Reader r = new InputStreamReader(new FileInputStream(a[0]), StandardCharsets.UTF_8)) { p.load(r); }\n"
        "  for (String k : new TreeSet<>(p.stringPropertyNames())) {\n"
        "    System.out.println(esc(k) + \"\\t\" + esc(p.getProperty(k))); } }\n"
        "  static String esc(String s) { StringBuilder b = new StringBuilder();\n"
        "    for (char c : s.toCharArray()) b.append(String.format(\"%04x\", (int) c)); return b.toString(); } }\n")
    res = subprocess.run(["java", str(src), str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr

    def dec(h: str) -> str:
        return "".join(chr(int(h[i:i + 4], 16)) for i in range(0, len(h), 4))

    return dict(tuple(dec(x) for x in line.split("\t")) for line in res.stdout.splitlines())  # type: ignore[misc]
