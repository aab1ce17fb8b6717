"""Every experiment setting declared once: name, type, default, allowed values and help.

`ExperimentConfig` (core.experiment), `FinetuneConfig` (core.finetune), the CLI (core.cli) and the
Train page are all built from `SETTINGS`; adding a setting is one `Setting(...)` line here.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from typing import Callable

from core.approach_names import APPROACH_NAMES
from core.backbones import FUSION_SEPARATOR, POOLS, backbone_parts, list_backbones
from core.errors import ConfigError
from core.paths import CACHE_DIR_ENV, DEFAULT_CACHE_DIR
from core.remedies import PARTS, check_remedies
from core.runtime import RUNTIMES
from core.weights import SCHEMES

APPROACHES = APPROACH_NAMES
SVM_KERNELS = ("rbf", "linear", "poly", "sigmoid")
PRECISIONS = ("auto", "fp32")
REQUIRED = dataclasses.MISSING
OFFLINE_LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
FUSED_CHOICES = tuple(FUSION_SEPARATOR.join(pair) for pair in itertools.combinations(OFFLINE_LITE, 2))
UNFREEZE_CHOICES = ("none", "last", "2", "3", "all")  # offered on the Train page; any N >= 1 is accepted


def check_unfreeze(value) -> None:
    """`none`, `last`, `all` or a whole number of blocks N >= 1 (the backbone's block count is checked later)."""
    if value in ("none", "last", "all") or (str(value).isdigit() and int(value) >= 1):
        return
    raise ConfigError(f"unknown unfreeze {value!r}; choose none, last, all or a number of last blocks, e.g. 2")


@dataclass(frozen=True)
class Setting:
    """One setting. `many`: a tuple of values (a comma list on the CLI); `optional`: None is allowed."""

    name: str
    type: type
    default: object
    help: str
    label: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    many: bool = False
    optional: bool = False
    flag: str = ""  # CLI flag when not --<name-with-dashes>
    aliases: tuple[str, ...] = ()  # more CLI flags for the same setting (kept for old scripts)
    check_item: Callable[[object], object] | None = None  # raises on a bad value; then `choices` only suggest
    commands: tuple[str, ...] = ("experiment", "extract")  # CLI commands that take it; () = none
    env: str = ""  # environment variable that, when set, replaces the default on the CLI
    on_page: bool = True

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def cli_default(self, environ=os.environ):
        """The default on the command line: the value of env `env` when that is set, else `default`."""
        return (environ.get(self.env) if self.env else None) or self.default

    def check(self, value) -> None:
        """Raise ConfigError naming the setting, the value seen and what is allowed."""
        if value is None and self.optional:
            return
        for item in value if self.many else (value,):
            if self.check_item is not None:
                self.check_item(item)
            elif self.choices is not None and item not in self.choices:
                raise ConfigError(f"unknown {self.name} {item!r}; choose one of: {', '.join(map(str, self.choices))}")
            if self.type in (int, float) and not _in_range(item, self.low, self.high):
                raise ConfigError(f"{self.name} must be a number between {self.low:g} and {self.high:g}, got {item!r}")
        if self.many and not value and self.default:
            options = ", ".join(map(str, self.choices or ()))
            raise ConfigError(f"{self.name}: none given; choose at least one of {options}")


def _in_range(value, low, high) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def parse_list(text: str, kind: type = str) -> tuple:
    """A comma list ('0,1,2') as a tuple of `kind`; a clear error for an item that is not one."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    try:
        return tuple(kind(item) for item in items)
    except ValueError:
        raise ConfigError(f"{text!r} is not a comma list of {kind.__name__} values, e.g. 0,1,2") from None


S = Setting
SETTINGS: tuple[Setting, ...] = (
    S("data", str, REQUIRED, "dataset folder: DIR/train/<class>, DIR/test/<class> or DIR/<class>", on_page=False),
    S("labels", str, None, "label file naming the images of --data: file,label lines (CSV, TSV or ';'; header "
      "optional; paths relative to DIR)", "Label file", optional=True, on_page=False),
    S("test_data", str, None, "separate test folder: TEST/<class>/*, or any images a --test-labels file names",
      "Test folder", optional=True, on_page=False),
    S("test_labels", str, None, "label file naming the images of --test-data (same formats as --labels)",
      "Test label file", optional=True, on_page=False),
    S("backbone", str, "efficientnet_lite0", "pretrained CNN that turns images into features; A+B concatenates "
      "the features of several (each standardised on the training images)", "Backbone",
      choices=tuple(list_backbones()) + FUSED_CHOICES, check_item=backbone_parts),
    S("pool", str, "avg", "adaptive global pooling of the last feature map", "Pooling", choices=POOLS),
    S("approaches", str, ("svm", "head"), "svm, head and logreg reuse cached features; finetune trains through "
      "the backbone", "Approaches", choices=APPROACHES, many=True, commands=("experiment",)),
    S("remedies", str, ("none", "balanced"), "comma list of imbalance remedies, each a weight scheme "
      f"({', '.join(SCHEMES)} or a custom JSON file {{class: weight}}) and/or {', '.join(PARTS)} joined by '+', "
      "e.g. balanced+offsets", many=True, flag="--remedy", aliases=("--class-weight",),
      commands=("experiment",), on_page=False),
    S("epochs", int, 20, "passes over the training set (head and finetune)", "Epochs", 1, 1000,
      commands=("experiment",)),
    S("lr", float, 3e-3, "learning rate of the head (a fine-tuned last block learns at lr / 10)", "Learning rate",
      1e-6, 1.0, commands=("experiment",)),
    S("batch_size", int, 32, "images per batch (extraction, head and fine-tune)", "Batch size", 1, 4096),
    S("seed", int, 0, "seed of the split (single-folder datasets), initialisation and shuffling", "Seed", 0, 2**31 - 1,
      on_page=False),  # the page's one seed field is `seeds`
    S("seeds", int, (), "seed of the split (single-folder datasets), initialisation and shuffling; several, e.g. "
      "0,1,2, repeat every run once per seed (overrides --seed; empty: --seed, 0)", "Seeds (empty = 0; 0,1,2 "
      "repeats each run)", 0, 2**31 - 1, many=True, commands=("experiment",)),
    S("device", str, "auto", "where to run the CNN", "Device", choices=("auto", "cpu", "cuda")),
    S("precision", str, "auto", "precision of the backbone's features and of fine-tune autocast: auto = bf16 on CPUs "
      "with native bf16, fp16 on CUDA, else fp32; fp32 gives the same numbers on every machine", "Feature precision",
      choices=PRECISIONS),
    S("runtime", str, "auto", "frozen-backbone inference: auto = OpenVINO on CPU when installed, torch on CUDA",
      "Runtime", choices=RUNTIMES),
    S("cache_dir", str, DEFAULT_CACHE_DIR, "folder of the feature cache and the run store", env=CACHE_DIR_ENV,
      commands=("experiment", "extract", "owner-token", "predict", "export"), on_page=False),
    S("test_size", float, 0.2, "test fraction when DIR has no train/test split", "Test size", 0.05, 0.9),
    S("image_size", int, None, "short side in pixels (default: the backbone's own: 224, Lite1 240, Lite2 260)", "Image size (short side, px)",
      16, 2048, optional=True),
    S("unfreeze", str, "none", "how much of the backbone fine-tune trains (at lr / 10): none = a new head on the "
      "frozen body, last = the last block too, N = the last N blocks, all = the whole network", "Unfreeze",
      choices=UNFREEZE_CHOICES, check_item=check_unfreeze, commands=("experiment",)),
    S("test_curve", bool, False, "fine-tune also scores the test set every epoch: a held-out check drawn beside "
      "the validation curve, never used to choose (costs a test pass per epoch)", "Test curve (held-out check)",
      commands=("experiment",)),
    S("hflip", bool, True, "fine-tune augments with horizontal flips", "Flip augmentation", commands=("experiment",)),
    S("tau", float, 0.0, "a fixed post-hoc logit adjustment of head, logreg and fine-tune scores at prediction, "
      "nothing retrained (0 = off; the remedy tau, or --tune, chooses it on training folds instead)",
      "Prediction-time tau (fixed)", 0.0, 5.0, commands=("experiment",)),
    S("la_tau", float, 1.0, "strength of the logit-adjusted training loss, used only by the remedy la-loss (0 = plain "
      "cross-entropy)", "Training-loss tau (remedy la-loss)", 0.0, 5.0, commands=("experiment",)),
    S("beta", float, 0.999, "beta of the effective-number class weights", "Effective-number beta", 0.5, 0.99999,
      commands=("experiment",)),
    S("svm_kernel", str, "rbf", "kernel of the SVM", "SVM kernel", choices=SVM_KERNELS, commands=("experiment",)),
    S("svm_c", float, 1.0, "SVM regularisation C (larger = fits the training set harder)", "SVM C", 1e-4, 1e4,
      commands=("experiment",)),
    S("logreg_c", float, None, "logistic regression's C (default: chosen by cross-validation from 0.01, 0.1, 1)",
      "Logistic regression C", 1e-4, 1e4, optional=True, commands=("experiment",), on_page=False),
    S("tune", bool, False, "pick tau (head, finetune) and the SVM's C by stratified cross-validation on the "
      "training set; the test set is scored once", "Tune on validation", commands=("experiment",)),
    S("workers", int, None, "image decoding processes (default: auto)", "Decoding workers", 0, 64, optional=True,
      on_page=False),
)
BY_NAME = {s.name: s for s in SETTINGS}
DATASET_SETTINGS = ("labels", "test_data", "test_labels")  # beside `data`, in the dashboard's dataset picker


def config_fields(names=None) -> list[tuple]:
    """`dataclasses.make_dataclass` fields for the named settings (all by default), required ones first."""
    chosen = [BY_NAME[n] for n in names] if names else list(SETTINGS)
    return [(s.name, s.type | None if s.optional else (tuple if s.many else s.type),
             dataclasses.field() if s.default is REQUIRED else dataclasses.field(default=s.default))
            for s in sorted(chosen, key=lambda s: s.default is not REQUIRED)]


def check_settings(config) -> None:
    """Check every declared field of a config dataclass against its declaration."""
    for f in dataclasses.fields(config):
        if f.name in BY_NAME and BY_NAME[f.name].default is not REQUIRED:
            BY_NAME[f.name].check(getattr(config, f.name))
    if hasattr(config, "remedies"):
        check_remedies(config.remedies)  # each part known, at most one weight scheme
