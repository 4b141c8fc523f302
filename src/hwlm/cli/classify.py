"""Classification and chat from the command line: ``hwlm predict``, and the task paths of prepare/train/eval/export.

    hwlm prepare --task classify reviews.csv --text-field review --label-field sentiment --out runs/cls
    hwlm prepare --task classify builtin:digits --out runs/digits
    hwlm train --task classify --classifier lstm --data runs/cls --out runs/lstm --max-steps 300
    hwlm train --task classify --init-from runs/lm --lora-rank 8 --data runs/cls --out runs/ft --seeds 3
    hwlm eval --run runs/lstm                    # test split: per-class and averaged P/R/F1, confusion matrix
    hwlm predict --run runs/lstm new.csv --out runs/new-labels.jsonl
    hwlm export --run runs/ft/seed-1337 --format hf --out runs/hf-cls   # GPT2/LlamaForSequenceClassification
    hwlm train --task chat --init-from runs/lm --data dialogues.jsonl --out runs/chat

``hwlm prepare``, ``train``, ``eval`` and ``export`` call in here when the task (or the run) is not a
language model, so those commands keep one name for every task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from hwlm.config import add_arguments, overrides_from_args, resolve
from hwlm.train.task_config import TaskConfig

__all__ = ["register", "add_task_arguments", "task_of", "run_task_train", "run_prepare_classify",
           "run_classify_eval", "run_classify_export"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="label a CSV / JSON Lines file with a trained classifier",
                              description="Write each row's predicted label and the probability of every label.")
    p.add_argument("file", type=Path, help="CSV or JSON Lines file of texts")
    p.add_argument("--run", required=True, type=Path, help="classification run folder or checkpoint folder")
    p.add_argument("--out", required=True, type=Path, help="output .jsonl (label + probabilities) or .csv")
    p.add_argument("--text-field", default="text", help="CSV column / JSON field of the text (default: text)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per batch (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps or xla (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--key-file", type=Path, default=None, metavar="FILE",
                   help="key file (mode 0600) of an encrypted run (`hwlm train --encrypt`); default: $HWLM_DATA_KEY")
    p.set_defaults(func=run_predict)


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """``hwlm train``'s task flags (--task, --classifier, --init-from, --seeds, ...)."""
    group = parser.add_argument_group("task: classifier or chat fine-tune (a [task] table in a recipe)")
    add_arguments(group, TaskConfig)  # type: ignore[arg-type]


def _task_config(args: argparse.Namespace) -> TaskConfig:
    return resolve(TaskConfig, file=getattr(args, "config", None), overrides=overrides_from_args(args, TaskConfig),
                   section="task")


def task_of(args: argparse.Namespace) -> str:
    """The task a `hwlm train` command asks for (flag, else the recipe's [task] table, else lm)."""
    return _task_config(args).task


def run_prepare_classify(cfg: Any, as_json: bool) -> int:
    from hwlm.data.classify import prepare_classify

    result = prepare_classify(cfg)
    d = result.to_dict()
    if as_json:
        print(json.dumps(d, indent=2))
        return 0
    r = d["removed"]
    print(f"prepared {d['out']} for classification: {len(d['labels'])} classes, "
          f"{d['examples']['train']:,} train / {d['examples']['val']:,} val / {d['examples']['test']:,} test examples")
    print(f"  removed before splitting: {r['duplicates']:,} duplicate rows, {r['conflicting_texts']:,} texts seen "
          f"with two labels ({r['conflicting_rows']:,} rows)")
    counts = d["class_counts"]["train"]
    shown = ", ".join(f"{k}: {v:,}" for k, v in list(counts.items())[:12])
    print(f"  train class counts: {shown}{' ...' if len(counts) > 12 else ''}; imbalance (largest / smallest) "
          f"{d['imbalance']:.2f}" + ("  -> consider --class-weights balanced" if d["imbalance"] >= 3 else ""))
    if result.manifest.get("encryption"):
        print(f"  splits encrypted under key id {result.manifest['encryption']['key_id']} "
              f"({result.manifest['encryption']['scheme']})")
    return 0


def run_task_train(args: argparse.Namespace) -> int:
    from hwlm.cli.train import model_overrides
    from hwlm.train.config import TrainConfig

    task = _task_config(args)
    cfg = resolve(TrainConfig, file=args.config, overrides=overrides_from_args(args, TrainConfig), section="train")
    from hwlm.crypt import warn_unused_key

    warn_unused_key(cfg.key_file, [cfg.data, task.init_from, task.wide_from, cfg.out if cfg.out.exists() else None],
                    encrypt=cfg.encrypt)
    if args.nproc not in ("1", "auto") or args.nnodes != 1:
        from hwlm.errors import ConfigError

        raise ConfigError(f"--task {task.task} trains in one process: drop --nproc / --nnodes")
    if task.task == "chat":
        from hwlm.train.chat import train_chat

        result: Any = train_chat(cfg, task)
    else:
        from hwlm.train.classify import train_classifier

        result = train_classifier(cfg, task, model_overrides(args))
    if args.json:
        print(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                          for k, v in dataclasses.asdict(result).items()}, indent=2))
        return 0
    if task.task == "chat":
        print(f"fine-tuned on conversations: {result.steps} steps in {result.seconds:.1f} s, "
              f"assistant-token loss {result.train_loss:.4f} (val {result.val_loss:.4f}); run folder {result.run_dir}")
        return 0
    acc = "n/a" if result.val_accuracy is None else f"{result.val_accuracy:.4f}"
    f1 = "n/a" if result.val_macro_f1 is None else f"{result.val_macro_f1:.4f}"
    print(f"trained {task.classifier} classifier: {result.steps} steps in {result.seconds:.1f} s "
          f"({result.tokens_per_s:,.0f} tokens/s), {result.params:,} parameters on {result.device}")
    print(f"  val accuracy {acc}, macro-F1 {f1}" + (f" (mean of {task.seeds} seeds)" if task.seeds > 1 else ""))
    print(f"  run folder {result.run_dir}")
    return 0


def _key(args: argparse.Namespace) -> bytes | None:
    """The key of --key-file, if given (else encrypted runs and data are read with $HWLM_DATA_KEY)."""
    from hwlm.crypt import optional_key

    return optional_key(getattr(args, "key_file", None))


def run_classify_eval(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from hwlm.evaluate_classify import evaluate_classifier

    r = evaluate_classifier(args.run, split=overrides.get("split", "test"), files=overrides.get("files", []),
                            device=overrides.get("device", "auto"), key=_key(args))
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    print(f"{args.run} (step {r.step}) on the {r.source}: {r.examples:,} examples")
    print(_report_table(r.report, r.labels))
    if r.seeds:
        s = r.seeds
        print(f"over {s['seeds']} seeds: accuracy {s['accuracy']['mean']:.4f} +- {s['accuracy']['std']:.4f}, "
              f"macro-F1 {s['macro avg f1-score']['mean']:.4f} +- {s['macro avg f1-score']['std']:.4f} "
              "(mean +- sample std; the table above is the first seed)")
    return 0


def _report_table(report: dict[str, Any], labels: list[str]) -> str:
    """scikit-learn's classification_report layout, then the confusion matrix."""
    width = max(12, *(len(n) for n in labels))
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"]
    for name in [*labels, "micro avg", "macro avg", "weighted avg"]:
        row = report[name]
        lines.append(f"{name:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1-score']:9.4f} "
                     f"{row['support']:9d}")
    lines.append(f"{'accuracy':>{width}} {report['accuracy']:29.4f}")
    lines.append("confusion matrix (rows: true, columns: predicted; order " + ", ".join(labels) + "):")
    lines += ["  " + " ".join(f"{v:6d}" for v in row) for row in report["confusion_matrix"]]
    return "\n".join(lines)


def run_predict(args: argparse.Namespace) -> int:
    from hwlm.crypt import warn_unused_key
    from hwlm.evaluate_classify import predict_file

    warn_unused_key(args.key_file, [args.run])
    r = predict_file(args.run, args.file, args.out, args.text_field, args.batch_size, args.device,
                     progress=not args.no_progress, key=_key(args))
    print(f"labelled {r.rows:,} rows in {r.seconds:.1f} s -> {r.out}")
    return 0


def run_classify_export(args: argparse.Namespace) -> int:
    from hwlm.export.hf_classify import export_hf_classifier

    from hwlm.train import checkpoint as ckpt_io

    out, arch = export_hf_classifier(args.run, args.out, _key(args))
    if ckpt_io.is_encrypted_checkpoint(ckpt_io.resolve_checkpoint(args.run)):
        import sys

        print(ckpt_io.PLAIN_EXPORT_NOTE.format(run=args.run, out=out), file=sys.stderr)
    print(f"exported {args.run} as a Hugging Face {arch} folder: {out}")
    return 0
