"""`make bench`'s fine-tune rows run end to end (tiny, so the bench cannot rot unseen)."""
import pytest

from bench.finetune import MODES, bench_finetune

pytestmark = pytest.mark.slow


def test_every_mode_the_cached_rows_and_the_anchor_print(capsys):
    figures = bench_finetune("efficientnet_lite0", 32, 32, batch_size=4, rounds=1, precision="fp32")
    out = capsys.readouterr().out
    assert set(figures) == {"anchor", *MODES, "none cached", "last cached", "2 cached"}
    assert all(rate > 0 for rate in figures.values())
    lines = out.splitlines()
    rows = [line.split()[0] for line in lines[lines.index(next(x for x in lines if x.startswith("--unfreeze"))) + 1:]]
    assert rows[:len(MODES) + 1] == [*MODES, "anchor"]
