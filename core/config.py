"""The experiment's settings as one frozen dataclass, built from the declarations in core.settings.

Light on imports (no scikit-learn), so the CLI's `extract` starts fast; core.experiment re-exports it.
"""
from __future__ import annotations

import dataclasses

from core.data import Dataset, check_data_dir
from core.errors import ConfigError
from core.features import FeatureSet, extract_features
from core.settings import check_settings, config_fields

SPLIT_SETTINGS = ("test_size", "seed")  # what decides the train/test split of a single-folder dataset


def _validate(self) -> ExperimentConfig:
    """Check names and ranges (as declared in core.settings) before any expensive work starts."""
    if not self.class_weights:
        raise ConfigError("give at least one class-weight scheme, e.g. none")
    check_settings(self)
    check_data_dir(self.data)
    return self


def _to_dict(self) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _seed_list(self) -> tuple[int, ...]:
    """The seeds to train with: `seeds` when given, else `seed` alone."""
    return tuple(self.seeds) or (self.seed,)


ExperimentConfig = dataclasses.make_dataclass(
    "ExperimentConfig", config_fields(), frozen=True,
    namespace={"__doc__": "Every setting of an experiment (declared in core.settings); hashed into run records.",
               "__module__": __name__, "validate": _validate, "to_dict": _to_dict, "seed_list": _seed_list})


def run_split(record: dict | None = None) -> dict:
    """`{"test_size", "seed"}` of the split a stored run was tested on: its config's, else the defaults.

    >>> run_split({"config": {"seed": 3}})
    {'seed': 3, 'test_size': 0.2}
    """
    config = (record or {}).get("config", {})
    return {f.name: config.get(f.name, f.default) for f in dataclasses.fields(ExperimentConfig)
            if f.name in SPLIT_SETTINGS}


def load_features(config: ExperimentConfig, dataset: Dataset, progress=None) -> FeatureSet:
    """The dataset's features under the config's backbone, transform and runtime (cached)."""
    return extract_features(dataset, config.backbone, pool=config.pool, image_size=config.image_size,
                            cache_dir=config.cache_dir, device=config.device, runtime=config.runtime,
                            batch_size=config.batch_size, workers=config.workers, progress=progress)
