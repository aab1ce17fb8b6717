"""Extraction split across 2 gloo processes under torchrun fills the same cache as one process.

The ranks talk over loopback only: gloo otherwise connects through the address the host name resolves to,
which may be the machine's network address (not for tests to use).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.data import build_demo_dataset, load_dataset
from core.features import extract_features

pytestmark = pytest.mark.slow
LOOPBACK_ONLY = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}


@pytest.fixture(autouse=True)
def ranks_on_loopback(monkeypatch):
    for name, value in LOOPBACK_ONLY.items():
        monkeypatch.setenv(name, value)


def test_torchrun_two_ranks_share_one_cache(tmp_path):
    data = build_demo_dataset(tmp_path / "demo")
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "-m", "core", "extract", "--data", str(data), "--image-size", "32",
         "--cache-dir", str(tmp_path / "ddp"), "--workers", "0"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0]["ranks"] == 2 and lines[0]["n"] == 603  # rank 0 speaks for both
    shards = sorted((tmp_path / "ddp" / "features" / lines[0]["key"]).glob("shard-*.npz"))
    assert len(shards) == 3  # 603 images in shards of SHARD_IMAGES=256: rank 0 wrote two, rank 1 one

    dataset = load_dataset(data)
    shared = extract_features(dataset, image_size=32, cache_dir=tmp_path / "ddp", workers=0)
    assert shared.cache_hit
    alone = extract_features(dataset, image_size=32, cache_dir=tmp_path / "single", workers=0)
    assert not alone.cache_hit and alone.key == shared.key
    np.testing.assert_allclose(shared.X_train, alone.X_train, rtol=0.05, atol=0.05)


def _finetune_rank(rank: int, data: str, out: str, unfreeze: str) -> None:
    import torch
    import torch.distributed as dist

    from core.finetune import FinetuneConfig, finetune

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/pg", rank=rank, world_size=2)
    try:
        result = finetune(load_dataset(data), FinetuneConfig(image_size=32, epochs=1, batch_size=16, workers=0,
                                                          cache_dir=out, unfreeze=unfreeze))
        assert result.activation_cache  # each rank trains on its own cached activations of the frozen part
        torch.save({**result.checkpoint["head"], **{f"body.{k}": v for k, v in result.checkpoint["body"].items()}},
                   f"{out}/head-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("unfreeze", ["none", "last"])
def test_finetune_under_two_gloo_ranks_keeps_heads_in_sync(tmp_path, unfreeze):
    """The cached-activation path under DistributedDataParallel: the head, and with `last` the trained block too,
    stay identical on both ranks."""
    import torch
    import torch.multiprocessing as mp

    data = build_demo_dataset(tmp_path / "demo")
    mp.spawn(_finetune_rank, args=(str(data), str(tmp_path), unfreeze), nprocs=2, join=True)
    heads = [torch.load(tmp_path / f"head-{rank}.pt") for rank in (0, 1)]
    # each rank saw different batches; all-reduced gradients keep the replicas' weights identical (BatchNorm's
    # running statistics are each rank's own after its last batch: DDP broadcasts rank 0's before each forward)
    weights = [name for name in heads[0] if "running_" not in name and "num_batches" not in name]
    assert len(weights) > 2 if unfreeze == "last" else weights == ["weight", "bias"]
    for name in weights:
        torch.testing.assert_close(heads[0][name], heads[1][name])
    assert heads[0]["weight"].abs().sum() > 0
