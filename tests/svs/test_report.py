"""svs.report: the table says when a route fell back (the CUDA kernel's result failed its
certificate and was recomputed on the aten route, csrc/cuda/refine_cuda.cpp)."""
from svs.report import ParamRecord, RefineReport


def report(*routes):
    records = [ParamRecord(f"l{i}.weight", (4, 3), "weight", r, 2.0, 1.0, 1.4, 1.0) for i, r in enumerate(routes)]
    return RefineReport(records, map="sqrt", method="auto", device="cuda:0", dry_run=False)


def test_fallback_routes_are_shown_and_explained():
    text = str(report("cuda:gram", "fallback:aten:svd"))
    assert "fallback:aten:svd" in text
    assert "1 weight on route fallback:*: the GPU result failed its certificate" in text
    assert "fallback" not in str(report("cuda:gram", "cuda:small"))
