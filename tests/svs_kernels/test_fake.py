"""The fake (meta) kernels of the svs operators: well-defined outputs on the inputs' device, so that
shape inference and a model on the meta device behave the same every time."""
import torch


def test_fake_kernel_outputs_are_meta_tensors():
    """Every output of the fake kernel lives on the inputs' (meta) device with the real kernel's
    shapes and dtypes: the route codes were an uninitialised CPU tensor, read as random codes."""
    w, b = torch.empty(3, 4, 2, device="meta"), torch.empty(3, device="meta")
    new_w, new_b, spectra, codes = torch.ops.svs.refine_with_spectra([w, w], [b, None], "sqrt", 1e-8, "auto")
    assert [t.device.type for t in (*new_w, new_b[0], *spectra, codes)] == ["meta"] * 6 and new_b[1] is None
    assert new_w[0].shape == w.shape and spectra[0].shape == (3,) and spectra[0].dtype == torch.float64
    assert codes.shape == (2,) and codes.dtype == torch.int8
