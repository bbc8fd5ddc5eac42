"""One rank of tests/svs/test_layouts.py's 2-process gloo test, started by torchrun:
``layouts_dist_worker.py RESULT`` refines tiny GPT-2 (Conv1D) and Mixtral (fused experts) models
with ``process_group=`` and rank 0 saves their state dicts to RESULT.<model>."""
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import svs  # noqa: E402
from tests.models import gpt2, mixtral  # noqa: E402

dist.init_process_group("gloo")
for build in (gpt2, mixtral):
    torch.manual_seed(0)
    model, _ = build()
    svs.refine_model(model, preset="transformer", process_group=dist.group.WORLD)
    if dist.get_rank() == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
                  f"{sys.argv[1]}.{build.__name__}")
dist.destroy_process_group()
# Leave without interpreter teardown, where a gloo rank sometimes aborted ("terminate called
# without an active exception", exit -6) after all its work (as tests/svs/dist_worker.py does).
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
