"""The spark-submit command a job runs with, built without running it: options from the profile, the shipped code
and job script, Spark settings only in the private properties file, and for a YARN cluster-mode driver the
environment it needs in the job file (secrets never on the command line)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.core.config import REPO_ROOT, load_config
from pipelines.submit import available_jobs, build_command, plan_artifacts

pytestmark = pytest.mark.fast

TOKEN = "s3cr3t-t0ken"


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_local_job_command(tmp_path: Path) -> None:
    cfg = load_config("local", [f"storage.workspace={tmp_path}"])
    sub = build_command("score", cfg, ["--date", "2026-12-07"], plan_artifacts(cfg), ["mlflow.password=x"])
    cmd = sub.command("/private")
    assert option(cmd, "--master") == "local[2]" and option(cmd, "--deploy-mode") == "client"
    assert option(cmd, "--name") == f"{cfg.spark.app_name}-score"
    assert "--executor-memory" not in cmd and "--archives" not in cmd and "--files" not in cmd
    assert option(cmd, "--properties-file") == "/private/spark.properties"
    score = str(REPO_ROOT / available_jobs()["score"])
    assert cmd[-5:] == ["--py-files", str(tmp_path / "dist" / "project-code.zip"), score, "--date", "2026-12-07"]
    assert not any(arg.startswith("spark.") or "=" in arg for arg in cmd)  # settings travel in the private file
    assert sub.properties["spark.pyspark.python"] == sub.properties["spark.pyspark.driver.python"]
    assert sub.properties["spark.driver.extraJavaOptions"].startswith("-Dlog4j2.configurationFile=file:")
    assert sub.properties["spark.sql.session.timeZone"] == "UTC"
    assert sub.overrides == ["mlflow.password=x"] and not sub.remote_driver
    text = sub.describe()
    assert text.splitlines()[0].startswith(cmd[0]) and "<private>/spark.properties" in text
    assert "mlflow.password=***" in text and "mlflow.password=x" not in text


def test_yarn_cluster_driver_gets_its_environment_in_the_job_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    cfg = load_config("yarn", [f"storage.workspace={tmp_path}", "spark.deploy_mode=cluster"])
    sub = build_command("train", cfg, [], plan_artifacts(cfg), [], REPO_ROOT / "conf")
    cmd = sub.command("/private")
    assert option(cmd, "--master") == "yarn" and option(cmd, "--deploy-mode") == "cluster"
    assert option(cmd, "--executor-memory") == cfg.spark.executor_memory
    assert option(cmd, "--archives") == (f"{tmp_path}/dist/pyenv.tar.gz#environment,"
                                         f"{tmp_path}/dist/conf.zip#pipeline-conf")
    assert option(cmd, "--files") == "/private/job.json#pipeline-job.json"
    assert option(cmd, "--py-files").endswith(".whl")
    assert sub.remote_driver and sub.driver_env["MLFLOW_TRACKING_TOKEN"] == TOKEN
    assert sub.properties["spark.pyspark.python"] == "./environment/bin/python"
    assert sub.properties["spark.yarn.appMasterEnv.PIPELINE_SUBMITTED"] == "1"
    assert not any(TOKEN in arg for arg in cmd) and not any(TOKEN in v for v in sub.properties.values())
    assert TOKEN not in sub.describe() and "the driver's environment: " in sub.describe()


@pytest.mark.parametrize("mode", ["client", "cluster"])
def test_yarn_pytorch_pipeline_ships_the_torch_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     mode: str) -> None:
    """training.framework=pytorch: the torch layer, which the packed environment leaves out, travels as a second
    archive (./torchlayer) on the PYTHONPATH of the executors and of a cluster-mode driver; for every job."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    cfg = load_config("yarn", [f"storage.workspace={tmp_path}", f"spark.deploy_mode={mode}",
                               "training.framework=pytorch"])
    for job in ("train", "score"):
        sub = build_command(job, cfg, [], plan_artifacts(cfg), [], REPO_ROOT / "conf")
        cmd = sub.command("/private")
        assert option(cmd, "--archives") == (f"{tmp_path}/dist/pyenv.tar.gz#environment,"
                                             f"{tmp_path}/dist/conf.zip#pipeline-conf,"
                                             f"{tmp_path}/dist/torch-layer.tar.gz#torchlayer")
        assert sub.properties["spark.executorEnv.PYTHONPATH"] == "{{PWD}}/torchlayer"
        if mode == "cluster":
            assert sub.properties["spark.yarn.appMasterEnv.PYTHONPATH"] == "{{PWD}}/torchlayer"
        else:  # the driver runs here, in the whole environment
            assert "spark.yarn.appMasterEnv.PYTHONPATH" not in sub.properties
        assert not any("PYTHONPATH" in arg for arg in cmd)  # settings travel in the private file


def test_yarn_tensorflow_pipeline_ships_no_torch_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    cfg = load_config("yarn", [f"storage.workspace={tmp_path}", "spark.deploy_mode=cluster"])
    assert cfg.training.framework == "tensorflow" and plan_artifacts(cfg).torch_layer is None
    sub = build_command("train", cfg, [], plan_artifacts(cfg), [], REPO_ROOT / "conf")
    assert "torchlayer" not in option(sub.command("/private"), "--archives")
    assert not any("PYTHONPATH" in k for k in sub.properties)
    local = load_config("local", [f"storage.workspace={tmp_path}", "training.framework=pytorch"])
    assert plan_artifacts(local).torch_layer is None  # local and standalone run this environment, torch included


def test_a_pythonpath_of_spark_conf_comes_after_the_torch_layer(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    cfg = load_config("yarn", [f"storage.workspace={tmp_path}", "training.framework=pytorch",
                               "spark.conf.spark.executorEnv.PYTHONPATH=/opt/extra"])
    sub = build_command("train", cfg, [], plan_artifacts(cfg), [], REPO_ROOT / "conf")
    assert sub.properties["spark.executorEnv.PYTHONPATH"] == "{{PWD}}/torchlayer:/opt/extra"


def test_remote_workspace_stages_the_torch_layer_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the cluster's file system the layer is copied once, named by its stamp, like the packed environment."""
    from pipelines import submit

    def fake_pack(name: str, digest: str) -> Callable[..., Path]:
        def pack(_venv: Path, dest: Path, *_args: object) -> Path:
            dest.write_text(name)
            dest.with_suffix(dest.suffix + ".sha256").write_text(digest)
            return dest
        return pack

    staged: list[str] = []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("PIPELINE_DIST", str(tmp_path / "dist"))
    monkeypatch.setattr(submit, "build_wheel", lambda dist: dist / "w.whl")
    monkeypatch.setattr(submit, "pack_environment", fake_pack("env", "e" * 64))
    monkeypatch.setattr(submit, "pack_torch_layer", fake_pack("layer", "a1b2" * 16))
    monkeypatch.setattr(submit, "spark_jars_archive", lambda dest: dest)
    monkeypatch.setattr(submit, "stage_on_cluster", lambda local, ws, name: staged.append(name) or f"{ws}/dist/{name}")
    for framework in ("pytorch", "tensorflow"):
        cfg = load_config("yarn", ["storage.workspace=hdfs:///ws", f"training.framework={framework}"])
        built = submit.build_artifacts(cfg, plan_artifacts(cfg), REPO_ROOT / "conf")
        layer = "hdfs:///ws/dist/torch-layer-a1b2a1b2a1b2a1b2.tar.gz" if framework == "pytorch" else None
        assert built.torch_layer == layer and built.env_archive == "hdfs:///ws/dist/pyenv-eeeeeeeeeeeeeeee.tar.gz"
    assert staged.count("torch-layer-a1b2a1b2a1b2a1b2.tar.gz") == 1 and staged.count(
        "pyenv-eeeeeeeeeeeeeeee.tar.gz") == 2
