"""Command-line interface: `python -m core experiment|extract|demo-data|report|predict|export|list-backbones|
owner-token`.

Exit codes: 0 ok; 2 bad input or usage (one `error: ...` line on stderr); 1 unexpected failure.
Progress goes to stderr, results to files.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import traceback
from pathlib import Path

from tqdm import tqdm

from core.backbones import get_entry, list_backbones
from core.data import build_demo_dataset
from core.errors import Cancelled, StoppedEarly, TransferScopeError
from core.features import init_distributed, rank_world
from core.naming import run_names
from core.jobs import WAITING_FOR_SLOT, compute_slot, compute_slot_path
from core.paths import demo_dir
from core.remedies import check_remedies, remedy_warnings
from core.records import RunRecord
from core.config import ExperimentConfig, load_data, load_features
from core.storage import atomic_write_json, check_output_dir, check_output_file
from core.settings import REQUIRED, SETTINGS, parse_list
from core.sharing import owner_token

class UsageError(TransferScopeError):
    """argparse rejected the command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit 2 with our one-line format instead of argparse's usage dump
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class TqdmProgress:
    """`progress(stage, done, total)` callback drawing one tqdm bar per stage of several steps on stderr."""

    def __init__(self):
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int, note: str = "") -> None:
        bar = self.bars.get(stage)
        if bar is None and total <= 1 and not note:
            return  # a one-step stage (read the dataset, load the backbone) has nothing to count: no bar
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=True, dynamic_ncols=True)
        bar.total = total
        if note:  # shown now when nothing else moves the bar (a step's estimate before it starts)
            bar.set_postfix_str(note, refresh=done == bar.n)
        bar.update(done - bar.n)
        if done >= total:
            self.bars.pop(stage).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _add_settings(p: argparse.ArgumentParser, command: str) -> None:
    """One option per setting declared (core.settings) for `command`."""
    for setting in SETTINGS:
        if command not in setting.commands:
            continue
        default = setting.cli_default()
        shown = ",".join(map(str, default)) if setting.many else default
        options = f"; one of {', '.join(map(str, setting.choices))}" if setting.choices else ""
        source = f", from env {setting.env} when set" if setting.env else ""
        kwargs = {"dest": setting.name, "help": f"{setting.help}{options}"}
        if default is REQUIRED:
            kwargs["required"] = True
        elif default is None:
            kwargs["default"] = None
        else:
            kwargs.update(default=default, help=f"{kwargs['help']} (default: {shown}{source})")
        if setting.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = functools.partial(parse_list, kind=setting.type) if setting.many else setting.type
        p.add_argument(setting.cli_flag, *setting.aliases, **kwargs)


def get_args_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="TransferScope: compare transfer-learning approaches")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    exp = sub.add_parser("experiment", help="extract features, train approaches x class weights, write results")
    _add_settings(exp, "experiment")
    exp.add_argument("--out", required=True, help="results JSON file")
    ext = sub.add_parser("extract", help="extract and cache features; prints key, n and seconds")
    _add_settings(ext, "extract")
    ext.add_argument("--parquet", default=None, metavar="DIR",
                     help="also write the features as Parquet files in DIR (one row per image) for Spark MLlib, "
                          "Dask-ML or cuML past one machine")
    demo = sub.add_parser("demo-data", help="write the embedded imbalanced digits demo dataset")
    demo.add_argument("--out", default=str(demo_dir()))
    rep = sub.add_parser("report", help="turn a results JSON into a Markdown or self-contained HTML report")
    rep.add_argument("results")
    rep.add_argument("--format", choices=("md", "html"), default=None, help="default: from --out's extension")
    rep.add_argument("--out", required=True)
    rep.add_argument("--base-url", default=None, help="dashboard address the report's run links open "
                     "(default: http://localhost:8501, where `make run` serves)")
    pred = sub.add_parser("predict", help="apply a stored run to new images; one row per image")
    pred.add_argument("--run", required=True, help="run id (see the Results page or cache/runs/)")
    pred.add_argument("files", nargs="*", help="image files (or use --data)")
    pred.add_argument("--data", help="a folder of images, searched recursively")
    pred.add_argument("--out", required=True, help="predictions file (.csv, or .json with --format json)")
    pred.add_argument("--format", choices=("csv", "json"), default=None, help="default: from --out's extension")
    pred.add_argument("--top-k", type=int, default=3, help="classes listed per image (default: 3)")
    pred.add_argument("--skip-unreadable", action="store_true",
                      help="predict the readable images and list the unreadable ones with reasons")
    _add_settings(pred, "predict")
    exp_onnx = sub.add_parser("export", help="write a run as ONNX (decision rule inside) with its preprocessing")
    exp_onnx.add_argument("--run", required=True, help="run id")
    exp_onnx.add_argument("--out", required=True, help="a new or empty folder")
    _add_settings(exp_onnx, "export")
    sub.add_parser("list-backbones", help="list registered backbones and whether their weights load offline")
    tok = sub.add_parser("owner-token", help="print the token that unlocks actions on a shared dashboard")
    _add_settings(tok, "owner-token")
    tok.add_argument("--new", action="store_true", help="issue a fresh token (make share does, at every start)")
    return parser


def _config(args) -> ExperimentConfig:
    """The ExperimentConfig of a command line: every setting its command takes, the rest at their defaults."""
    return ExperimentConfig(**{s.name: getattr(args, s.name) for s in SETTINGS if args.command in s.commands})


def _compute_slot(args):
    """Queue with the dashboard's jobs on this cache folder (not under torchrun: ranks would wait on each other)."""
    if rank_world()[1] > 1:
        return contextlib.nullcontext(True)
    return compute_slot(compute_slot_path(args.cache_dir),
                        on_wait=lambda: print(f"{WAITING_FOR_SLOT}…", file=sys.stderr))


def cmd_experiment(args, progress) -> None:
    from core.experiment import run_experiment  # scikit-learn and the trainers load only for experiments

    init_distributed()  # under torchrun: extraction shards and fine-tuning batches are split across ranks
    check_output_file(args.out, "results file (--out)")
    config = _config(args).validate()  # a bad setting fails at once, without queueing for the compute slot
    for remedy in check_remedies(config.remedies):
        for warning in remedy_warnings(remedy):
            print(f"warning: {warning}", file=sys.stderr)
    with _compute_slot(args):
        if "finetune" in config.approaches and rank_world()[0] == 0:
            from core.experiment import estimate_experiment

            print(estimate_experiment(config)["text"], file=sys.stderr)
        results = run_experiment(config, progress=progress)
    if rank_world()[0] != 0:
        return
    atomic_write_json(Path(args.out), results, "results file")
    runs = [RunRecord.from_json(run) for run in results["runs"]]
    names = run_names(runs)
    width = max(map(len, names.values()), default=3)
    print(f"{'run':<{width}} {'macroF1 [95% interval]':>22} {'bal_acc':>7} {'acc':>6} {'fit_s':>8}", file=sys.stderr)
    for r in runs:
        low, high = r.interval("macro_f1")
        print(f"{names[r.run_id]:<{width}} {r.macro_f1:7.3f} [{low:.3f}, {high:.3f}] "
              f"{r.balanced_accuracy:7.3f} {r.accuracy:6.3f} {r.fit_seconds:8.2f}", file=sys.stderr)
    hit = "cache hit" if results["cache_hit"] else "extracted"
    print(f"features: {hit}; results written to {args.out}", file=sys.stderr)


def cmd_extract(args, progress) -> None:
    init_distributed()  # `torchrun --nproc-per-node N -m core extract ...` splits the shards across ranks
    config = _config(args).validate()
    if args.parquet is not None:
        check_output_dir(args.parquet, "Parquet folder (--parquet)")  # before any extraction
    dataset = load_data(config)
    with _compute_slot(args):
        features = load_features(config, dataset, progress)
    rank, world = rank_world()
    if rank != 0:  # one line for the whole torchrun job: ranks printing at once can interleave
        return
    parquet = {}
    if args.parquet is not None:
        from core.parquet_export import write_parquet

        parquet = {"parquet_parts": len(write_parquet(features, dataset, args.parquet))}
    n = len(features.X_train) + len(features.X_test)
    print(json.dumps({"key": features.key, "n": n, "feature_dim": features.X_train.shape[1],
                      "seconds": round(features.seconds, 3), "extract_seconds": round(features.extract_seconds, 3),
                      "cache_hit": features.cache_hit, "runtime": features.runtime, "ranks": world,
                      "skipped": len(dataset.skipped), **parquet}))


def cmd_demo_data(args, progress) -> None:
    print(build_demo_dataset(args.out))


def cmd_report(args, progress) -> None:
    from core.report import DEFAULT_BASE_URL, write_report

    check_output_file(args.out, "report (--out)")
    fmt = args.format or ("html" if args.out.endswith((".html", ".htm")) else "md")
    print(write_report(args.results, args.out, fmt=fmt, base_url=args.base_url or DEFAULT_BASE_URL))


def cmd_predict(args, progress) -> None:
    from core.predict import load_predictor, predict_images, write_predictions

    if bool(args.data) == bool(args.files):
        raise UsageError("give either --data DIR or image files, not both and not neither")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    check_output_file(args.out, "predictions file (--out)")
    fmt = args.format or ("json" if args.out.endswith(".json") else "csv")
    predictor = load_predictor(args.run, args.cache_dir)
    with _compute_slot(args):
        predictions = predict_images(predictor, [args.data] if args.data else args.files,
                                     skip_unreadable=args.skip_unreadable, progress=progress)
    write_predictions(predictions, args.out, fmt, min(args.top_k, len(predictions.classes)), predictor.run_id)
    for note in predictions.notes:
        print(f"note: {note}", file=sys.stderr)
    for path, reason in predictions.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"{len(predictions.paths)} image(s) predicted with run {predictor.run_id}; written to {args.out}",
          file=sys.stderr)


def cmd_export(args, progress) -> None:
    from core.export import export_run
    from core.predict import load_predictor

    print(export_run(load_predictor(args.run, args.cache_dir), args.out))


def cmd_list_backbones(args, progress) -> None:
    """One line per registered backbone: name, native short side, whether its weights load offline, from where."""
    for name in list_backbones():
        entry = get_entry(name)
        offline, note = entry.availability()
        print(f"{name:<20} {entry.image_size:>4}px  {'offline' if offline else 'needs weights':<13}  {note}")
    print("fuse several with +, e.g. efficientnet_lite0+efficientnet_lite2 (each part standardised, concatenated)")


def cmd_owner_token(args, progress) -> None:
    token = owner_token(args.cache_dir, fresh=args.new)
    print(f"owner token (type it on the Share page, on this machine, to unlock actions): {token}")


COMMANDS = {"experiment": cmd_experiment, "extract": cmd_extract, "demo-data": cmd_demo_data,
            "report": cmd_report, "predict": cmd_predict, "export": cmd_export, "list-backbones": cmd_list_backbones, "owner-token": cmd_owner_token}


def main(argv=None) -> int:
    progress = TqdmProgress()
    try:
        args = get_args_parser().parse_args(argv)
        COMMANDS[args.command](args, progress)
        return 0
    except TransferScopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StoppedEarly as stopped:
        print(f"interrupted: {stopped}", file=sys.stderr)
        return 130
    except (Cancelled, KeyboardInterrupt):
        print("error: interrupted; cached feature shards are kept and the next run resumes", file=sys.stderr)
        return 130
    except Exception:  # unexpected: keep the traceback for a bug report
        traceback.print_exc()
        return 1
    finally:
        progress.close()
