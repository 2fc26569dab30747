"""The Python environment a job runs with (the local backend's image): lean on purpose, as Ray's
job entrypoint imports it on every node for every job."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def job_runtime() -> Path | None:
    """The platform's own virtual environment, the local backend's image: a job's ``python``
    has what the platform ships (MLflow and numpy included). None outside a virtualenv."""
    return None if sys.prefix == sys.base_prefix else Path(sys.prefix)


def job_path() -> str:
    """The job's PATH: the platform's environment's bin/ first, then the host's."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    runtime = job_runtime()
    return path if runtime is None else os.pathsep.join([str(runtime / "bin"), path])
