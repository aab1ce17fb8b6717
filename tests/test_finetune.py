"""Fine-tuning through the real backbone, on a small slice of the demo data (core.finetune)."""
import copy
import re
import time

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

import core.finetune as finetune_module
from core.backbones import create_backbone
from core.data import Dataset
from core.errors import Cancelled, ConfigError
from core.features import ImageDataset, Preprocess
from core.finetune import (FinetuneConfig, compose_estimate, estimate_seconds, finetune, load_finetuned,
                           trainable_stages, validation_split)


@pytest.fixture(scope="module")
def small_demo(demo_dataset):
    """All ten demo classes, 6 training and 2 test images each (80 images): 12 are held out for validation."""
    def per_class(samples, n):
        return [s for c in range(len(demo_dataset.classes)) for s in [x for x in samples if x.label == c][:n]]

    return Dataset(demo_dataset.root, demo_dataset.classes, per_class(demo_dataset.train, 6),
                   per_class(demo_dataset.test, 2), fingerprint="small-demo")


MODEL_CACHE = None  # set per module below


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory):
    """Converted OpenVINO models go to a test folder, never the repository's cache/."""
    global MODEL_CACHE
    MODEL_CACHE = str(tmp_path_factory.mktemp("models"))


def config(**overrides):
    return FinetuneConfig(**{"image_size": 32, "epochs": 2, "batch_size": 16, "device": "cpu", "workers": 0,
                             "cache_dir": MODEL_CACHE, **overrides})


def test_validation_split_is_stratified_seeded_and_keeps_rare_classes_in_training():
    y = np.array([0] * 20 + [1] * 10 + [2] * 2)
    fit, val = validation_split(y, 0.2, seed=3)
    assert sorted(np.bincount(y[val], minlength=3)) == [0, 2, 4] and not set(fit) & set(val)
    assert set(np.flatnonzero(y == 2)) <= set(fit)  # 2 images: too few to hold one out
    assert np.array_equal(validation_split(y, 0.2, seed=3)[1], val)
    assert len(validation_split(np.array([0, 0, 1]), 0.2, seed=0)[1]) == 0  # too few: no validation


def test_validation_scores_take_their_epoch_from_the_other_half():
    """Epoch 1 is right on the first half only, epoch 2 on the second: each half gets the other's choice, so the
    cross-fitted figure is honest about choosing (here every image is wrong), where the best epoch on all
    images would claim half right."""
    y = np.array([0, 1] * 4)
    right, wrong = np.eye(2)[y], np.eye(2)[1 - y]
    halves = list(StratifiedKFold(2, shuffle=True, random_state=0).split(np.zeros(8), y))
    epoch_1 = np.where(np.isin(np.arange(8), halves[0][1])[:, None], right, wrong)  # right on half 0 only
    epoch_2 = np.where(np.isin(np.arange(8), halves[1][1])[:, None], right, wrong)
    crossfit = finetune_module.crossfit_epochs([epoch_1, epoch_2], y, 2, seed=0)
    assert (crossfit.argmax(1) != y).all()
    assert np.array_equal(finetune_module.crossfit_epochs([epoch_1], y, 2, seed=0), epoch_1)


def test_unfreeze_names_a_number_of_stages_and_a_bad_one_says_the_range():
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    n = len(backbone.stages)
    assert [trainable_stages(mode, backbone) for mode in ("none", "last", "3", "all")] == [0, 1, 3, n]
    with pytest.raises(ConfigError, match=f"has {n} blocks.*from 1 to {n}"):
        trainable_stages(str(n + 1), backbone)


@pytest.fixture
def captured(monkeypatch):
    """Run finetune with a spy on create_backbone: keeps the backbone object and its starting state."""
    seen = {}
    real = finetune_module.create_backbone

    def spy(*args, **kwargs):
        backbone = real(*args, **kwargs)
        seen["backbone"] = backbone
        seen["before"] = copy.deepcopy(backbone.features.state_dict())
        return backbone

    monkeypatch.setattr(finetune_module, "create_backbone", spy)
    return seen


def stage_tensor_names(backbone, stages) -> set:
    """Names in `features.state_dict()` of the parameters and buffers of `stages`."""
    ids = {id(t) for stage in stages for t in [*stage.parameters(), *stage.buffers()]}
    return {name for name, t in backbone.features.state_dict(keep_vars=True).items() if id(t) in ids}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "last", "2", "all"])
def test_each_unfreeze_mode_trains_exactly_the_blocks_it_names(small_demo, captured, mode):
    result = finetune(small_demo, config(epochs=1, unfreeze=mode, lr=1e-2))
    backbone, before = captured["backbone"], captured["before"]
    n = result.trainable_stages
    trained = backbone.stages[len(backbone.stages) - n:]
    named = stage_tensor_names(backbone, trained)
    after = backbone.features.state_dict()
    frozen = [name for name in after if name not in named]
    assert frozen and all(torch.equal(after[name], before[name]) for name in frozen)  # bit for bit
    for stage in trained:  # every named block learned something
        assert any(not torch.equal(after[name], before[name]) for name in stage_tensor_names(backbone, [stage]))
    assert set(result.checkpoint["body"]) == named
    assert result.activation_cache == (mode != "all")  # the frozen part is computed once when there is one


def test_kept_epoch_is_the_best_validation_epoch_and_the_test_set_is_scored_once_with_it(small_demo, monkeypatch):
    """Validation scripted to peak at epoch 2 of 3 (the last epoch is worse); every test image decoded once."""
    scripted = iter([0.3, 0.7, 0.4])
    real_scored = finetune_module._scored

    def scored(split, *args):
        row = real_scored(split, *args)
        return {**row, "val_macro_f1": next(scripted)} if split == "val" else row

    heads, real_train = [], finetune_module.train_one_epoch

    def train(model, *args):
        out = real_train(model, *args)
        heads.append(copy.deepcopy(model[-1].state_dict()))  # the head after each epoch
        return out

    decoded = []

    class CountingImages(ImageDataset):
        def __getitem__(self, index):
            decoded.append(self.samples[index].path)
            return super().__getitem__(index)

    monkeypatch.setattr(finetune_module, "_scored", scored)
    monkeypatch.setattr(finetune_module, "train_one_epoch", train)
    monkeypatch.setattr(finetune_module, "ImageDataset", CountingImages)
    result = finetune(small_demo, config(epochs=3, unfreeze="last", precision="fp32"))
    assert [row["val_macro_f1"] for row in result.history] == [0.3, 0.7, 0.4]
    assert result.chosen_epoch == 2 == result.checkpoint["epoch"]
    for name, tensor in heads[1].items():
        assert torch.equal(result.checkpoint["head"][name], tensor)
    assert not torch.equal(heads[2]["weight"], heads[1]["weight"])  # the last epoch's weights were not kept
    test_paths = [s.path for s in small_demo.test]
    assert sorted(p for p in decoded if p in set(test_paths)) == sorted(test_paths)  # once each
    assert all("test_acc" not in row for row in result.history)  # no test curve by default
    assert result.val_scores.shape == (len(result.val_rows), 10) and len(result.val_rows) == 12


def test_cached_activations_give_the_full_forward_logits(small_demo):
    """The run's test logits (frozen part through OpenVINO once, the last block and head in torch) equal the
    saved network's plain torch forward of the same weights in fp32. OpenVINO's fp32 kernels sum in another
    order (features agree within ~1e-6 relative); after the last block and head that stays below 1e-4 of the
    largest logit, while a wrong block, flip or row would move logits by whole units."""
    result = finetune(small_demo, config(epochs=1, unfreeze="last", precision="fp32"))
    assert result.activation_cache
    preprocess = Preprocess.for_backbone(create_backbone("efficientnet_lite0").entry, 32)
    images = ImageDataset(small_demo.test, preprocess)
    batch = torch.stack([images[i][0] for i in range(len(small_demo.test))])
    with torch.no_grad():
        full = load_finetuned(result.checkpoint)(batch).numpy()
    scale = np.abs(full).max()
    np.testing.assert_allclose(result.test_scores, full, atol=1e-4 * scale, rtol=0)


def test_mirrored_images_are_cached_as_the_runtime_sees_them_flipped(small_demo):
    """The cache's flipped entry of an image is the frozen part's output of that image mirrored."""
    backbone = create_backbone("efficientnet_lite0")
    prefix, _ = backbone.split(1)
    cfg = config(precision="fp32")
    preprocess = Preprocess.for_backbone(backbone.entry, 32)
    inputs = finetune_module._Inputs(backbone, prefix, 1, preprocess, cfg, torch.device("cpu"), None)
    inputs.cache_train(small_demo.train, np.arange(4), np.arange(4, 6), True, finetune_module._Ticker(None, 1, 1, 0))
    image = ImageDataset(small_demo.train, preprocess)[2][0][None]
    with torch.no_grad():
        plain, mirrored = prefix(image)[0], prefix(image.flip(-1))[0]
    scale = plain.abs().max().item()
    torch.testing.assert_close(inputs.cache[(2, False)], plain, atol=1e-4 * scale, rtol=0)
    torch.testing.assert_close(inputs.cache[(2, True)], mirrored, atol=1e-4 * scale, rtol=0)
    assert (5, False) in inputs.cache and (5, True) not in inputs.cache  # validation images are never flipped


def test_test_curve_is_a_labelled_held_out_check_outside_the_fit_time(small_demo):
    result = finetune(small_demo, config(epochs=2, test_curve=True))
    assert all({"test_acc", "test_macro_f1", "val_macro_f1"} <= set(row) for row in result.history)
    assert result.learning_curve_seconds > 0


def test_progress_notes_epoch_validation_score_and_time_left(small_demo):
    notes = []
    finetune(small_demo, config(epochs=2), progress=lambda stage, done, total, note="": notes.append(note))
    assert any(note.startswith("epoch 2/2 · validation macro-F1 ") and "s left" in note for note in notes)


def test_checkpoint_is_plain_tensors_loadable_with_weights_only(small_demo, tmp_path):
    result = finetune(small_demo, config(epochs=1, unfreeze="last"))
    torch.save(result.checkpoint, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert loaded["config"]["unfreeze"] == "last" and loaded["trainable_stages"] == 1
    net = load_finetuned(loaded)
    assert net(torch.zeros(1, 3, 32, 96, dtype=torch.uint8)).shape == (1, 10)


def _experiment_config(small_demo, tmp_path, epochs=3):
    from core.experiment import ExperimentConfig

    return ExperimentConfig(data=small_demo.root, approaches=("finetune",), remedies=("none",), epochs=epochs,
                            image_size=32, batch_size=16, device="cpu", workers=0, cache_dir=str(tmp_path / "c"))


def test_a_finetune_cancelled_before_its_first_validated_epoch_leaves_no_partial_run(small_demo, tmp_path,
                                                                                      monkeypatch):
    from core.experiment import run_experiment
    from core.store import RunStore

    monkeypatch.setattr("core.experiment.load_data", lambda config: small_demo)

    def cancel_in_epoch_1(stage, done, total, note=""):
        if stage == finetune_module._Ticker.STAGE and done > 0 and not note:  # caching or training epoch 1
            raise Cancelled("cancelled by the test")

    with pytest.raises(Cancelled):
        run_experiment(_experiment_config(small_demo, tmp_path), progress=cancel_in_epoch_1)
    runs = tmp_path / "c" / "runs"
    assert RunStore(runs).list_runs() == [] and not any(runs.rglob("*.pt")) and not any(runs.rglob("*.joblib"))


def test_cancelling_a_finetune_job_after_a_validated_epoch_keeps_its_best_epoch_as_a_run(small_demo, tmp_path,
                                                                                          monkeypatch):
    """As on the Train page: the job is cancelled while epoch 2 of 5 would start; epoch 1's weights are saved as a
    complete run marked stopped early, and the job ends cancelled (nothing after it runs)."""
    from core.experiment import run_experiment
    from core.jobs import JobManager
    from core.store import RunStore

    monkeypatch.setattr("core.experiment.load_data", lambda config: small_demo)
    manager, notes = JobManager(), []

    def train(report):
        def progress(stage, done, total, note=""):
            notes.append(note)
            if note.startswith("epoch 1/"):
                manager.cancel(job.id)  # the user's click
            report(stage, done, total, note)
        return run_experiment(_experiment_config(small_demo, tmp_path, epochs=5), progress=progress)

    try:
        job = manager.submit("train", train)
        deadline = time.monotonic() + 300
        while job.status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        manager.shutdown()
    assert job.status == "cancelled"
    assert not any(note.startswith("epoch 2/") for note in notes)
    store = RunStore(tmp_path / "c" / "runs")
    (record,) = store.list_runs()
    assert record.stopped_early is True and record.chosen_epoch == 1 and len(record.history) == 1
    assert record.validation is not None and 0 <= record.macro_f1 <= 1
    assert store.load_model(record.run_id).kind == "finetune"


def test_ctrl_c_during_a_cli_finetune_keeps_the_best_epoch_so_far_as_a_run(small_demo, tmp_path, monkeypatch,
                                                                           capsys):
    """`python -m core experiment --approaches finetune`, Ctrl-C once epoch 1 is validated: exit 130, one stderr line
    naming the kept run, and that run in the store (stopped early, epoch 1)."""
    from core.cli import TqdmProgress, main
    from core.store import RunStore

    for where in ("core.experiment.load_data", "core.config.load_data"):
        monkeypatch.setattr(where, lambda config: small_demo)
    draw = TqdmProgress.__call__

    def ctrl_c_after_epoch_1(self, stage, done, total, note=""):
        draw(self, stage, done, total, note)
        if note.startswith("epoch 1/"):
            raise KeyboardInterrupt

    monkeypatch.setattr(TqdmProgress, "__call__", ctrl_c_after_epoch_1)
    cache = tmp_path / "c"
    code = main(["experiment", "--data", small_demo.root, "--approaches", "finetune", "--remedy", "none",
                 "--epochs", "4", "--image-size", "32", "--batch-size", "16", "--workers", "0", "--device", "cpu",
                 "--cache-dir", str(cache), "--out", str(tmp_path / "r.json")])
    (record,) = RunStore(cache / "runs").list_runs()
    assert code == 130 and not (tmp_path / "r.json").exists()
    assert f"best validation epoch (1) is kept as run {record.run_id}" in capsys.readouterr().err
    assert record.stopped_early is True and record.chosen_epoch == 1


MEASURED = {"setup": 5.0, "shape_setup": 2.0, "cache_image": 0.1, "train_image": 1.0, "val_image": 0.5,
            "test_image": 0.25}
COUNTS = {"fit": 100, "val": 20, "test": 40, "cached": True, "new_shapes": 1}


def test_estimate_counts_set_up_cache_pass_training_and_validation_every_epoch_and_the_test_pass():
    parts = compose_estimate(MEASURED, COUNTS, config(epochs=3, hflip=True))
    assert parts["setup_seconds"] == 5.0 + 2.0  # once, plus the first step at the batch shape the probe did not run
    assert parts["cache_seconds"] == pytest.approx(0.1 * (2 * 100 + 20))  # fit images both ways, validation once
    assert parts["train_seconds"] == 3 * 100 * 1.0 and parts["validation_seconds"] == 3 * 20 * 0.5
    assert parts["test_seconds"] == 40 * 0.25  # once, with the kept weights
    assert parts["seconds"] == pytest.approx(sum(v for k, v in parts.items() if k not in ("seconds", "epoch_seconds")))
    assert parts["epoch_seconds"] == 100 + 10
    assert compose_estimate(MEASURED, COUNTS, config(epochs=3, hflip=False))["cache_seconds"] == pytest.approx(12.0)
    assert compose_estimate(MEASURED, {**COUNTS, "cached": False}, config(epochs=3))["cache_seconds"] == 0
    assert compose_estimate(MEASURED, COUNTS, config(epochs=3, test_curve=True))["test_seconds"] == 4 * 40 * 0.25


def test_the_estimate_line_says_what_it_is_made_of(small_demo, tmp_path, monkeypatch):
    from core.experiment import estimate_experiment

    monkeypatch.setattr("core.experiment.load_data", lambda config: small_demo)
    text = estimate_experiment(_experiment_config(small_demo, tmp_path))["text"]
    assert re.search(r"about \d+ s per run, \d+ s for 1 run\(s\) on this machine's CPU \(set-up \d+ s, cache pass "
                     r"\d+ s, \d+ s per epoch with validation, test \d+ s; from a \d+ s probe; frozen part cached once",
                     text), text


@pytest.mark.parametrize("mode, cached", [("last", True), ("all", False)])
def test_estimate_probes_every_part_through_the_fine_tunes_own_code(small_demo, monkeypatch, mode, cached):
    seen = {}
    monkeypatch.setattr(finetune_module, "compose_estimate",
                        lambda measured, counts, cfg: seen.update(measured=measured, counts=counts) or {})
    out = estimate_seconds(small_demo, config(unfreeze=mode, batch_size=20))
    counts, measured = seen["counts"], seen["measured"]
    assert (counts["fit"], counts["val"], counts["test"]) == (48, 12, 20) and counts["cached"] is cached
    assert out["activation_cache"] is cached and out["probe_seconds"] > 0
    positive = {"setup", "train_image", "val_image", "test_image"} | ({"cache_image"} if cached else set())
    assert all(measured[name] > 0 for name in positive), measured
    assert counts["new_shapes"] == 1  # 48 fit images in batches of 20: the probe ran 20, the run also has 8


def test_zero_epochs_is_a_config_error(small_demo):
    with pytest.raises(ConfigError, match="epochs"):
        finetune(small_demo, config(epochs=0))


def test_cuda_without_gpu_is_a_config_error(small_demo, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="cuda"):
        finetune(small_demo, config(device="cuda"))


def test_finetune_loss_weights_each_batch_by_its_classes(small_demo, monkeypatch):
    """Every training batch (one image size, often one class) is scored by the weighted sum / batch size."""
    seen = []
    real = finetune_module.weighted_cross_entropy

    def spy(logits, labels, weight=None):
        loss = real(logits, labels, weight)
        per_image = torch.nn.functional.cross_entropy(logits.detach(), labels, reduction="none")
        seen.append((loss.item(), (per_image * weight[labels]).mean().item()))
        return loss

    monkeypatch.setattr(finetune_module, "weighted_cross_entropy", spy)
    finetune(small_demo, config(epochs=1, batch_size=4), class_weight=np.linspace(1, 20, 10))
    assert seen and all(loss == pytest.approx(expected, rel=1e-4) for loss, expected in seen)


def test_resample_draws_class_balanced_batches(small_demo, monkeypatch):
    labels_seen = []
    real = finetune_module.train_one_epoch

    def spy(model, batches, *args):
        def recorded():
            for inputs, labels in batches:
                labels_seen.extend(labels.tolist())
                yield inputs, labels
        return real(model, recorded(), *args)

    imbalanced = Dataset(small_demo.root, small_demo.classes,
                         [s for s in small_demo.train if s.label < 2][:12] + [s for s in small_demo.train
                                                                             if s.label == 2][:3],
                         small_demo.test, fingerprint="imbalanced")
    monkeypatch.setattr(finetune_module, "train_one_epoch", spy)
    finetune(imbalanced, config(epochs=20, batch_size=8, hflip=False), resample=True)
    share = np.bincount(labels_seen, minlength=3)[:3] / len(labels_seen)
    assert share[2] > 0.2  # the rare class (3 of 15 training images, 2 left after validation) is drawn often


def test_finetune_seeds_its_head_without_reseeding_the_global_rng(small_demo, monkeypatch):
    """Another job's global torch RNG must not be reset; the head's init still follows `seed` alone."""
    monkeypatch.setattr(finetune_module, "train_one_epoch", lambda *a: (0.0, 0.0))
    heads = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        with monkeypatch.context() as patched:
            patched.setattr(torch, "manual_seed", lambda *_: pytest.fail("finetune reseeded the global RNG"))
            heads.append(finetune(small_demo, config(epochs=1, seed=4)).checkpoint["head"]["weight"])
    assert torch.equal(*heads)


def test_ddp_rank_uses_the_gpu_of_its_local_rank(monkeypatch):
    """Under torchrun, rank 1 must drive cuda:1 (the old code put every rank on GPU 0)."""
    wrapped = {}
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(finetune_module, "rank_world", lambda: (1, 2))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: wrapped.setdefault("set_device", device))
    monkeypatch.setattr(finetune_module, "DistributedDataParallel",
                        lambda model, device_ids: wrapped.setdefault("device_ids", device_ids))
    device = finetune_module._rank_device(torch.device("cuda"))
    finetune_module._distributed(torch.nn.Linear(2, 2), torch.device("cuda"))
    assert device == torch.device("cuda", 1) == wrapped["set_device"]
    assert wrapped["device_ids"] == [1]
    assert finetune_module._rank_device(torch.device("cpu")) == torch.device("cpu")
