"""A per-thread limit on torch's CPU threads (core.torch_threads): this thread only, and only meanwhile."""
import threading

import torch

from core.torch_threads import one_torch_thread, torch_mkl


def test_one_torch_thread_limits_this_thread_only_and_only_meanwhile():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    mkl, seen = torch_mkl(), {}
    try:
        with one_torch_thread():
            seen["inside"] = torch.get_num_threads()
            seen["inside mkl"] = mkl.MKL_Get_Max_Threads() if mkl else 1
            other = threading.Thread(target=lambda: seen.setdefault("other thread", torch.get_num_threads()))
            other.start()
            other.join()
            seen["product"] = torch.ones(64, 64) @ torch.ones(64, 64)  # still computes under the limit
        seen["after"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert (seen["inside"], seen["inside mkl"], seen["other thread"], seen["after"]) == (1, 1, 2, 2)
    assert float(seen["product"][0, 0]) == 64.0
