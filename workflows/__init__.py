"""Temporal workflows. Deterministic code only: contracts, the SDK and the standard library."""
