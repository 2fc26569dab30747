"""agent-runtime: sandboxes for tool use and durable agent runs (isolation arrives with its issue)."""
