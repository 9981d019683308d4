"""Builds and runs the spark-submit command for a job in an environment (the engine behind ./spark-submit.sh).

The command carries the master and resources from conf, the project's own code for --py-files and the config
folder. Every Spark setting (the quiet log4j settings and the Python to use on executors among them) goes through a
private properties file, and the job's --set overrides through a private job file (pipelines.core.handoff): no
setting or override is an argument of spark-submit, its JVM or the job, where `ps` would show it to every user.
--dry-run prints the command and what the files would hold, secrets masked.

- local and standalone: executors share this machine's (or an identical) environment, so the code ships as a
  zip and executors run this virtual environment's Python.
- yarn: the project is built as a wheel (--py-files) and the virtual environment is packed with venv-pack and
  shipped with --archives; the driver (cluster mode) and executors run ./environment/bin/python from it, and the
  conf folder travels as an archive too. PyTorch and what only it needs (the CUDA wheels, triton, sympy: the torch
  layer) never go into that archive: a pipeline with training.framework=pytorch ships them as a second archive
  (./torchlayer, on the PYTHONPATH of the executors and of a cluster-mode driver), any other pipeline not at all.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from pipelines.core import files
from pipelines.core.config import ENVS, REPO_ROOT, Config, ConfigError, env_references, load_config
from pipelines.core.handoff import (
    JOB_FILE,
    JOB_FILE_ALIAS,
    JOB_FILE_ENV,
    PROPERTIES,
    private_dir,
    write_job_file,
    write_properties,
)
from pipelines.core.locks import file_lock
from pipelines.core.logs import redact, without_jvm_notice
from pipelines.core.session import (
    delta_conf,
    delta_jars,
    derived_conf,
    loopback_env,
    prepare_event_log,
    session_jars,
)

JOB_MODULES_SHARED = ("__init__", "common")  # jobs/ modules that are no job
IN_PROCESS = ("history",)  # no Spark application (jobs/history.py execs the History Server): run here, no spark-submit
PACKAGES = ("jobs", "pipelines", "features")
# A cluster-mode driver runs in a YARN container that does not inherit the submitting shell's environment: what the
# config reads from it (every ${oc.env:VAR} of conf/ and --set, config.env_references) and what MLflow reads itself
# travel in the job file, not as spark.yarn.appMasterEnv.*, which YARN writes into the container's launch script
# and copies into its logs.
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
              "MLFLOW_TRACKING_PASSWORD")
PRIVATE = "<private>"  # the private folder's place in a --dry-run's command
ENV_ARCHIVE_ALIAS = "environment"
CONF_ARCHIVE_ALIAS = "pipeline-conf"
# Files that make no sense on a cluster node: the editable install points at this checkout; YARN containers get
# Spark's own jars from the cluster (spark.yarn.archive); C headers, test suites and the dev tools of
# requirements-dev.txt are never imported by a job. Each file left out is one less for every NodeManager to unpack
# and chmod (one process per file where Hadoop's native library is missing): 37,000 files -> about 17,000.
DEV_TOOLS = ("_pytest", "pytest*", "ruff*", "jupytext*", "jupyterlab_jupytext", "nbclient*", "nbformat*",
             "ipykernel*", "IPython", "ipython*", "jedi*", "parso*", "debugpy*", "jupyter*", "clang", "libclang*")
PACK_EXCLUDES = ("*__editable__*", "*.egg-link", "*/__pycache__/*", "*/site-packages/pyspark/jars/*",
                 "*/site-packages/tensorflow/include/*", "*/site-packages/*/tests/*",
                 *(f"*/site-packages/{name}/*" for name in DEV_TOOLS))
# The torch layer (torch_layer): shipped only for training.framework=pytorch, extracted as ./torchlayer in the YARN
# container and put on its PYTHONPATH. {{PWD}} is the container's working folder, which the NodeManager expands in
# the container's environment (Spark writes its own --py-files entries of PYTHONPATH the same way).
TORCH_DIST = "torch"
TORCH_LAYER_ALIAS = "torchlayer"
TORCH_LAYER_PATH = "{{PWD}}/" + TORCH_LAYER_ALIAS
PYTHONPATH_SETTINGS = ("spark.executorEnv.PYTHONPATH", "spark.yarn.appMasterEnv.PYTHONPATH")


@dataclass(frozen=True)
class Artifacts:
    """What a submit ships: the project code, and for YARN the packed environment and the conf archive."""

    code: Path
    env_archive: Path | str | None = None  # a local file, or its copy on the cluster's file system
    conf_archive: Path | None = None
    spark_archive: str | None = None  # Spark's jars on the cluster's file system (spark.yarn.archive)
    torch_layer: Path | str | None = None  # training.framework=pytorch: the torch layer, local or on the cluster


def available_jobs() -> dict[str, str]:
    """The jobs, from jobs/*.py: the name a user types -> its script (jobs/land_demo.py is `land-demo`)."""
    return {p.stem.replace("_", "-"): f"jobs/{p.name}" for p in sorted((REPO_ROOT / "jobs").glob("*.py"))
            if p.stem not in JOB_MODULES_SHARED}


def _private_tmp(dest: Path) -> Path:
    """A temporary name beside `dest` that no other process uses (two submits may build at the same moment)."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def build_code_zip(dest: Path) -> Path:
    """Zip the project's packages for --py-files (rebuilt each submit so executors run this checkout's code).

    Written under a private name and renamed into place: a submit starting at the same moment reads either zip
    whole, never a half-written one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private_tmp(dest)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for pkg in PACKAGES:
            for f in sorted((REPO_ROOT / pkg).rglob("*.py")):
                zf.write(f, f.relative_to(REPO_ROOT))
    os.replace(tmp, dest)
    return dest


def build_wheel(dist: Path) -> Path:
    """Build the project wheel (pure Python, importable from --py-files) into `dist`."""
    dist.mkdir(parents=True, exist_ok=True)
    for old in dist.glob("spark_ml_pipeline-*.whl"):
        old.unlink()
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(dist), str(REPO_ROOT)], check=True)
    finally:  # setuptools leaves its build folder in the checkout
        shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)
    (wheel,) = dist.glob("spark_ml_pipeline-*.whl")
    return wheel


def build_conf_archive(conf_dir: Path, dest: Path) -> Path:
    """Zip the conf folder so a cluster-mode driver can load the same layered config (private name, then renamed
    into place, as the code zip)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private_tmp(dest)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(conf_dir.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(conf_dir))
    os.replace(tmp, dest)
    return dest


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _site_packages(venv: Path) -> Path | None:
    found = sorted((venv / "lib").glob("python*/site-packages"))
    return found[0] if found else None


def _requirement_names(requirements: Path) -> set[str]:
    """The distributions a requirements file names (options, comments and blank lines skipped)."""
    from packaging.requirements import Requirement

    if not requirements.exists():
        return set()
    lines = (line.split("#", 1)[0].strip() for line in requirements.read_text().splitlines())
    return {_canonical(Requirement(line).name) for line in lines if line and not line.startswith("-")}


def _closure(dists: dict[str, importlib.metadata.Distribution], roots: Iterable[str]) -> set[str]:
    """The installed distributions reachable from `roots` through their requirements (markers evaluated for this
    interpreter and for the extras each requirement asks for); names not installed are skipped."""
    from packaging.requirements import Requirement

    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(_canonical(r), frozenset[str]()) for r in roots]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in dists:
            continue
        seen.add((name, extras))
        for spec in dists[name].requires or []:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in sorted(extras) or [""]):
                todo.append((_canonical(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


@dataclass(frozen=True)
class TorchLayer:
    """PyTorch and the installed distributions only it needs, as the files of a virtual environment.

    `entries` are top-level folders and files of site-packages that only the layer's distributions own (torch,
    nvidia, triton, the .dist-info folders...), `files` the layer's single files inside a top-level folder it
    shares with another distribution, `outside` its files outside site-packages (bin/torchrun), relative to the
    environment. Paths inside site-packages are relative to it."""

    site: Path | None = None
    dists: tuple[str, ...] = ()  # "name==version", sorted
    entries: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    outside: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.dists)

    def excludes(self, venv: Path) -> list[str]:
        """venv-pack patterns (paths relative to the environment) that leave the layer out of the environment."""
        if self.site is None:
            return []
        site = self.site.relative_to(venv).as_posix()
        return [*(p for e in self.entries for p in (f"{site}/{e}", f"{site}/{e}/*")),
                *(f"{site}/{f}" for f in self.files), *self.outside]

    def members(self) -> Iterator[tuple[Path, str]]:
        """(file, its name in the layer archive: its path relative to site-packages), sorted, without what the
        packed environment leaves out anyway (PACK_EXCLUDES: __pycache__, tests...)."""
        if self.site is None:
            return
        site = self.site
        prefix = f"lib/{site.parent.name}/site-packages"  # the name the file would have in the packed environment

        def kept(rel: str) -> bool:
            return not any(fnmatch(f"{prefix}/{rel}", pattern) for pattern in PACK_EXCLUDES)

        for entry in sorted({*self.entries, *self.files}):
            path = site / entry
            if path.is_dir() and not path.is_symlink():
                for root, dirs, names in os.walk(path):
                    dirs.sort()
                    for name in sorted(names):
                        rel = (Path(root) / name).relative_to(site).as_posix()
                        if kept(rel):
                            yield Path(root) / name, rel
            elif (path.exists() or path.is_symlink()) and kept(entry):
                yield path, entry


def torch_layer(venv: Path, requirements: Path | None = None) -> TorchLayer:
    """The torch layer of the environment `venv`: the installed distributions reachable from torch's requirements
    (torch included) less those reachable from anything else the environment ships, which stay in the packed
    environment (jinja2, fsspec, typing-extensions...). Anything else is each line of `requirements` (default: the
    project's requirements.txt) but torch, and each installed distribution outside torch's closure (Horovod, built
    by bootstrap.sh; the project itself). Empty when torch is not installed."""
    site = _site_packages(venv)
    if site is None:
        return TorchLayer()
    dists: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions(path=[str(site)]):
        dists.setdefault(_canonical(dist.metadata["Name"]), dist)
    if TORCH_DIST not in dists:
        return TorchLayer(site)
    torch_side = _closure(dists, [TORCH_DIST])
    roots = (_requirement_names(requirements or REPO_ROOT / "requirements.txt") | (set(dists) - torch_side))
    layer = torch_side - _closure(dists, roots - {TORCH_DIST})
    owners: dict[str, set[str]] = {}  # top-level entry of site-packages -> the distributions with files in it
    layer_files: dict[str, set[str]] = {}  # top-level entry -> the layer's files in it
    outside: set[str] = set()
    for name, dist in dists.items():
        paths = [p.as_posix() for p in dist.files or []]
        info = getattr(dist, "_path", None)  # its .dist-info folder, should RECORD be missing
        if not paths and isinstance(info, Path) and info.parent == site:
            paths = [f"{info.name}/METADATA"]
        for rel in paths:
            if rel.startswith("../"):
                if name in layer:
                    outside.add(os.path.relpath(os.path.normpath(site / rel), venv))
                continue
            top = rel.split("/", 1)[0]
            owners.setdefault(top, set()).add(name)
            if name in layer:
                layer_files.setdefault(top, set()).add(rel)
    entries = sorted(top for top in layer_files if owners[top] <= layer)
    files = sorted(f for top, rels in layer_files.items() if not owners[top] <= layer for f in rels)
    return TorchLayer(site, tuple(sorted(f"{n}=={dists[n].version}" for n in layer)), tuple(entries), tuple(files),
                      tuple(sorted(outside)))


def pack_environment(venv: Path, dest: Path, python_prefix: str | None = None, layer: TorchLayer | None = None
                     ) -> Path:
    """venv-pack the virtual environment into `dest` (tar.gz), without its torch layer (torch_layer: shipped only to
    pipelines that train with PyTorch, pack_torch_layer); reused while the installed packages, what the layer holds
    and the native libraries in its lib/ (the bind shim) are unchanged.

    With `python_prefix` (where Python lives on the nodes) the environment's python links point there. venv-pack
    0.2.0 gets those links wrong for a venv whose bin/python3.11 links to <base>/bin/python3.11 (it writes
    <prefix>/bin/python3.113.11), so its prefix rewrite is corrected to <base>/bin/python -> <prefix>/bin/python.
    """
    import venv_pack.core as vp

    listing = "\n".join(sorted(p.name for p in (venv / "lib").glob("python*/site-packages/*")))
    native = sorted(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in (venv / "lib").glob("*.so"))
    excludes = (*PACK_EXCLUDES, *(layer if layer is not None else torch_layer(venv)).excludes(venv))
    digest = hashlib.sha256(f"{listing}|{native}|{python_prefix}|{excludes}".encode()).hexdigest()
    stamp = dest.with_suffix(dest.suffix + ".sha256")
    if dest.exists() and stamp.exists() and stamp.read_text() == digest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    original = vp.check_python_prefix

    def prefix_rewrites(prefix: str | None, context: Any) -> tuple[str | None, list[tuple[str, str]]]:
        new_prefix, rewrites = original(prefix, context)
        if context.kind == "venv" and rewrites:
            rewrites = [(rewrites[0][0], os.path.join(new_prefix, "bin", "python"))]
        return new_prefix, rewrites

    vp.check_python_prefix = prefix_rewrites
    try:
        vp.pack(str(venv), str(dest), python_prefix=python_prefix, force=True,
                filters=[("exclude", pattern) for pattern in excludes])
    finally:
        vp.check_python_prefix = original
    stamp.write_text(digest)
    return dest


def pack_torch_layer(venv: Path, dest: Path, layer: TorchLayer | None = None) -> Path:
    """The torch layer of `venv` (torch_layer) alone as a tar.gz at `dest`, its paths relative to site-packages:
    extracted, it is a folder to put on PYTHONPATH (torch and the nvidia folder side by side, as torch's libraries'
    RPATH $ORIGIN/../../nvidia/... expects). Reused while the layer is unchanged (a stamp beside it, as
    pack_environment's); written under a private name and renamed into place."""
    layer = layer if layer is not None else torch_layer(venv)
    if not layer:
        raise FileNotFoundError(f"training.framework=pytorch, but torch is not installed in {venv} "
                                "(./bootstrap.sh installs requirements.txt)")
    digest = hashlib.sha256(f"{layer.dists}|{layer.entries}|{layer.files}|{PACK_EXCLUDES}".encode()).hexdigest()
    stamp = dest.with_suffix(dest.suffix + ".sha256")
    if dest.exists() and stamp.exists() and stamp.read_text() == digest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private_tmp(dest)
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=4) as tar:  # venv-pack's level, for the environment
            for path, name in layer.members():
                tar.add(path, name, recursive=False)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(digest)
    return dest


def spark_jars_archive(dest: Path) -> Path:
    """Spark's jars as one zip (stored, not compressed) for spark.yarn.archive; built once per Spark version."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private_tmp(dest)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for jar in sorted((Path(spark_home()) / "jars").glob("*.jar")):
            zf.write(jar, jar.name)
    os.replace(tmp, dest)
    return dest


def stage_on_cluster(local: Path, workspace: str, name: str) -> str:
    """Copy `local` to <workspace>/dist/`name` on the cluster's file system unless it is there already (names carry
    the content's version), so YARN localizes it from there, cached on each node, instead of an upload per job."""
    uri = files.join(workspace, "dist", name)
    if not files.exists(uri):
        fs, path = files.filesystem(uri)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        fs.put_file(str(local), tmp)
        fs.mv(tmp, path)
    return uri


def spark_home() -> str:
    from pyspark.find_spark_home import _find_spark_home

    return _find_spark_home()


def plan_artifacts(cfg: Config) -> Artifacts:
    """Where the shipped files go (under <workspace>/dist, or PIPELINE_DIST when the workspace is remote)."""
    dist = Path(os.environ.get("PIPELINE_DIST") or (Path(cfg.workspace) if "://" not in cfg.workspace
                                                    else REPO_ROOT / "workspace") / "dist")
    if cfg.env == "yarn":
        layer = dist / "torch-layer.tar.gz" if cfg.training.framework == "pytorch" else None
        return Artifacts(dist / "spark_ml_pipeline-0.1.0-py3-none-any.whl", dist / "pyenv.tar.gz",
                         dist / "conf.zip", torch_layer=layer)
    return Artifacts(dist / "project-code.zip")


def build_artifacts(cfg: Config, planned: Artifacts, conf_dir: Path) -> Artifacts:
    """Build what `planned` names (the wheel's real file name may differ in version).

    One submit at a time builds in a dist folder (a file lock there): the wheel's build folder, the packed
    environment and its stamp are shared, and two jobs started together must not build over each other."""
    with file_lock(planned.code.parent / ".build.lock"):
        return _build_artifacts(cfg, planned, conf_dir)


def _build_artifacts(cfg: Config, planned: Artifacts, conf_dir: Path) -> Artifacts:
    if cfg.env != "yarn":
        build_code_zip(planned.code)
        return planned
    assert isinstance(planned.env_archive, Path) and planned.conf_archive
    wheel = build_wheel(planned.code.parent)
    torch_files = torch_layer(Path(sys.prefix))  # one walk of the installed metadata serves both archives
    env = pack_environment(Path(sys.prefix), planned.env_archive, cfg.spark.python_prefix, torch_files)
    layer = (pack_torch_layer(Path(sys.prefix), Path(planned.torch_layer), torch_files) if planned.torch_layer
             else None)
    build_conf_archive(conf_dir, planned.conf_archive)
    if "://" not in cfg.workspace or cfg.workspace.startswith("file:"):
        return Artifacts(wheel, env, planned.conf_archive, torch_layer=layer)
    import pyspark

    def staged(archive: Path, kind: str) -> str:
        digest = archive.with_suffix(archive.suffix + ".sha256").read_text()[:16]
        return stage_on_cluster(archive, cfg.workspace, f"{kind}-{digest}.tar.gz")

    libs = spark_jars_archive(env.parent / f"spark-libs-{pyspark.__version__}.zip")
    return Artifacts(wheel, staged(env, "pyenv"), planned.conf_archive,
                     stage_on_cluster(libs, cfg.workspace, libs.name), staged(layer, "torch-layer") if layer else None)


def spark_submit_binary() -> str:
    """spark-submit of the pyspark installation in this environment."""
    candidate = Path(sys.executable).parent / "spark-submit"
    return str(candidate) if candidate.exists() else "spark-submit"


def executor_python() -> str:
    """The Python that drivers and executors run: PYSPARK_PYTHON if set, else this environment's."""
    return os.environ.get("PYSPARK_PYTHON", sys.executable)


@dataclass(frozen=True)
class Submission:
    """One spark-submit run: its command line, which holds nothing secret, and what goes through the private files:
    every Spark setting (the properties file), the job's --set overrides and, for a driver in a YARN container, the
    environment it needs (the job file, which YARN localizes into the container with --files)."""

    options: list[str]  # spark-submit and its options, up to the private files
    app: list[str]  # --py-files, the job's script and its arguments
    properties: dict[str, str]
    overrides: list[str]
    driver_env: dict[str, str]
    remote_driver: bool  # YARN cluster mode: the job file travels with --files

    def command(self, private: Path | str) -> list[str]:
        """The command line with the private files in the folder `private`."""
        files = ["--files", f"{private}/{JOB_FILE}#{JOB_FILE_ALIAS}"] if self.remote_driver else []
        return [*self.options, "--properties-file", f"{private}/{PROPERTIES}", "--load-spark-defaults", *files,
                *self.app]

    def describe(self) -> str:
        """The --dry-run text: the command, then what each private file would hold, secrets masked."""
        lines = [shlex.join(self.command(PRIVATE)),
                 f"{PRIVATE}/{PROPERTIES} (0600, removed after the run): {len(self.properties)} Spark settings",
                 *(f"  {k}={v}" for k, v in self.properties.items()),
                 f"{PRIVATE}/{JOB_FILE} (0600, removed after the run): {len(self.overrides)} --set overrides",
                 *(f"  {o}" for o in self.overrides)]
        if self.driver_env:  # values from this environment, any of them may be a credential: not shown
            lines.append(f"  the driver's environment: {', '.join(self.driver_env)}")
        return redact("\n".join(lines))

    def run(self, env: dict[str, str]) -> int:
        """Write the private files, run spark-submit, remove the files once it has ended. SIGTERM and SIGHUP (a
        scheduler's kill or timeout) are passed on to spark-submit, so the job stops and the files still go."""
        with private_dir() as private, without_jvm_notice() as stderr:
            write_properties(private / PROPERTIES, self.properties)
            write_job_file(private / JOB_FILE, self.overrides, self.driver_env)
            proc = subprocess.Popen(self.command(private), env={**env, JOB_FILE_ENV: str(private / JOB_FILE)},
                                    stderr=stderr)

            def forward(signum: int, _frame: object) -> None:
                proc.send_signal(signum)

            previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
            try:
                return proc.wait()
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)


def build_command(job: str, cfg: Config, job_args: list[str], artifacts: Artifacts,
                  overrides: list[str] | tuple[str, ...] = (), conf_dir: Path | None = None) -> Submission:
    """The spark-submit run of `job` under `cfg`, the config of `conf_dir` and `overrides` (which the job gets from
    its job file)."""
    sc = cfg.spark
    python = executor_python() if artifacts.env_archive is None else f"./{ENV_ARCHIVE_ALIAS}/bin/python"
    cmd = [spark_submit_binary(), "--master", sc.master, "--deploy-mode", sc.deploy_mode,
           "--name", f"{sc.app_name}-{job}", "--driver-memory", sc.driver_memory]
    if not sc.master.startswith("local"):
        cmd += ["--executor-memory", sc.executor_memory, "--executor-cores", str(sc.executor_cores)]
        if sc.num_executors:
            cmd += ["--num-executors", str(sc.num_executors)]
    if sc.queue:
        cmd += ["--queue", sc.queue]
    if sc.packages:
        cmd += ["--packages", ",".join(sc.packages)]
    jars = session_jars(cfg)  # the project's Delta jars (.jars/delta or DELTA_JARS) unless the engine is embedded
    if jars:
        cmd += ["--jars", ",".join(jars)]
    log4j = REPO_ROOT / "conf" / "log4j2.properties"
    java_opt = f"-Dlog4j2.configurationFile=file:{log4j}"
    conf = {"spark.pyspark.python": python, "spark.executorEnv.PYSPARK_PYTHON": python}
    if cfg.storage.engine != "embedded" and delta_jars():
        conf |= delta_conf(cfg)
    if artifacts.spark_archive:
        conf["spark.yarn.archive"] = artifacts.spark_archive
    remote_driver = artifacts.env_archive is not None and sc.deploy_mode == "cluster"
    driver_env: dict[str, str] = {}
    if artifacts.env_archive is None:
        conf |= {"spark.pyspark.driver.python": python, "spark.driver.extraJavaOptions": java_opt,
                 "spark.executor.extraJavaOptions": java_opt}
    else:
        conf["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] = python
        if remote_driver:
            names = sorted(env_references(conf_dir, overrides) | set(MLFLOW_ENV))
            driver_env = {k: os.environ[k] for k in names if os.environ.get(k)}
            conf["spark.yarn.appMasterEnv.PIPELINE_SUBMITTED"] = "1"  # the session comes from spark-submit's conf
            conf[f"spark.yarn.appMasterEnv.{JOB_FILE_ENV}"] = JOB_FILE_ALIAS
        else:
            conf["spark.pyspark.driver.python"] = executor_python()
        archives = [f"{artifacts.env_archive}#{ENV_ARCHIVE_ALIAS}"]
        if artifacts.conf_archive is not None:
            archives.append(f"{artifacts.conf_archive}#{CONF_ARCHIVE_ALIAS}")
        if artifacts.torch_layer is not None:
            # Spark on YARN puts these values first on the PYTHONPATH it builds for --py-files and pyspark.zip
            # (SPARK-22151, Spark 2.4+); a client-mode driver runs here, in the whole environment.
            archives.append(f"{artifacts.torch_layer}#{TORCH_LAYER_ALIAS}")
            conf["spark.executorEnv.PYTHONPATH"] = TORCH_LAYER_PATH
            if remote_driver:
                conf["spark.yarn.appMasterEnv.PYTHONPATH"] = TORCH_LAYER_PATH
        cmd += ["--archives", ",".join(archives)]
    conf |= derived_conf(cfg, sys.stderr.isatty())  # the driver's stderr is this process's: the user's terminal
    app = ["--py-files", str(artifacts.code), str(REPO_ROOT / available_jobs()[job]), *job_args]
    properties = {**conf, **sc.conf}
    for key in PYTHONPATH_SETTINGS:  # a PYTHONPATH of spark.conf comes after the torch layer's, not instead of it
        if key in conf and key in sc.conf:
            properties[key] = os.pathsep.join([conf[key], sc.conf[key]])
    return Submission(cmd, app, properties, list(overrides), driver_env, remote_driver)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    jobs = available_jobs()
    usage = "usage: spark-submit.sh <job> [--env local|standalone|yarn] [--set key=value ...] [--dry-run] [--help]"
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{usage}\n\njobs: {', '.join(jobs)}\n\n"
              "Each job is jobs/<job>.py (land-demo: jobs/land_demo.py) and its code pipelines/stages/<job>;\n"
              "`spark-submit.sh <job> --help` describes it. history [--port 18080] runs Spark's History Server on\n"
              "the workspace's event logs (<workspace>/spark-events), on 127.0.0.1, in this process.")
        return 0
    job, rest = argv[0], argv[1:]
    if job not in jobs:
        print(f"unknown job {job!r}; jobs: {', '.join(jobs)}", file=sys.stderr)
        return 2
    if job in IN_PROCESS:
        return importlib.import_module(f"jobs.{job.replace('-', '_')}").main(rest)
    if "-h" in rest or "--help" in rest:
        return subprocess.call([sys.executable, str(REPO_ROOT / jobs[job]), "--help"])
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env", default="local", choices=ENVS)
    pre.add_argument("--set", dest="overrides", action="append", default=[])
    pre.add_argument("--conf-dir", default=None)
    pre.add_argument("--dry-run", action="store_true")
    known, job_only = pre.parse_known_args(rest)  # the job's own arguments; --set goes through the job file
    try:
        cfg = load_config(known.env, known.overrides, known.conf_dir)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    conf_dir = Path(known.conf_dir or REPO_ROOT / "conf").resolve()
    remote_driver = cfg.env == "yarn" and cfg.spark.deploy_mode == "cluster"
    # the job imports from the shipped code, so it cannot find conf/ on its own
    job_args = ["--env", known.env, *job_only, "--conf-dir",
                known.conf_dir or (CONF_ARCHIVE_ALIAS if remote_driver else str(conf_dir))]
    planned = plan_artifacts(cfg)
    try:
        session_jars(cfg)  # storage.engine=delta-spark without the Delta jars: a set-up error, before any build
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    if known.dry_run:
        print(build_command(job, cfg, job_args, planned, known.overrides, conf_dir).describe())
        return 0
    submission = build_command(job, cfg, job_args, build_artifacts(cfg, planned, conf_dir), known.overrides, conf_dir)
    prepare_event_log(cfg)
    env = {**os.environ, "PIPELINE_SUBMITTED": "1", "PYSPARK_PYTHON": executor_python()}
    loopback_env(cfg, env)
    return submission.run(env)


if __name__ == "__main__":
    sys.exit(main())
