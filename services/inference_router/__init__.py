"""inference-router: the one gateway to every model (routing arrives with its own issue)."""
