"""provisioner: the Temporal worker that runs jobs on a compute backend."""
