"""One thread's limit on torch's CPU thread pools: OpenMP's, and those of the MKL torch bundles (via ctypes)."""
from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits


@functools.cache
def torch_mkl():
    """torch's bundled MKL when it exports per-thread limits (`MKL_Set_Num_Threads_Local`), else None."""
    if not torch.backends.mkl.is_available():
        return None
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    except OSError:
        return None
    return library if hasattr(library, "MKL_Set_Num_Threads_Local") else None


@contextlib.contextmanager
def one_torch_thread():
    """Torch ops of this thread run on one thread meanwhile; other threads and the process default are untouched.

    `torch.set_num_threads` would also change the default that every thread takes on its first torch
    use (a training job starting meanwhile would keep one thread). Per-thread limits instead: OpenMP's
    (`omp_set_num_threads`, via threadpoolctl) and MKL's (`MKL_Set_Num_Threads_Local`); OpenMP alone
    still let MKL's matrix products contend (refits of 2-12 s).
    """
    torch.get_num_threads()  # torch sets a thread's counts on its first use: let that happen before the limit
    mkl = torch_mkl()
    with threadpool_limits(limits=1, user_api="openmp"):
        previous = mkl.MKL_Set_Num_Threads_Local(1) if mkl else None
        try:
            yield
        finally:
            if mkl:
                mkl.MKL_Set_Num_Threads_Local(previous)
