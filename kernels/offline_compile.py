"""A Triton kernel compiled for Hopper (sm_90) on a machine without a GPU, and what it takes of an SM.

Triton's wheel carries ptxas and cuobjdump, so a kernel compiles to a cubin for any NVIDIA target anywhere; what the
cubin asks for (registers a thread, bytes of local memory a thread, which are spills, and shared memory a program)
decides how many programs an SM holds, and a spill costs local-memory traffic. ``resources`` reads them, so a change
that makes a kernel spill fails a CPU test before any GPU time (tests/test_dft_transforms.py), and
``benchmarks/cpu_kernel_resources.py`` prints them for the paper decoder's shapes.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

import triton

HOPPER = (90, 32)  # compute capability 9.0, 32 threads a warp


def tools_found() -> bool:
    """Whether this Triton carries ptxas and cuobjdump for NVIDIA targets."""
    return all(os.path.exists(_tool(name)) for name in ("ptxas", "cuobjdump"))


def resources(kernel: str, constexprs: dict, num_warps: int, types: dict | None = None, num_stages: int = 1) -> dict:
    """{"registers", "local_bytes", "shared_bytes"} of ``kernel`` ("module:name") compiled for sm_90 with
    ``constexprs`` (name -> value); every other argument typed by ``types`` (name -> Triton type: "*bf16", "fp32",
    ...), else "*fp32" for names ending in ``_ptr`` and "i32" for the rest. It compiles in a fresh process: under
    ``TRITON_INTERPRET`` (the CPU tests) a module's kernels are the interpreter's, which do not compile."""
    job = json.dumps([kernel, constexprs, num_warps, types or {}, num_stages])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", f"import sys, json; from {__name__} import _compiled; "
                           "print(json.dumps(_compiled(*json.loads(sys.argv[1]))))", job],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"resources: {kernel} did not compile for sm_90: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _compiled(kernel: str, constexprs: dict, num_warps: int, types: dict, num_stages: int) -> dict:
    from triton.compiler import ASTSource

    module, name = kernel.split(":")
    fn = getattr(importlib.import_module(module), name)
    names = fn.arg_names
    signature = {n: "constexpr" if n in constexprs else types.get(n, "*fp32" if n.endswith("_ptr") else "i32")
                 for n in names}
    source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(n),): v for n, v in constexprs.items()})
    compiled = triton.compile(source, target=_target(), options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout
    found = dict(re.findall(r"\b(REG|LOCAL):(\d+)", usage))
    return {"registers": int(found["REG"]), "local_bytes": int(found["LOCAL"]),
            "shared_bytes": int(compiled.metadata.shared)}


def _target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", *HOPPER)


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
