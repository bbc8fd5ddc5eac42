"""svs: Singular Value Scaling (Kim & Yoo, AAAI 2025) of pruned models, fast and batched.

    import svs
    report = svs.refine_model(model, preset="ddpm")   # whole model, in place, all-or-nothing
    print(report)
    new_w, new_b = svs.refine([w1, w2], [b1, None])    # any tensors, one operator call
    ckpt = svs.io.load("model.safetensors")            # checkpoints (pickles only with trust_pickle=True)
"""
from . import io, layouts
from .ops import MAPS, map_spectrum, refine, refine_, refine_with_spectra
from .presets import PRESETS, Role, select
from .model import refine_model, refine_state_dict
from .engine import RefineError
from .report import ParamRecord, RefineReport

__all__ = [
    "MAPS",
    "PRESETS",
    "ParamRecord",
    "RefineError",
    "RefineReport",
    "Role",
    "io",
    "layouts",
    "map_spectrum",
    "refine",
    "refine_",
    "refine_model",
    "refine_state_dict",
    "refine_with_spectra",
    "select",
]
__version__ = "0.1.0"
