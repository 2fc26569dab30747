"""aicloud services. Each is independent: they share only ``contracts`` and ``services.kit``."""
