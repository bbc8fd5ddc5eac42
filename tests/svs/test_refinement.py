"""svs.refinement: every source goes through one pipeline, each batch loaded, refined and written
once, the report built once."""
import torch
from torch import nn

import svs
from svs import refinement
from svs.model import InMemory
from svs.options import RefineOptions


class Counting(InMemory):
    """An in-memory source that records what the pipeline asks of it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls = []

    def load(self, batch):
        self.calls.append(("load", tuple(batch.weights)))
        return super().load(batch)

    def write(self, batch, new):
        self.calls.append(("write", tuple(batch.weights)))
        super().write(batch, new)

    def finish(self, plan, report, ranks):
        self.calls.append(("finish", len(plan.batches)))
        super().finish(plan, report, ranks)


def test_each_batch_is_loaded_refined_and_written_once(monkeypatch):
    torch.manual_seed(0)
    state = {f"l{i}.weight": torch.randn(8, 8 + i % 2) for i in range(6)}
    out = {}
    source = Counting(state, [], out.update)
    built = []
    real_build = refinement.build
    monkeypatch.setattr(refinement, "build", lambda *a: (built.append(1), real_build(*a))[1])
    report = refinement.run(source, RefineOptions())
    batches = [("l0.weight", "l2.weight", "l4.weight"), ("l1.weight", "l3.weight", "l5.weight")]
    assert source.calls == [op for b in batches for op in (("load", b), ("write", b))] + [("finish", 2)]
    assert built == [1] and [r.name for r in report.weights] == list(state)
    expected, _ = svs.refine_state_dict(state)
    assert all(torch.equal(out[n], expected[n]) for n in state)


def test_refine_model_and_refine_state_dict_differ_only_in_their_source():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.ConvTranspose2d(5, 4, 3))
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    new, by_dict = svs.refine_state_dict(state, layouts=svs.layouts.of_module(model), map="log1p")
    by_model = svs.refine_model(model, map="log1p")
    assert [r.name for r in by_model.records] == [r.name for r in by_dict.records]
    assert by_model.to_dict()["records"] == by_dict.to_dict()["records"]
    assert all(torch.equal(p, new[n]) for n, p in model.named_parameters())
