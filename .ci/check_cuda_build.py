"""Checks that a CUDA build of the extension loads on the torch it was built for; no GPU needed.

    python .ci/check_cuda_build.py                          # the installed svs_kernels (setup.py)
    python .ci/check_cuda_build.py --lib cmake-build/libsvs_ops.so   # the CMake library

Used by .ci/gpu_mirror.sh (CI, no GPU) and .ci/gpu_check.sh (the GPU machine), one script for both.
Run it in a fresh interpreter; it checks, in this order, and reports every failure before exiting 1:
  1. symbols: every undefined dynamic symbol of the library (`nm -D --undefined-only`) is defined by
     a library in its load scope: its own dependencies (`ldd`), the Python interpreter and what torch
     loads globally. This lists all of them, where the loader stops at the first. A symbol that
     only torch's lazily, privately loaded libtorch_cuda_linalg.so defines is not in that scope.
  2. loading: `import svs_kernels` (Python loads extensions with RTLD_NOW), or for the CMake library
     dlopen with RTLD_NOW, then `torch.ops.load_library(lib)`.
  3. registration: each svs:: operator has the CUDA kernel it should (OPERATORS below).
  4. runtime libraries: libcusolver and libcublas are mapped once, from the directory torch loaded
     them from (the nvidia wheels), not from another toolkit with the same soname.
"""
import argparse
import ctypes
import glob
import importlib.util
import os
import re
import subprocess
import sys

import torch

# What each svs:: operator must have on CUDA: "kernel" a C++ CUDA kernel (csrc/cuda);
# "composite" no CUDA kernel of its own, but a device-generic one (CompositeExplicitAutograd or
# CompositeImplicitAutograd) that runs on CUDA; "triton" the Triton kernel svs_kernels.triton_ops
# registers at import when a GPU is visible, else (no GPU, or the CMake library, which has no
# Python) the composite kernel. A new operator must be added here (the check fails until it is).
OPERATORS = {
    "svs::refine": "kernel",
    "svs::refine_with_spectra": "kernel",
    "svs::refine_": "composite",
    "svs::_map_spectrum": "composite",
    "svs::_route_names": "composite",
    "svs::_map_names": "composite",
    "svs::_parse_map": "composite",
    "svs::_method_names": "composite",
    "svs::_reconstruct": "triton",
    "svs::_reconstruct_plan": "composite",
    "svs::_gemm_config": "composite",
    "svs::_launch_layout": "composite",
    "svs::_certify": "composite",
    "svs::_certificate_checks": "composite",
    "svs::_corrupt_next": "composite",
    "svs::_int_workspace_batch": "composite",
    "svs::_gram32": "composite",
    "svs::_cpu_spread_max_side": "composite",
}
WHEEL_LIBS = ("libcusolver.so", "libcublas.so")

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg, flush=True)


def setup_py_library():
    spec = importlib.util.find_spec("svs_kernels")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("check_cuda_build: svs_kernels is not installed")
    libs = [p for d in spec.submodule_search_locations for p in glob.glob(os.path.join(d, "_C*.so"))]
    if len(libs) != 1:
        sys.exit(f"check_cuda_build: expected one svs_kernels/_C*.so, found {libs}")
    return libs[0]


def dynamic_symbols(path, which):
    out = subprocess.run(["nm", "-D", which, path], capture_output=True, text=True).stdout
    syms = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-2] not in ("w", "v"):  # weak undefined symbols may stay unresolved
            syms.add(parts[-1].split("@")[0])
    return syms


def load_scope(lib):
    """The libraries a symbol of `lib` can resolve to: its dependency closure (ldd, with torch's and
    the loaded CUDA libraries' directories on the path, as they are found at run time), libpython
    and the libraries torch loads with RTLD_GLOBAL (libtorch_global_deps and its dependencies)."""
    mapped = set(re.findall(r"(/\S+\.so[\d.]*)\s*$", open("/proc/self/maps").read(), re.M))
    dirs = [os.path.join(os.path.dirname(torch.__file__), "lib")] + sorted({os.path.dirname(p) for p in mapped})
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(dirs + [os.environ.get("LD_LIBRARY_PATH", "")]))
    scope, missing = {os.path.realpath(lib)}, []
    roots = [lib, os.path.join(dirs[0], "libtorch_global_deps.so")]
    roots += [p for p in mapped if "libpython" in os.path.basename(p)]
    for root in roots:
        out = subprocess.run(["ldd", root], capture_output=True, text=True, env=env).stdout
        for name, path in re.findall(r"^\s*(\S+) => (\S+)", out, re.M):
            if path == "not":
                missing.append(name)
            else:
                scope.add(os.path.realpath(path))
        scope.update(os.path.realpath(p) for p in re.findall(r"^\s*(/\S+) \(0x", out, re.M))  # ld-linux
        scope.add(os.path.realpath(root))
    return scope, missing


def check_symbols(lib):
    undefined = dynamic_symbols(lib, "--undefined-only")
    scope, missing = load_scope(lib)
    for name in missing:
        fail(f"{os.path.basename(lib)} needs {name}, which ldd cannot find")
    defined = set()
    for path in scope:
        defined |= dynamic_symbols(path, "--defined-only")
    unresolved = sorted(undefined - defined)
    print(f"symbols: {len(undefined)} undefined in {os.path.basename(lib)}, {len(unresolved)} not defined "
          f"in its load scope ({len(scope)} libraries)")
    if unresolved:
        names = subprocess.run(["c++filt"], input="\n".join(unresolved), capture_output=True, text=True).stdout
        for sym, name in zip(unresolved, names.splitlines()):
            fail(f"unresolved symbol {sym}  ({name})")


def check_load(lib, cmake):
    """Python loads an extension with RTLD_NOW (sys.getdlopenflags()): `import svs_kernels` fails on
    the first unresolved symbol, as a user would see it. The CMake library is dlopen-ed the same way."""
    try:
        if cmake:
            ctypes.CDLL(lib, mode=os.RTLD_NOW | os.RTLD_LOCAL)
            torch.ops.load_library(lib)
        else:
            import svs_kernels  # noqa: F401
        print("load: ok (%s)" % ("dlopen RTLD_NOW + torch.ops.load_library" if cmake else "import svs_kernels"))
        return True
    except Exception as e:
        fail(f"{'load' if cmake else 'import svs_kernels'}: {type(e).__name__}: {e}")
        return False


def check_registration(cmake):
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("svs::"))
    for op in sorted(set(ops) - set(OPERATORS)):
        fail(f"{op} is not in OPERATORS of {__file__}: say which CUDA kernel it should have")
    for op in sorted(set(OPERATORS) - set(ops)):
        fail(f"{op} is not registered")
    gpu = torch.cuda.is_available()
    for op in sorted(set(ops) & set(OPERATORS)):
        own = torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
        runs = torch._C._dispatch_has_computed_kernel_for_dispatch_key(op, "CUDA")
        want = OPERATORS[op]
        if want == "triton":
            if cmake or not gpu:
                want = "composite"
                why = "the CMake library has no Python" if cmake else "no GPU visible"
                print(f"  {op}: the Triton kernel is registered only with a GPU ({why}); expecting the composite")
            else:
                from svs_kernels import triton_ops as svs_triton

                print(f"  {op}: {svs_triton.registration_note()}")
                if not svs_triton.registered():
                    fail(f"{op}: the Triton kernel is not registered: {svs_triton.registration_note()}")
                want = "kernel"
        print(f"registration: {op}: CUDA kernel {own}, runs on CUDA {runs} (expected: {want})")
        if want == "kernel" and not own:
            fail(f"{op} has no CUDA kernel")
        if want == "composite" and (own or not runs):
            fail(f"{op}: expected only the composite kernel on CUDA (own CUDA kernel {own}, runs {runs})")


def check_runtime_libraries():
    """Each of WHEEL_LIBS is mapped once, from the directory torch's own libcudart came from."""
    maps = set(re.findall(r"(/\S+\.so[\d.]*)\s*$", open("/proc/self/maps").read(), re.M))
    cudart = [p for p in maps if os.path.basename(p).startswith("libcudart.so")]
    for lib in WHEEL_LIBS:
        copies = sorted({os.path.realpath(p) for p in maps if os.path.basename(p).startswith(lib + ".")})
        print(f"runtime: {lib}: {copies}")
        if len(copies) != 1:
            fail(f"{lib}: expected one mapped copy, found {copies}")
        elif cudart and os.path.dirname(copies[0]) != os.path.dirname(os.path.realpath(cudart[0])):
            fail(f"{lib} is mapped from {copies[0]}, not beside torch's libcudart ({cudart[0]})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lib", help="a CMake-built libsvs_ops.so (default: the installed svs_kernels._C)")
    args = p.parse_args()
    cmake = args.lib is not None
    lib = os.path.abspath(args.lib) if cmake else setup_py_library()
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), GPU visible: {torch.cuda.is_available()}")
    print(f"library: {lib}")
    if torch.version.cuda is None:
        sys.exit("check_cuda_build: torch is not a CUDA build")
    check_symbols(lib)
    if check_load(lib, cmake):
        check_registration(cmake)
        check_runtime_libraries()
    print(f"check_cuda_build: {'FAILED (%d)' % len(failures) if failures else 'OK'} ({lib})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
