"""The experiment's settings as one frozen dataclass, built from the declarations in core.settings.

Light on imports (no scikit-learn), so the CLI's `extract` starts fast; core.experiment re-exports it.
"""
from __future__ import annotations

import dataclasses

from core.backbones import is_fused
from core.data import Dataset, check_data_dir
from core.errors import ConfigError
from core.features import FeatureSet
from core.fusion import extract_any
from core.settings import check_settings, config_fields


def _validate(self) -> ExperimentConfig:
    """Check names and ranges (as declared in core.settings) before any expensive work starts."""
    if not self.class_weights:
        raise ConfigError("give at least one class-weight scheme, e.g. none")
    check_settings(self)
    if "finetune" in self.approaches and is_fused(self.backbone):
        raise ConfigError(f"fine-tune trains through one backbone, but {self.backbone!r} fuses several; "
                          "fine-tune with one of its parts, or use svm/head on the fused features")
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


def load_features(config: ExperimentConfig, dataset: Dataset, progress=None) -> FeatureSet:
    """The dataset's features under the config's backbone (fused `A+B` too), transform and runtime (cached)."""
    return extract_any(dataset, config.backbone, pool=config.pool, image_size=config.image_size,
                            cache_dir=config.cache_dir, device=config.device, runtime=config.runtime,
                            batch_size=config.batch_size, workers=config.workers, progress=progress)
