"""svs.report: built once from the plan and the batches' records; the table says when a route fell
back (the CUDA kernel's result failed its certificate and was recomputed on the aten route,
csrc/cuda/refine_cuda.cpp)."""
from svs.report import ParamRecord, RefineReport


def report(*routes):
    records = [ParamRecord(f"l{i}.weight", (4, 3), "weight", r, 2.0, 1.0, 1.4, 1.0) for i, r in enumerate(routes)]
    return RefineReport(records, map="sqrt", method="auto", device="cuda:0", dry_run=False)


def test_fallback_routes_are_shown_and_explained():
    text = str(report("cuda:gram", "fallback:aten:svd"))
    assert "fallback:aten:svd" in text
    assert "1 weight on route fallback:*: the GPU result failed its certificate" in text
    assert "fallback" not in str(report("cuda:gram", "cuda:small"))


def test_build_keeps_the_sources_order_and_says_why_each_tensor_is_not_refined():
    """The report is built once from the plan and every batch's records (in any order, as ranks
    send them): records in the source's order, skipped tensors with their reason, the others
    grouped by why the preset left them alone."""
    import torch

    from svs import planner
    from svs.options import RefineOptions
    from svs.report import build

    state = {"emb": torch.randn(3), "a.weight": torch.randn(4, 3), "b.weight": torch.zeros(0, 3),
             "c.weight": torch.randn(2, 2), "d.scale": torch.randn(2)}
    options = RefineOptions(map="log1p", dry_run=True)
    plan = planner.plan(state, options)
    records = {n: ParamRecord(n, tuple(state[n].shape), "weight", "auto (not run)") for n in ("c.weight", "a.weight")}
    rep = build(plan, records, options, "cpu", 1.5)
    assert [(r.name, r.role) for r in rep.records] == [("a.weight", "weight"), ("b.weight", "skipped"), ("c.weight", "weight")]
    assert rep.skipped[0].reason == "empty tensor" and rep.skipped[0].shape == (0, 3)
    assert rep.left_alone == {"not a weight or bias": ["emb", "d.scale"]}
    assert (rep.map, rep.method, rep.device, rep.dry_run, rep.seconds) == ("log1p", "auto", "cpu", True, 1.5)
