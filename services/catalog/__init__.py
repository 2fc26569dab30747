"""catalog: the platform API the CLI talks to, and the record of every job's state."""
