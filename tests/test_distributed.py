"""Extraction split across 2 gloo processes under torchrun fills the same cache as one process."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.data import build_demo_dataset, load_dataset
from core.features import extract_features

pytestmark = pytest.mark.slow


def test_torchrun_two_ranks_share_one_cache(tmp_path):
    data = build_demo_dataset(tmp_path / "demo")
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "-m", "core", "extract", "--data", str(data), "--image-size", "32",
         "--cache-dir", str(tmp_path / "ddp"), "--workers", "0"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2 and lines[0]["key"] == lines[1]["key"] and lines[0]["n"] == 603
    shards = sorted((tmp_path / "ddp" / "features" / lines[0]["key"]).glob("shard-*.npz"))
    assert len(shards) == 3  # 603 images in shards of SHARD_IMAGES=256: rank 0 wrote two, rank 1 one

    dataset = load_dataset(data)
    shared = extract_features(dataset, image_size=32, cache_dir=tmp_path / "ddp", workers=0)
    assert shared.cache_hit
    alone = extract_features(dataset, image_size=32, cache_dir=tmp_path / "single", workers=0)
    assert not alone.cache_hit and alone.key == shared.key
    np.testing.assert_allclose(shared.X_train, alone.X_train, rtol=0.05, atol=0.05)
