"""svs.engine: one batch through the operator, its records, and errors that name the tensor."""
import pytest
import torch

import svs
from svs import engine, planner
from svs.options import RefineOptions
from tests.reference import assert_matches, reference_bias, reference_refine


def batch_of(state, **options):
    opts = RefineOptions(**options)
    plan = planner.plan(state, opts)
    assert len(plan.batches) == 1
    return plan.batches[0], plan, opts


def test_a_batch_refines_its_weights_biases_and_resets(seed):
    torch.manual_seed(seed)
    state = {"a.weight": torch.randn(6, 4, dtype=torch.float64), "a.bias": torch.randn(6, dtype=torch.float64),
             "b.weight": torch.randn(6, 4, dtype=torch.float64), "norm.weight": torch.randn(6), "norm.bias": torch.randn(6)}
    batch, plan, opts = batch_of(state, preset="ddpm")
    new, records = engine.refine_batch(state, batch, plan, opts)
    assert set(new) == set(records) == set(state)
    assert_matches(new["a.weight"], reference_refine(state["a.weight"]))
    assert_matches(new["a.bias"], reference_bias(state["a.bias"]))
    assert torch.equal(new["norm.weight"], torch.ones(6)) and torch.equal(new["norm.bias"], torch.zeros(6))
    s = torch.linalg.svdvals(state["b.weight"])
    assert records["b.weight"].before_max == pytest.approx(float(s[0]), rel=1e-9)
    assert records["b.weight"].after_max == pytest.approx(float(s[0].sqrt()), rel=1e-9)
    assert records["a.bias"].route == "b/sqrt(|b|+eps)" and records["norm.bias"].role == "reset=0"


def test_a_dry_run_without_stats_computes_nothing(monkeypatch):
    monkeypatch.setattr(engine, "singular_values", lambda *a: pytest.fail("decomposed"))
    monkeypatch.setattr(engine, "_call_refine", lambda *a: pytest.fail("refined"))
    state = {"a.weight": torch.randn(5, 3), "a.bias": torch.randn(5)}
    batch, plan, opts = batch_of(state, dry_run=True, stats=False)
    new, records = engine.refine_batch(state, batch, plan, opts)
    assert new == {} and records["a.weight"].route == "auto (not run)" and records["a.weight"].before_max is None
    assert records["a.bias"].before_max == pytest.approx(float(state["a.bias"].double().norm()))
    assert records["a.bias"].after_max is None


def test_operator_errors_name_the_tensor():
    state = {"x.weight": torch.randn(4, 4), "y.weight": torch.randn(4, 4), "y.bias": torch.randn(4)}
    state["y.weight"][1, 2] = float("nan")
    batch, plan, opts = batch_of(state)
    with pytest.raises(svs.RefineError, match=r"parameter 'y\.weight'.*NaN or Inf") as err:
        engine.refine_batch(state, batch, plan, opts)
    assert "weights[" not in str(err.value)
    batch, plan, opts = batch_of(state, method="no-such-method", exclude="^y")
    with pytest.raises(ValueError, match="no-such-method"):  # the operator's ValueError stays one
        engine.refine_batch(state, batch, plan, opts)
