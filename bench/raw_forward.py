"""`python -m bench.raw_forward NAME HEIGHT WIDTH BATCH REPEATS CACHE_DIR`: one JSON line, the img/s of the frozen
backbone's forward pass on preloaded random batches, in a fresh process like the extract command it is set against."""
from __future__ import annotations

import json
import sys

from bench.__main__ import CPU, images_per_second, random_batch
from core.backbones import get_entry
from core.features import autocast_dtype
from core.runtime import frozen_forward, resolve_runtime


def main() -> None:
    name, height, width, batch_size, repeats, cache_dir = sys.argv[1:7]
    forward = frozen_forward(get_entry(name), "avg", runtime=resolve_runtime("auto", CPU), device=CPU,
                             dtype=autocast_dtype(CPU), cache_dir=cache_dir)
    batch = random_batch(int(batch_size), int(height), int(width))
    print(json.dumps({"img_per_s": images_per_second(forward, batch, int(repeats))}))


if __name__ == "__main__":
    main()
