"""observability-collector: platform-wide metrics from every event on the bus."""
