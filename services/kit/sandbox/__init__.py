"""The sandbox layer shared by jobs (provisioner) and agent sandboxes (agent-runtime)."""

from services.kit.sandbox.layer import (
    DATA,
    WORKSPACE,
    Bind,
    Isolation,
    Launch,
    Limits,
    Sandbox,
    Spec,
    available,
    choose,
    code_dirs,
)

__all__ = ["DATA", "WORKSPACE", "Bind", "Isolation", "Launch", "Limits", "Sandbox", "Spec", "available",
           "choose", "code_dirs"]
