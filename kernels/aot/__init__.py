"""Ahead-of-time compilation: the kernels cross-compiled for CUDA GPUs without one.

* ``archs``: the target generations and their per-SM limits;
* ``occupancy``: CUDA's occupancy arithmetic on a compiled kernel's resources;
* ``compiler``: a launch specialized as triton's JIT would, and compiled for ``sm_<arch>``;
* ``cubin``: what a compiled kernel uses, read off its cubin (cuobjdump);
* ``cache``: one compile per key across the processes that ask for it;
* ``problems``: each op's tensors on meta tensors, in each layout, and their launches;
* ``registry``: the ops and kernels ``mirasol profile``, the CI gate and
  bench/tune_configs.py enumerate;
* ``library`` and ``c_sources``: the C library's kernel variants, and its generated
  sources (``python -m mirasol.kernels.aot.c_sources``, run by CMakeLists.txt).

Compiling must happen in a process where ``TRITON_INTERPRET`` is unset.
"""
