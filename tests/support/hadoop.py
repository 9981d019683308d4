"""A real Hadoop cluster for tests: Hadoop's CLI MiniCluster (HDFS NameNode + DataNode, YARN ResourceManager +
NodeManagers, MapReduce JobHistory) in one JVM, started from the jars that bootstrap.sh fetched into .jars/hadoop.

Every address it opens is on 127.0.0.1. Its configuration is written to a folder used as HADOOP_CONF_DIR
(core-site.xml, hdfs-site.xml, yarn-site.xml), and the cluster is stopped with its process group afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyspark.find_spark_home import _find_spark_home

from pipelines.core.config import REPO_ROOT
from tests.support.servers import free_port

HADOOP_JARS = REPO_ROOT / ".jars" / "hadoop"
POM = REPO_ROOT / "conf" / "jvm" / "pom.xml"
# Java 17 closes the JDK internals that Guice (the ResourceManager's web app) and Hadoop's RPC reflect into.
JAVA_OPENS = [f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in (
    "java.lang", "java.lang.reflect", "java.util", "java.util.concurrent", "java.io", "java.net", "java.nio",
    "sun.nio.ch")]


@dataclass(frozen=True)
class HadoopCluster:
    """What a test needs to use the cluster: the conf folder, the file system URI and the ResourceManager."""

    conf_dir: Path
    fs_uri: str
    rm_web: str
    workdir: Path
    pid: int

    def env(self) -> dict[str, str]:
        """Environment for a client (spark-submit, the hadoop CLI) of this cluster."""
        return {"HADOOP_CONF_DIR": str(self.conf_dir), "YARN_CONF_DIR": str(self.conf_dir),
                "HADOOP_USER_NAME": os.environ.get("USER", "root")}


def pinned_hadoop_version() -> str:
    """hadoop.version of conf/jvm/pom.xml."""
    return re.search(r"<hadoop.version>([^<]+)</hadoop.version>", POM.read_text()).group(1)  # type: ignore[union-attr]


def pyspark_hadoop_version() -> str:
    """The Hadoop client version bundled with the installed pyspark."""
    (jar,) = (Path(_find_spark_home()) / "jars").glob("hadoop-client-api-*.jar")
    return jar.stem.removeprefix("hadoop-client-api-")


def _loopback_conf(workdir: Path) -> dict[str, str]:
    """Settings that keep every server on 127.0.0.1 (free ports) and size the NodeManagers for Spark executors.

    The MiniCluster always configures MapReduce's shuffle service, which listens on every interface; Spark does not
    use it, so an empty auxiliary-services manifest (which takes precedence over that setting) leaves it out.
    """
    manifest = workdir / "aux-services.json"
    manifest.write_text('{"services": []}')
    rm = {key: f"127.0.0.1:{free_port()}" for key in (
        "yarn.resourcemanager.scheduler.address", "yarn.resourcemanager.resource-tracker.address",
        "yarn.resourcemanager.admin.address", "yarn.resourcemanager.webapp.address")}
    return {
        "yarn.resourcemanager.hostname": "127.0.0.1", **rm,
        "yarn.nodemanager.hostname": "127.0.0.1",
        "yarn.nodemanager.address": "127.0.0.1:0", "yarn.nodemanager.localizer.address": "127.0.0.1:0",
        "yarn.nodemanager.webapp.address": "127.0.0.1:0", "yarn.nodemanager.collector-service.address": "127.0.0.1:0",
        "mapreduce.jobhistory.webapp.address": "127.0.0.1:0", "mapreduce.jobhistory.admin.address": "127.0.0.1:0",
        "dfs.namenode.http-address": "127.0.0.1:0", "dfs.datanode.address": "127.0.0.1:0",
        "dfs.datanode.http.address": "127.0.0.1:0", "dfs.datanode.ipc.address": "127.0.0.1:0",
        # Spark executors with TensorFlow workers: memory by the test's settings, not by the host's RAM checks.
        "yarn.nodemanager.resource.memory-mb": "6144", "yarn.nodemanager.resource.cpu-vcores": "4",
        "yarn.scheduler.minimum-allocation-mb": "256", "yarn.scheduler.maximum-allocation-mb": "6144",
        "yarn.nodemanager.vmem-check-enabled": "false", "yarn.nodemanager.pmem-check-enabled": "false",
        "yarn.nodemanager.disk-health-checker.max-disk-utilization-per-disk-percentage": "99",
        "yarn.log-aggregation-enable": "false",
        "yarn.nodemanager.aux-services.manifest.enabled": "true",
        "yarn.nodemanager.aux-services.manifest": str(manifest),
        "dfs.replication": "1", "dfs.permissions.enabled": "false",
    }


CLIENT_KEYS = re.compile(r"^(fs\.defaultFS|dfs\.namenode\.(rpc|http)-address|yarn\.resourcemanager\.(hostname|"
                         r"address|scheduler\.address|resource-tracker\.address|admin\.address|webapp\.address)|"
                         r"mapreduce\.jobhistory\.address)$")


def _write_site_files(all_conf: Path, conf_dir: Path) -> dict[str, str]:
    """A client's view of the cluster (addresses, replication 1) as core/hdfs/yarn-site.xml in `conf_dir`.

    The MiniCluster's own dump holds test-only classes (a static rack mapping), so clients get just the addresses.
    """
    props = {p.findtext("name") or "": p.findtext("value") or ""
             for p in ET.parse(all_conf).getroot().iter("property")}
    client = {k: v for k, v in props.items() if CLIENT_KEYS.match(k)} | {"dfs.replication": "1"}
    conf_dir.mkdir(parents=True, exist_ok=True)
    root = ET.Element("configuration")
    for key, value in sorted(client.items()):
        prop = ET.SubElement(root, "property")
        ET.SubElement(prop, "name").text = key
        ET.SubElement(prop, "value").text = value
    for name in ("core-site.xml", "hdfs-site.xml", "yarn-site.xml"):
        ET.ElementTree(root).write(conf_dir / name, encoding="utf-8", xml_declaration=True)
    return client


@contextmanager
def hadoop_cluster(workdir: Path, nodemanagers: int = 1, timeout: float = 240) -> Iterator[HadoopCluster]:
    """Start the MiniCluster under `workdir`; yield it once HDFS and YARN answer; stop it afterwards.

    One NodeManager by default, sized for the ApplicationMaster and two executors: every NodeManager localizes the
    packed environment (~20,000 files) once, and without Hadoop's native library (not on Maven Central) it forks a
    `chmod` per file to do so, 92-109 s per NodeManager on 2 cores; a second one on the same host adds that, not
    another machine."""
    if not any(HADOOP_JARS.glob("hadoop-minicluster-*.jar")):
        raise RuntimeError(f"no Hadoop MiniCluster jars in {HADOOP_JARS}: run ./bootstrap.sh (it fetches them)")
    workdir.mkdir(parents=True, exist_ok=True)
    all_conf = workdir / "minicluster-conf.xml"
    java = shutil.which("java", path=os.path.join(os.environ.get("JAVA_HOME", "/nonexistent"), "bin")) or "java"
    nn, rm, jhs = free_port(), free_port(), free_port()
    # VFORK: the NodeManager starts a `chmod` per localized file (no native library); vfork starts a process in
    # 1.1 ms instead of posix_spawn's 1.7 ms (2,000 starts from a JVM holding 400 MB, measured here).
    cmd = [java, "-Xmx1g", "-Djdk.lang.Process.launchMechanism=VFORK", *JAVA_OPENS, "-cp", f"{HADOOP_JARS}/*",
           "org.apache.hadoop.mapreduce.MiniHadoopClusterManager", "-format",
           "-nnport", str(nn), "-rmport", str(rm), "-jhsport", str(jhs),
           "-nodemanagers", str(nodemanagers), "-datanodes", "1", "-writeConfig", str(all_conf)]
    for key, value in _loopback_conf(workdir).items():
        cmd += ["-D", f"{key}={value}"]
    log = workdir / "minicluster.log"
    env = {**os.environ, "HADOOP_USER_NAME": os.environ.get("USER", "root")}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not all_conf.exists() or "yarn.resourcemanager.address" not in all_conf.read_text():
            if proc.poll() is not None:
                raise RuntimeError(f"MiniCluster exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"MiniCluster not up after {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        time.sleep(1)  # the file is written in one go after start-up; let the writer close it
        props = _write_site_files(all_conf, workdir / "conf")
        yield HadoopCluster(workdir / "conf", props["fs.defaultFS"], props["yarn.resourcemanager.webapp.address"],
                            workdir, proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
