"""The torch layer: what only PyTorch needs leaves the packed environment (YARN's pyenv.tar.gz) and is packed alone,
for pipelines that train with PyTorch. Computed on this checkout's real .venv, and packed on a small fake one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

from pipelines.submit import pack_environment, pack_torch_layer, torch_layer

pytestmark = pytest.mark.fast


def test_layer_of_the_real_environment() -> None:
    """torch, the CUDA wheels and triton go; what the rest of the stack needs too (jinja2, fsspec) stays."""
    venv = Path(sys.prefix)
    layer = torch_layer(venv)
    names = {d.split("==")[0] for d in layer.dists}
    assert {"torch", "triton", "sympy", "nvidia-cublas", "nvidia-nccl-cu13", "cuda-bindings"} <= names
    assert not names & {"numpy", "jinja2", "markupsafe", "fsspec", "typing-extensions", "setuptools", "pyspark",
                        "tensorflow-cpu", "mlflow", "horovod", "spark-ml-pipeline"}
    assert {"torch", "nvidia", "triton", "functorch", "torchgen"} <= set(layer.entries)
    assert any(e.startswith("torch-") and e.endswith(".dist-info") for e in layer.entries)
    patterns = layer.excludes(venv)
    site = layer.site.relative_to(venv).as_posix()  # type: ignore[union-attr]

    def excluded(path: str) -> bool:
        return any(fnmatch(path, p) for p in patterns)

    assert excluded(f"{site}/torch/__init__.py") and excluded(f"{site}/nvidia/cu13/lib/libcudart.so.13")
    assert excluded("bin/torchrun")
    for kept in ("numpy/__init__.py", "jinja2/__init__.py", "fsspec/__init__.py", "pyspark/__init__.py",
                 "tensorflow/__init__.py", "typing_extensions.py"):
        assert not excluded(f"{site}/{kept}"), kept


def _dist(site: Path, name: str, version: str, requires: tuple[str, ...] = (), files: tuple[str, ...] = ()) -> None:
    """An installed distribution: its .dist-info (METADATA, RECORD) and its files."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    for rel in files:
        path = (site / rel).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"WHERE = {rel!r}\n" if rel.endswith(".py") else "x\n")
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in (*files, f"{info.name}/METADATA", f"{info.name}/RECORD")))


@pytest.fixture
def fake_venv(tmp_path: Path) -> Path:
    """A venv with a fake torch: tlib and cuda-rt (through cuda-meta's extra) only it needs; shared, which app needs
    too; reqonly, named by a requirements file; opt, which torch needs only for an extra it is not asked for; nsp, a
    folder torch shares with another distribution."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    _dist(site, "torch", "9.9.0", ("tlib", "shared>=1", "reqonly", 'cuda-meta[rt]; platform_system == "Linux"',
                                   'opt; extra == "opt"'),
          ("torch/__init__.py", "torch/lib/libtorch.so", "nsp/torchpart.py", "../../../bin/torchrun"))
    _dist(site, "tlib", "1.0", files=("tlib/__init__.py", "tlib/tests/test_tlib.py"))
    _dist(site, "cuda-meta", "1.0", ('cuda-rt; extra == "rt"', 'cuda-never; extra == "other"'))
    _dist(site, "cuda-rt", "1.0", files=("nvidia/rt/lib/libcudart.so.13",))
    _dist(site, "cuda-never", "1.0", files=("cuda_never.py",))
    _dist(site, "shared", "1.0", files=("shared/__init__.py",))
    _dist(site, "app", "1.0", ("shared",), ("app/__init__.py",))
    _dist(site, "reqonly", "1.0", files=("reqonly.py",))
    _dist(site, "opt", "1.0", files=("opt/__init__.py",))
    _dist(site, "nsp-other", "1.0", files=("nsp/other.py",))
    return venv


def test_layer_is_what_only_torch_needs(fake_venv: Path, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pins\nreqonly==1.0  # needed on its own\ntorch==9.9.0\n\n")
    layer = torch_layer(fake_venv, requirements)
    assert layer.dists == ("cuda-meta==1.0", "cuda-rt==1.0", "tlib==1.0", "torch==9.9.0")
    assert layer.entries == ("cuda_meta-1.0.dist-info", "cuda_rt-1.0.dist-info", "nvidia", "tlib",
                             "tlib-1.0.dist-info", "torch", "torch-9.9.0.dist-info")
    assert layer.files == ("nsp/torchpart.py",) and layer.outside == ("bin/torchrun",)
    # without the requirements file reqonly is needed by torch alone
    assert "reqonly==1.0" in torch_layer(fake_venv, tmp_path / "none.txt").dists
    assert not torch_layer(tmp_path / "nothing")  # no environment, no layer


def test_packed_environment_leaves_the_layer_out_and_the_layer_imports_alone(fake_venv: Path,
                                                                              tmp_path: Path) -> None:
    # the project's requirements.txt does not name reqonly: torch alone needs it here
    env = pack_environment(fake_venv, tmp_path / "pyenv.tar.gz", "/usr")
    with tarfile.open(env) as tar:
        members = set(tar.getnames())
    site = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    assert {f"{site}/shared/__init__.py", f"{site}/app/__init__.py", f"{site}/opt/__init__.py",
            f"{site}/nsp/other.py", f"{site}/cuda_never.py", "bin/python"} <= members
    assert not [m for m in members if m.startswith((f"{site}/torch", f"{site}/tlib", f"{site}/nvidia", f"{site}/req",
                                                    f"{site}/cuda_meta", f"{site}/cuda_rt", f"{site}/nsp/torchpart",
                                                    "bin/torchrun"))]

    archive = pack_torch_layer(fake_venv, tmp_path / "torch-layer.tar.gz")
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        tar.extractall(tmp_path / "torchlayer", filter="data")
    assert "torch/__init__.py" in names and "nvidia/rt/lib/libcudart.so.13" in names
    assert {"nsp/torchpart.py", "torch-9.9.0.dist-info/METADATA", "reqonly.py"} <= set(names)
    assert not [n for n in names if n.startswith(("shared", "app", "opt", "nsp/other", "bin", "/", ".."))]
    assert "tlib/tests/test_tlib.py" not in names  # what the packed environment leaves out anyway
    probe = subprocess.run([str(fake_venv / "bin" / "python"), "-c", "import torch, tlib, nsp.torchpart as p; "
                            "print(torch.__file__, p.WHERE)"], capture_output=True, text=True, timeout=60,
                           env={"PYTHONPATH": str(tmp_path / "torchlayer")}, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(tmp_path / "torchlayer" / "torch" / "__init__.py"), "nsp/torchpart.py"]

    mtime = archive.stat().st_mtime_ns
    assert pack_torch_layer(fake_venv, archive).stat().st_mtime_ns == mtime  # unchanged layer: reused
    stamp = archive.with_suffix(".gz.sha256").read_text()
    tlib = next((fake_venv / "lib").glob("python*/site-packages/tlib-1.0.dist-info"))
    shutil.rmtree(tlib)
    _dist(tlib.parent, "tlib", "1.1", files=("tlib/__init__.py",))  # an upgrade
    assert pack_torch_layer(fake_venv, archive).with_suffix(".gz.sha256").read_text() != stamp  # repacked


def test_no_torch_no_layer(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert not torch_layer(venv) and torch_layer(venv).excludes(venv) == []
    with pytest.raises(FileNotFoundError, match="torch is not installed"):
        pack_torch_layer(venv, tmp_path / "torch-layer.tar.gz")
