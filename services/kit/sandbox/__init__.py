"""The sandbox layer shared by jobs (provisioner) and agent sandboxes (agent-runtime)."""

from services.kit.sandbox.box import Box, BoxGone, BoxSpec, reap_orphans, start_box
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

__all__ = [
    "DATA",
    "WORKSPACE",
    "Bind",
    "Box",
    "BoxGone",
    "BoxSpec",
    "Isolation",
    "Launch",
    "Limits",
    "Sandbox",
    "Spec",
    "available",
    "choose",
    "code_dirs",
    "reap_orphans",
    "start_box",
]
