"""aicloud: the CLI and the local stack."""
