"""The jobs: one thin script per job a user names. `./spark-submit.sh <job>` runs jobs/<job>.py (dashes become
underscores: land-demo -> jobs/land_demo.py), and the job's stage is pipelines/stages/<job>.py or the package
pipelines/stages/<job>/.

A job run as a script (`python jobs/<job>.py`, as spark-submit runs it; a YARN container runs it from its working
folder) gets the script's folder as sys.path[0], where features.py would shadow the top-level `features` package
(the pyspark.ml stages a saved PipelineModel loads). Every job imports this package before anything imports
`features`, and this package drops that folder from sys.path.
"""

from __future__ import annotations

import pkgutil
import sys
from pathlib import Path


def _job_folders() -> set[Path]:
    """This package's folder, and the folder of the running script when that script is one of the jobs."""
    here = [str(Path(__file__).parent)]  # also where it runs as a script, without a package's __path__
    folders = {Path(p).resolve() for p in here}
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main and Path(main).stem in {m.name for m in pkgutil.iter_modules(here)}:
        folders.add(Path(main).resolve().parent)
    return folders


def _keep(entry: str, folders: set[Path]) -> bool:
    try:
        return Path(entry or ".").resolve() not in folders
    except OSError:
        return True


_folders = _job_folders()
sys.path[:] = [p for p in sys.path if _keep(p, _folders)]
