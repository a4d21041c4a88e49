"""Build of dnd_fast and its extension dnd_fast._C.

C++ (CPU) sources always; CUDA sources when the installed torch has CUDA and nvcc is found
(set DND_FAST_CUDA=0 to skip, =1 to require). The source lists live in csrc/sources.txt, which
CMakeLists.txt reads too, so the two builds cannot diverge.

torch must already be installed: build with `pip install --no-build-isolation -e .`
(see install.sh); an isolated build would fetch a second, multi-GB torch.
"""
import os
import re
import sys
from pathlib import Path

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.exit("dnd_fast: install torch first (pip install torch==2.13.0), then "
             "pip install --no-build-isolation -e .")

ROOT = Path(__file__).parent


def sources(kind):
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [f"csrc/{name}" for k, name in (ln.split() for ln in lines if ln.strip()) if k == kind]


def want_cuda():
    flag = os.environ.get("DND_FAST_CUDA")
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "1" and not available:
        sys.exit("dnd_fast: DND_FAST_CUDA=1 but torch has no CUDA or nvcc was not found")
    return available and flag != "0"


cxx = ["-O3", "-std=c++17"]
# The C++ runtime torch uses, shared: a compiler that links libstdc++ statically (the lent GPU
# machine's /opt/gcc g++ does) gives the extension a private copy of the exception runtime, and
# then any TORCH_CHECK failure in it (a bad argument) crashed the process instead of raising.
link = ["-l:libstdc++.so.6"] if sys.platform.startswith("linux") else []
if want_cuda():
    ext = cpp_extension.CUDAExtension(
        "dnd_fast._C",
        sources("cpu") + sources("cuda"),
        define_macros=[("DND_FAST_WITH_CUDA", "1")],
        extra_link_args=link,
        extra_compile_args={
            "cxx": cxx,
            # sm_90a machine code for Hopper, plus PTX that newer GPUs can compile at load.
            "nvcc": ["-O3", "-std=c++17", "-lineinfo",
                     "-gencode=arch=compute_90a,code=sm_90a",
                     "-gencode=arch=compute_80,code=compute_80"],
        },
    )
else:
    ext = cpp_extension.CppExtension(
        "dnd_fast._C", sources("cpu"), define_macros=[("DND_FAST_WITH_CUDA", "0")],
        extra_compile_args={"cxx": cxx + ["-fopenmp"]}, extra_link_args=["-fopenmp"] + link)

setup(
    name="dnd_fast",
    version=re.search(r'__version__ = "([^"]+)"', (ROOT / "dnd_fast" / "__init__.py").read_text())[1],
    description="Drag-and-Drop LLMs, fast: prompts in, a PEFT LoRA adapter out",
    python_requires=">=3.10",
    packages=["dnd_fast", "dnd_fast.kernels"],
    package_dir={"dnd_fast": "dnd_fast", "dnd_fast.kernels": "kernels"},
    package_data={"dnd_fast.kernels": ["tilings/*.json"]},  # the tiling choices searched on the lent GPUs
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    # Loose on purpose: the GPU machine keeps its own torch (2.11); the CPU pins are in
    # requirements.txt, which install.sh applies first.
    install_requires=["torch>=2.6", "transformers>=4.45", "peft>=0.13", "safetensors", "tqdm", "rich"],
    entry_points={"console_scripts": ["dnd-fast=dnd_fast.cli:main"]},
)
