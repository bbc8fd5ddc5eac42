"""One rank of the 2-process gloo tests (tests/svs/test_distributed.py), started by torchrun.

    dist_worker.py MODE SRC OUT RESULT
MODE ``ok``: refine a module holding the tensors of SRC with ``svs.refine_model(...,
process_group=)`` (rank 0 saves its parameters to RESULT), then the directory SRC into OUT with
``svs refine`` (the CLI under torchrun). MODE ``nan``: SRC has a NaN weight; each rank writes the
error it raised to RESULT.rank<N>.
"""
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

import svs
from svs import cli, sharded


def module_of(state: dict) -> torch.nn.Module:
    """A module whose parameters are ``state``, by the same dotted names."""
    root = torch.nn.Module()
    for name, value in state.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    return root


def main(mode: str, src: Path, out: Path, result: Path) -> None:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    dist.init_process_group("gloo")
    group = dist.group.WORLD
    rank = dist.get_rank()
    try:
        if mode == "ok":
            state = {}
            for f in sorted(src.glob("*.safetensors")):
                state.update(load_file(str(f)))
            model = module_of(state)
            svs.refine_model(model, preset="generic", process_group=group)
            if rank == 0:
                save_file({n: p.detach() for n, p in model.named_parameters()}, str(result))
            assert cli.main(["refine", str(src), "-o", str(out), "--preset", "generic", "-q"]) == 0  # ends the group
        else:
            sharded.refine_dir(src, out, preset="generic", group=group)
    except Exception as err:  # noqa: BLE001
        if mode != "nan":
            raise
        Path(f"{result}.rank{rank}").write_text(f"{type(err).__name__}: {err}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    # Done, group destroyed: leave without interpreter teardown, where a gloo rank sometimes
    # aborted ("terminate called without an active exception", exit -6) after all its work.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
