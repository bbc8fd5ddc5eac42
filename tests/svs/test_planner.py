"""svs.planner: the selection, pairing, batching and rank assignment of every refinement."""
import pytest
import torch

import svs
from svs import planner
from svs.options import RefineOptions
from svs.testing import llama_state_dict


def test_assign_largest_first_onto_least_loaded():
    assert planner.assign([1, 5, 3, 3, 2], 2) == [1, 0, 1, 1, 0]  # loads 7 and 7
    assert planner.assign([4, 4, 4], 1) == [0, 0, 0]
    assert planner.assign([], 3) == []


def test_plan_covers_every_selected_tensor_once():
    state = llama_state_dict(meta=True)
    plan = planner.plan(state, RefineOptions(preset="ddpm"))
    jobs, skipped = [b.names() for b in plan.batches], plan.skipped
    flat = [n for job in jobs for n in job]
    assert len(flat) == len(set(flat))
    roles = svs.select(state, "ddpm")
    assert set(flat) == {n for n, r in roles.items() if r is not svs.Role.SKIP} and not skipped
    for job in jobs:  # a bias travels with its weight
        for name in job:
            if name.endswith(".bias"):
                assert name.replace(".bias", ".weight") in job


def test_batches_are_one_shape_and_bounded_in_bytes():
    """2048 x 2048 matrices (past spectrum.MAX_WORK alone) go one per call; 100 of 64 x 4096, which
    MAX_WORK would take 256 at a time, are cut to BATCH_BYTES (32 float64 matrices of 2 MiB); each
    bias rides with its weight; one_call puts every weight in one batch, in the source's order."""
    state = {f"big.{i}.weight": torch.empty(2048, 2048, device="meta") for i in range(3)}
    state.update({f"small.{i}.weight": torch.empty(64, 4096, device="meta") for i in range(100)})
    state.update({f"small.{i}.bias": torch.empty(64, device="meta") for i in range(100)})
    plan = planner.plan(state, RefineOptions())
    for batch in plan.batches:
        assert len({state[w].shape for w in batch.weights}) == 1
        assert len(batch.weights) == 1 or 8 * sum(state[w].numel() for w in batch.weights) <= planner.BATCH_BYTES
        assert batch.biases == {w: w.replace("weight", "bias") for w in batch.weights if w.startswith("small")}
    assert [len(b.weights) for b in plan.batches] == [1, 1, 1, 32, 32, 32, 4]
    one = planner.plan(state, RefineOptions(), one_call=True)
    assert len(one.batches) == 1 and one.batches[0].weights == [n for n in state if n.endswith("weight")]


def test_costs_and_owners_follow_the_cost_model():
    state = {"a.weight": torch.empty(30, 20, device="meta"), "b.weight": torch.empty(8, 2, 3, 3, device="meta")}
    plan = planner.plan(state, RefineOptions(), world=2)
    assert plan.costs == [30 * 20 * 20 + planner.OVERHEAD, 8 * 18 * 8 + planner.OVERHEAD]
    assert plan.owner == [0, 1]


def test_resets_ride_with_the_first_batch_and_skipped_are_said():
    state = {"norm.weight": torch.ones(4), "norm.bias": torch.zeros(4), "a.weight": torch.randn(4, 3),
             "a.bias": torch.randn(4), "b.weight": torch.randn(5, 3), "b.bias": torch.arange(5)}
    plan = planner.plan(state, RefineOptions(preset="ddpm"))
    assert plan.batches[0].resets == ["norm.weight", "norm.bias"] and all(not b.resets for b in plan.batches[1:])
    assert plan.skipped == {"b.bias": "dtype torch.int64 is not floating point",
                            "b.weight": "its bias is skipped (dtype torch.int64 is not floating point)"}
    assert plan.selected["b.weight"] is svs.Role.WEIGHT and plan.roles["b.weight"] is svs.Role.SKIP
    assert plan.order == list(state)


def test_the_sources_check_sees_the_selection_before_any_other_refusal():
    """A source's own refusal (a quantized dtype, a tensor not loaded) comes first, even where
    the planner would refuse too (here: nothing usable is selected)."""
    state = {"q.weight": torch.zeros(4, 4, dtype=torch.int8)}

    def refuse(selected):
        assert selected == {"q.weight": svs.Role.WEIGHT}
        raise ValueError("quantized")

    with pytest.raises(ValueError, match="quantized"):
        planner.plan(state, RefineOptions(), check=refuse)
    with pytest.raises(ValueError, match=r"selects no weight among 1 tensors \(1 skipped"):
        planner.plan(state, RefineOptions())


def test_a_bias_that_is_not_its_weights_output_is_refused():
    state = {"c.weight": torch.empty(3, 5, device="meta"), "c.bias": torch.empty(5, device="meta")}
    with pytest.raises(ValueError, match=r"bias 'c\.bias' has shape \[5\] but its weight 'c\.weight' has \[3, 5\]"):
        planner.plan(state, RefineOptions())
