"""Secrets stay in the environment: credentials in URIs and secret-named settings are masked wherever the project
writes them. The whole-chain check (a password in the tracking server's URI and a secret Spark setting, searched
for in every byte a real run leaves) rides on the standalone chain: tests/test_standalone.py."""

from __future__ import annotations


def test_redact_values_and_config() -> None:
    """Credentials in URIs and secret-named keys are masked; everything else is kept as it was."""
    from pipelines.core.logs import redact, redact_config

    assert redact("http://alice:pw@host:5000/x") == "http://alice:***@host:5000/x"
    assert redact("--conf spark.hadoop.fs.s3a.secret.key=abc --set x=1") == \
        "--conf spark.hadoop.fs.s3a.secret.key=*** --set x=1"
    assert redact("'--set=spark.conf.spark.hadoop.fs.s3a.secret.key=abc' x") == \
        "'--set=spark.conf.spark.hadoop.fs.s3a.secret.key=***' x"
    assert redact("MLFLOW_TRACKING_TOKEN=tok123 ok") == "MLFLOW_TRACKING_TOKEN=*** ok"
    assert redact("spark://127.0.0.1:7077 and s3a://bucket/key") == "spark://127.0.0.1:7077 and s3a://bucket/key"
    cfg = {"mlflow": {"tracking_uri": "https://u:p@h"}, "spark": {"conf": {"spark.hadoop.fs.s3a.access.key": "A",
                                                                            "spark.sql.shuffle.partitions": "4"}}}
    assert redact_config(cfg) == {"mlflow": {"tracking_uri": "https://u:***@h"},
                                  "spark": {"conf": {"spark.hadoop.fs.s3a.access.key": "***",
                                                     "spark.sql.shuffle.partitions": "4"}}}
