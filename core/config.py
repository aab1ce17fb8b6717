"""The experiment's settings as one frozen dataclass, built from the declarations in core.settings.

Light on imports (no scikit-learn), so the CLI's `extract` starts fast; core.experiment re-exports it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from core.backbones import is_fused
from core.data import Dataset, check_data_dir, check_separate_test, load_dataset
from core.errors import ClassWeightError, ConfigError
from core.features import FeatureSet
from core.fusion import extract_any
from core.records import RunRecord
from core.remedies import check_remedies
from core.storage import check_output_dir
from core.settings import check_settings, config_fields
from core.weights import SCHEMES, check_weight, read_custom_weights

SPLIT_SETTINGS = ("test_size", "seed")  # what decides the train/test split of a single-folder dataset


def _validate(self) -> ExperimentConfig:
    """Check names, ranges (as declared in core.settings), paths and weight tables before any work starts."""
    check_settings(self)
    if "finetune" in self.approaches and is_fused(self.backbone):
        raise ConfigError(f"fine-tune trains through one backbone, but {self.backbone!r} fuses several; "
                          "fine-tune with one of its parts, or use svm/head on the fused features")
    check_data_dir(self.data)
    _check_label_paths(self)
    check_output_dir(self.cache_dir, "cache folder (--cache-dir)")
    for remedy in check_remedies(self.remedies):
        check_class_weight_spec(remedy.weights)
    return self


def _check_label_paths(self) -> None:
    """The label files are files, the test folder a folder, and test labels come with their folder."""
    if self.test_data is not None:
        check_data_dir(self.test_data, "test folder (--test-data)")
    elif self.test_labels is not None:
        raise ConfigError("a test label file (--test-labels) needs the test folder it describes (--test-data)")
    for flag, path in (("--labels", self.labels), ("--test-labels", self.test_labels)):
        if path is not None and not Path(path).expanduser().is_file():
            state = ("is a folder" if Path(path).expanduser().is_dir() else
                     "is not a regular file (a pipe or device)" if Path(path).expanduser().exists() else "does not exist")
            raise ConfigError(f"label file {path!r} ({flag}) {state}; give a text file of file,label lines")
    if self.test_data is not None:
        check_separate_test(self.data, self.labels, self.test_data, self.test_labels)


def check_class_weight_spec(spec) -> None:
    """A scheme name, or a `{class: weight}` table (a dict or a JSON file) whose weights are all valid."""
    if isinstance(spec, dict) or str(spec).endswith(".json"):
        table = spec if isinstance(spec, dict) else read_custom_weights(spec)
        for name, value in table.items():  # class names are checked against the dataset once it is scanned
            check_weight(name, value)
    elif spec not in SCHEMES:
        raise ClassWeightError(f"unknown class-weight scheme {spec!r}; choose {', '.join(SCHEMES)} "
                               "or a path to a JSON file {class: weight}")


def _to_dict(self) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _seed_list(self) -> tuple[int, ...]:
    """The seeds to train with: `seeds` when given, else `seed` alone."""
    return tuple(self.seeds) or (self.seed,)


ExperimentConfig = dataclasses.make_dataclass(
    "ExperimentConfig", config_fields(), frozen=True,
    namespace={"__doc__": "Every setting of an experiment (declared in core.settings); hashed into run records.",
               "__module__": __name__, "validate": _validate, "to_dict": _to_dict, "seed_list": _seed_list})


def load_data(config: ExperimentConfig) -> Dataset:
    """The config's dataset: its folder, label files, test folder and split."""
    return load_dataset(config.data, labels=config.labels, test_data=config.test_data, test_labels=config.test_labels,
                        test_size=config.test_size, seed=config.seed, cache_dir=config.cache_dir)


def run_split(record: RunRecord | None = None) -> dict:
    """`{"test_size", "seed"}` of the split a stored run was tested on: its config's, else the defaults.

    >>> run_split()
    {'seed': 0, 'test_size': 0.2}
    """
    return {f.name: record.setting(f.name, f.default) if record else f.default
            for f in dataclasses.fields(ExperimentConfig) if f.name in SPLIT_SETTINGS}


def load_features(config: ExperimentConfig, dataset: Dataset, progress=None) -> FeatureSet:
    """The dataset's features under the config's backbone (fused `A+B` too), transform, precision and runtime
    (cached)."""
    return extract_any(dataset, config.backbone, pool=config.pool, image_size=config.image_size,
                       cache_dir=config.cache_dir, device=config.device, precision=config.precision,
                       runtime=config.runtime, batch_size=config.batch_size, workers=config.workers,
                       progress=progress)
