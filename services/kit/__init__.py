"""The runtime every service is built from: settings, logging, tracing, bus, db and http."""
