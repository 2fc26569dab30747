"""Admission rules. Pure: no I/O, so every rule is unit-tested directly."""

from __future__ import annotations

from dataclasses import dataclass

GPU_QUOTA_POLICY = "quota.gpu-per-team"


@dataclass(frozen=True)
class Decision:
    admitted: bool
    policy_ids: tuple[str, ...]
    reason: str


def decide_gpus(*, team: str, requested: int, in_use: int, quota: int) -> Decision:
    """Admit when the team's GPUs in use plus this request stay within its quota."""
    if requested + in_use <= quota:
        return Decision(
            True,
            (GPU_QUOTA_POLICY,),
            f"team {team} uses {in_use} of {quota} GPUs; {requested} more fit",
        )
    free = max(quota - in_use, 0)
    return Decision(
        False,
        (GPU_QUOTA_POLICY,),
        f"team {team} asked for {requested} GPUs but only {free} of its quota of {quota} are "
        f"free ({in_use} in use): wait for running work to finish, request at most {free}, "
        "or ask the platform team to raise the quota",
    )
