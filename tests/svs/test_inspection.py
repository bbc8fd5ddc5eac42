"""svs.inspection (``svs inspect``): the spectrum facts against a float64 reference, read one layer
at a time from every checkpoint kind ``svs refine`` reads, before and after refinement."""
import importlib.util
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import svs
from svs import inspection, sharded
from svs.cli import main
from tests.models import gpt2, tiny_unet


def with_spectrum(s, rows, cols, seed):
    """A (rows, cols) float64 matrix whose singular values are ``s`` (then zeros)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))[0]
    d = torch.zeros(rows, cols, dtype=torch.float64)
    d[range(len(s)), range(len(s))] = torch.tensor(s, dtype=torch.float64)
    return u @ d @ v.T


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-9), (torch.bfloat16, 1e-3)])
def test_kappa_and_share_over_the_numerical_rank(dtype, rtol, seed):
    # A rank-3 block in a 6x9 weight whose other rows and columns are zero (as magnitude pruning
    # leaves them): the zeros are below the rank tolerance and do not count. Reference: float64 of
    # the stored (rounded) tensor. rtol: float32/64 weights are decomposed in float64 as by the
    # operator (error ~ 9 * eps64 * s_max / s_min = 2e-13); bf16 ones in float32 (9 * eps32 * 100 = 1e-4).
    w = torch.zeros(6, 9, dtype=torch.float64)
    w[:3, :5] = with_spectrum([100.0, 10.0, 1.0], 3, 5, seed)
    w = w.reshape(6, 3, 3).to(dtype)  # a conv weight, flattened to 6x9
    ref = torch.linalg.svdvals(w.reshape(6, 9).double())[:3]
    spectrum = inspection.numerical_spectrum(w)
    assert spectrum.dtype == torch.float64 and int((spectrum > 0).sum()) == 3
    kappa, share = inspection.kappa_share(spectrum)
    assert kappa == pytest.approx(float(ref[0] / ref[2]), rel=rtol) and kappa == pytest.approx(100, rel=0.2)
    assert share == pytest.approx(float(ref[0] ** 2 / (ref**2).sum()), rel=rtol)
    # after SVS (sqrt): the operator's map of the spectrum, kappa sqrt(kappa)
    assert inspection.kappa_share(svs.map_spectrum(spectrum, "sqrt"))[0] == pytest.approx(kappa**0.5, rel=rtol)


def test_zero_matrix_has_no_condition_number():
    assert inspection.kappa_share(inspection.numerical_spectrum(torch.zeros(3, 4))) == (float("inf"), 0.0)


def hf_dir(tmp_path, tensors, name="m"):
    """A sharded Hugging Face style directory: one tensor per shard, and the index."""
    root = tmp_path / name
    root.mkdir()
    weight_map = {}
    for i, (n, t) in enumerate(tensors.items()):
        shard = f"model-{i + 1:05d}-of-{len(tensors):05d}.safetensors"
        save_file({n: t.contiguous()}, str(root / shard))
        weight_map[n] = shard
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


def state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(8, 4, 3, 3, generator=g), "a.bias": torch.randn(8, generator=g),
            "b.weight": with_spectrum([50.0, 20.0, 5.0, 2.0, 0.5], 5, 7, seed).float(), "norm.weight": torch.ones(5)}


def run(argv, capsys):
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


PLOTS = importlib.util.find_spec("matplotlib") is not None


def plotted(path) -> list:
    """``--plot path`` where the plot extra is installed; without it the rest of a test runs."""
    return ["--plot", str(path)] if PLOTS else []


def rows(out):
    """{parameter: the row's cells} of the inspect table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("parameter"))
    table = lines[start + 1:next(i for i, line in enumerate(lines) if "; median [10th" in line)]
    return {line.split()[0]: line.split()[1:] for line in table}


def test_every_format_gives_the_same_numbers_one_layer_at_a_time(tmp_path, capsys, monkeypatch, seed):
    tensors = state(seed)
    torch.save(tensors, tmp_path / "m.pt")
    save_file(tensors, str(tmp_path / "m.safetensors"))
    root = hf_dir(tmp_path, tensors)
    reads = []
    load = sharded.ShardedCheckpoint.load
    monkeypatch.setattr(sharded.ShardedCheckpoint, "load", lambda self, names, *a: reads.append(names) or load(self, names, *a))
    outs = [rows(run(["inspect", str(p)], capsys)) for p in (tmp_path / "m.pt", tmp_path / "m.safetensors", root)]
    assert outs[0] == outs[1] == outs[2] and set(outs[0]) == {"a.weight", "b.weight"}
    assert reads == [["a.weight"], ["b.weight"]]  # streamed: one tensor per read, only the selected ones
    # the table against a float64 reference: shape of the matrix, rank, kappa, share, then after sqrt
    s = torch.linalg.svdvals(tensors["b.weight"].double())
    assert outs[0]["b.weight"][:4] == ["5x7", "5", f"{float(s[0] / s[4]):.4g}", f"{float(s[0]**2 / (s**2).sum()):.3f}"]
    assert outs[0]["b.weight"][4] == f"{float((s[0] / s[4]).sqrt()):.4g}"


def test_header_is_aligned_for_short_names(tmp_path, capsys):
    torch.save({"l.weight": torch.randn(3, 2)}, tmp_path / "m.pt")  # shorter than "parameter"
    lines = run(["inspect", str(tmp_path / "m.pt")], capsys).splitlines()
    header, row = lines[0], lines[1]
    assert header.startswith("parameter  ") and row.startswith("l.weight   ")
    for column in ("shape", "rank", "kappa"):  # right-aligned columns end where their values end
        end = header.index(column) + len(column)
        assert row[end - 1] != " " and (end == len(row) or row[end] == " ")


def test_verdict_follows_the_papers_100x(tmp_path, capsys, seed):
    big = {f"l{i}.weight": with_spectrum([1000.0, 1.0, 1.0], 3, 5, seed + i).float() for i in range(3)}
    small = {f"l{i}.weight": with_spectrum([3.0, 2.0, 1.0], 3, 5, seed + i).float() for i in range(3)}
    for tensors, word in ((big, "verdict: looks like the case SVS targets"), (small, "verdict: unlike the case SVS targets"),
                          ({**small, "x.weight": big["l0.weight"]}, "verdict: partly like the case SVS targets: 1 of 4")):
        torch.save(tensors, tmp_path / "m.pt")
        out = run(["inspect", str(tmp_path / "m.pt")], capsys)
        assert word in out and "about 100x" in out and "digits DDPM" in out, out


def test_refined_directory_shows_before_from_its_record_and_after_as_stored(tmp_path, capsys, seed):
    root = hf_dir(tmp_path, state(seed))
    before = rows(run(["inspect", str(root)], capsys))
    run(["refine", str(root), "-o", str(tmp_path / "out"), "-q"], capsys)
    plot = tmp_path / "after.png"
    out = run(["inspect", str(tmp_path / "out"), *plotted(plot), "--exclude", "^a"], capsys)
    after = rows(out)
    assert "refined by svs" in out and "preset generic, map sqrt" in out and set(after) == {"b.weight"}
    # kappa before as recorded by the refinement = measured before; after as stored = the map's
    assert after["b.weight"][2] == before["b.weight"][2] and after["b.weight"][3] == "-"
    assert float(after["b.weight"][4]) == pytest.approx(float(before["b.weight"][4]), rel=1e-3)
    assert not PLOTS or plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["inspect", str(tmp_path / "out"), "--map", "log1p"]) == 2
    assert "--map applies to a checkpoint before refinement" in capsys.readouterr().err


def test_gpt2_directory_is_read_in_its_linear_layout(tmp_path, capsys):
    pytest.importorskip("transformers")
    model = gpt2()[0]
    model.save_pretrained(tmp_path / "g")
    out = rows(run(["inspect", str(tmp_path / "g"), "--preset", "transformer", "--include", r"h\.0\.attn\.c_attn",
                    *plotted(tmp_path / "g.png")], capsys))
    w = model.transformer.h[0].attn.c_attn.weight  # stored (in, out): decomposed as (out, in)
    assert out["transformer.h.0.attn.c_attn.weight"][0] == f"{w.shape[1]}x{w.shape[0]}"
    assert not PLOTS or (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"  # an unrefined Hugging Face directory, plotted


def test_pipeline_folder_before_refinement(tmp_path, capsys):
    d = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    d.DDPMPipeline(unet=tiny_unet(), scheduler=d.DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "p")
    plot = tmp_path / "s.png"
    out = run(["inspect", str(tmp_path / "p"), "--preset", "ddpm", *plotted(plot)], capsys)
    assert rows(out) and all(name.startswith("unet/") for name in rows(out)) and plot.exists() == PLOTS


def test_module_layouts_and_selection_errors(tmp_path, capsys):
    torch.save(nn.Sequential(nn.ConvTranspose2d(4, 6, 3)), tmp_path / "m.pt")
    out = rows(run(["inspect", str(tmp_path / "m.pt"), "--trust-pickle"], capsys))
    assert out["0.weight"][0] == "6x4x3x3"  # the equivalent conv's (out, in, k, k)
    assert main(["inspect", str(tmp_path / "m.pt"), "--trust-pickle", "--include", "nothing"]) == 2
    assert "no weight selected" in capsys.readouterr().err
