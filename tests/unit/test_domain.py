"""Domain rules of each service, tested directly."""

from __future__ import annotations

import pytest

from services.catalog.domain import next_status
from services.quota.domain import Capacity, Outcome, Pool, decide_gpu_type, decide_gpus
from workflows.job import RunResult, _verdict

pytestmark = pytest.mark.unit


def test_gpu_quota_admits_queues_or_rejects_with_a_reason() -> None:
    ok = decide_gpus(team="legal", requested=2, in_use=4, quota=8)
    assert ok.outcome is Outcome.ADMIT and ok.reason == "team legal uses 4 of 8 GPUs; this job's 2 fit"
    cpu = decide_gpus(team="legal", requested=0, in_use=8, quota=8)
    assert cpu.outcome is Outcome.ADMIT and cpu.reason.endswith("this job needs none")
    wait = decide_gpus(team="legal", requested=4, in_use=6, quota=8)
    assert wait.outcome is Outcome.QUEUE and "2 free, 4 needed" in wait.reason
    fifo = decide_gpus(team="legal", requested=1, in_use=6, quota=8, queued_ahead=1)
    assert fifo.outcome is Outcome.QUEUE  # it would fit, but someone of the team waits ahead
    never = decide_gpus(team="legal", requested=16, in_use=0, quota=8)
    assert never.outcome is Outcome.REJECT and "whole quota is 8" in never.reason
    assert decide_gpus(team="legal", requested=0, in_use=8, quota=8).outcome is Outcome.ADMIT


@pytest.mark.parametrize(
    ("current", "incoming", "expected"),
    [("requested", "admitted", "admitted"), ("running", "admitted", "running"),
     ("admitted", "provisioning", "provisioning"), ("provisioning", "running", "running"),
     ("running", "provisioning", "running"),  # a resumed job's late "provisioning"
     ("completed", "running", "completed"), ("rejected", "admitted", "rejected"),
     ("admitted", "failed", "failed")],
)
def test_job_status_never_moves_backwards(current: str, incoming: str, expected: str) -> None:
    assert next_status(current, incoming) == expected


def test_job_verdicts() -> None:
    ok = RunResult(exit_code=0, started_at_s=0, ended_at_s=1)
    bad = RunResult(exit_code=3, started_at_s=0, ended_at_s=1)
    assert _verdict(ok, None, None) == ("completed", 0, "")
    assert _verdict(bad, None, None) == ("failed", 3, "command exited with code 3")
    assert _verdict(None, "max_runtime", None) == ("terminated", None, "max_runtime")
    kind, _, reason = _verdict(None, None, "executable not found")
    assert kind == "failed" and "executable not found" in reason


def test_job_runs_under_the_products_limit_or_the_users_if_shorter() -> None:
    from pathlib import Path

    from contracts import JobAdmitted, JobRequested
    from contracts.catalog import load_products
    from services.provisioner.jobs.starter import job_input

    products = load_products(Path(__file__).resolve().parents[2] / "policies" / "products.yaml")

    def admitted(product: str, **fields: object) -> JobAdmitted:
        request = JobRequested(tenant="legal", job_id="j", command=["x"], product=product,
                               **fields)  # type: ignore[arg-type]
        return JobAdmitted(tenant="legal", job_id="j", request=request, product=products[product])

    assert job_input(admitted("fine-tune", gpus=2)).max_runtime_s == 8 * 3600
    job = job_input(admitted("fine-tune-spot", gpus=2, max_runtime_s=600))
    assert (job.max_runtime_s, job.gpu_type, job.price_class) == (600, "a100-80gb", "spot")
    cpu = job_input(admitted("cpu-small"))
    assert (cpu.max_runtime_s, cpu.gpu_type, cpu.price_class) == (12 * 3600, None, "on-demand")
    assert not cpu.egress  # every shipped product keeps jobs off the network
    open_product = products["cpu-small"].model_copy(update={"network": "egress"})
    request = JobRequested(tenant="legal", job_id="j", command=["x"], product="cpu-small")
    assert job_input(JobAdmitted(tenant="legal", job_id="j", request=request,
                                 product=open_product)).egress


def test_budget_pre_authorisation() -> None:
    from services.quota.domain import decide_budget

    assert decide_budget(team="legal", estimate=500, amount=None, spent=0, reserved=0) is None
    assert decide_budget(team="legal", estimate=60, amount=100, spent=10, reserved=30) is None
    refused = decide_budget(team="legal", estimate=65.6, amount=100, spent=10, reserved=30)
    assert refused is not None and refused.outcome is Outcome.REJECT
    assert "up to $65.60" in refused.reason and "$60.00 of $100.00 is left" in refused.reason
    assert refused.policy_ids == ("quota.budget-pre-authorisation",)


def test_worst_case_estimate_of_a_product() -> None:
    from pathlib import Path

    from contracts.catalog import load_products

    products = load_products(Path(__file__).resolve().parents[2] / "policies" / "products.yaml")
    assert products["fine-tune"].estimate_usd(gpus=2, runtime_s=8 * 3600) == 65.6
    assert products["cpu-small"].estimate_usd(gpus=0, runtime_s=1800) == 0.1


def node(in_use: int) -> Capacity:
    return Capacity(in_use={"": in_use}, node_gpus=4)


def test_simulated_node_capacity_is_shared_by_all_teams() -> None:
    never = decide_gpus(team="legal", requested=6, in_use=0, quota=8, capacity=node(0))
    assert never.outcome is Outcome.REJECT and "the node has 4 GPUs (simulated capacity)" in never.reason
    busy = decide_gpus(team="legal", requested=2, in_use=0, quota=8, capacity=node(3))
    assert busy.outcome is Outcome.QUEUE and "3 of 4 in use" in busy.reason
    admitted = decide_gpus(team="legal", requested=1, in_use=0, quota=8, capacity=node(3))
    assert admitted.outcome is Outcome.ADMIT


def engine(**in_use: int) -> Capacity:
    """The local Ray cluster's report: one 8-GPU h100 node, one 4-GPU a100 node."""
    return Capacity(in_use={k.replace("_", "-"): v for k, v in in_use.items()}, engine="ray",
                    pools={"h100-80gb": Pool(total=8, largest_node=8, simulated=True),
                           "a100-80gb": Pool(total=4, largest_node=4, simulated=True)})


def test_a_gpu_type_no_node_offers_is_refused_at_once_naming_the_types_that_exist() -> None:
    refused = decide_gpus(team="legal", requested=1, in_use=0, quota=8, capacity=engine(),
                          gpu_type="tpu-v5")
    assert refused.outcome is Outcome.REJECT and refused.policy_ids == ("quota.cluster-capacity",)
    assert "no node of the ray cluster offers tpu-v5 GPUs" in refused.reason
    assert "a100-80gb (4 on nodes up, at most 4 per node), h100-80gb (8" in refused.reason


def test_more_gpus_than_the_largest_node_of_the_type_is_refused_even_within_the_quota() -> None:
    refused = decide_gpus(team="legal", requested=16, in_use=0, quota=32, capacity=engine(),
                          gpu_type="h100-80gb")
    assert refused.outcome is Outcome.REJECT
    assert "largest h100-80gb node of the ray cluster has 8 GPUs, simulated" in refused.reason
    assert "ask for at most 8" in refused.reason


def test_busy_gpus_of_one_type_queue_the_job_while_another_type_is_free() -> None:
    capacity = engine(h100_80gb=6)
    busy = decide_gpus(team="legal", requested=4, in_use=0, quota=8, capacity=capacity,
                       gpu_type="h100-80gb")
    assert busy.outcome is Outcome.QUEUE and "6 of 8 in use, simulated, 4 needed" in busy.reason
    other = decide_gpus(team="legal", requested=4, in_use=0, quota=8, capacity=capacity,
                        gpu_type="a100-80gb")
    assert other.outcome is Outcome.ADMIT
    capacity.take(4, "a100-80gb")
    assert decide_gpus(team="legal", requested=1, in_use=4, quota=8, capacity=capacity,
                       gpu_type="a100-80gb").outcome is Outcome.QUEUE


def test_a_type_whose_nodes_are_all_down_waits_for_one_to_join() -> None:
    capacity = Capacity(in_use={}, engine="ray", pools={"h100-80gb": Pool(total=0, largest_node=8)})
    waiting = decide_gpus(team="legal", requested=2, in_use=0, quota=8, capacity=capacity,
                          gpu_type="h100-80gb")
    assert waiting.outcome is Outcome.QUEUE and "no h100-80gb node of the ray cluster is up" in waiting.reason


def test_jobs_without_gpus_never_wait_for_the_engines_gpus() -> None:
    assert decide_gpus(team="legal", requested=0, in_use=0, quota=8, capacity=engine(h100_80gb=8),
                       gpu_type=None).outcome is Outcome.ADMIT


def test_the_gpu_type_is_the_requested_one_else_the_products_first_the_engine_offers() -> None:
    assert engine().resolve("h100-80gb", ("a100-80gb", "h100-80gb")) == "h100-80gb"
    assert engine().resolve(None, ("l4-24gb", "h100-80gb")) == "h100-80gb"
    assert engine().resolve(None, ("l4-24gb",)) == "l4-24gb"  # refused later, naming what exists
    assert Capacity(in_use={}, node_gpus=4).resolve(None, ("a100-80gb", "h100-80gb")) == "a100-80gb"
    assert engine().resolve(None, ()) is None


def test_a_gpu_type_the_product_does_not_offer_is_refused_naming_its_types() -> None:
    refused = decide_gpu_type(product="fine-tune", product_types=("a100-80gb", "h100-80gb"),
                              requested=2, gpu_type="a10-24gb")
    assert refused is not None and refused.outcome is Outcome.REJECT
    assert "offers GPU types a100-80gb, h100-80gb, not a10-24gb" in refused.reason
    assert decide_gpu_type(product="fine-tune", product_types=("a100-80gb",), requested=2,
                           gpu_type="a100-80gb") is None


def test_while_the_engine_does_not_answer_every_job_on_it_waits_queued() -> None:
    down = Capacity(in_use={}, engine="ray", reachable=False,
                    pools={"h100-80gb": Pool(total=8, largest_node=8)})
    for gpus, gpu_type in ((2, "h100-80gb"), (0, None)):
        waiting = decide_gpus(team="legal", requested=gpus, in_use=0, quota=8, capacity=down,
                              gpu_type=gpu_type)
        assert waiting.outcome is Outcome.QUEUE and "the ray cluster does not answer" in waiting.reason
    never = decide_gpus(team="legal", requested=16, in_use=0, quota=32, capacity=down,
                        gpu_type="h100-80gb")
    assert never.outcome is Outcome.REJECT  # what can never fit is still said at once
