"""Models served as endpoints: the offline Hugging Face resolver (``hub``), the security gate
(``scan``), and replicas of the model server (``modelserver``, run in a sandbox) started and
stopped from the host (``replica``)."""

from services.provisioner.endpoints.serving.hub import InvalidModelId, ModelNotFound, resolve, seed_mirror
from services.provisioner.endpoints.serving.replica import Replica, reap, start_replica
from services.provisioner.endpoints.serving.scan import ScanReport, scan_model

__all__ = [
    "InvalidModelId",
    "ModelNotFound",
    "Replica",
    "ScanReport",
    "reap",
    "resolve",
    "scan_model",
    "seed_mirror",
    "start_replica",
]
