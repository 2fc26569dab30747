"""Guardrails as code: the Cedar policy engine and the default policy folder.

A library, not a service: quota enforces the policies on every ``jobs.requested`` and the CLI's
``aicloud policy test`` evaluates them offline, and neither may import the other.
"""

from pathlib import Path

POLICY_DIR = Path(__file__).resolve().parents[1] / "policies"
