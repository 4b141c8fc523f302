"""``hwlm train``, ``hwlm eval``, ``hwlm generate`` and ``hwlm export``: thin layers over the library.

    hwlm train --data runs/data --out runs/train --model tiny --max-steps 500
    hwlm train --config recipe.toml --model-n-layer 6          # [train] and [model] tables
    hwlm eval --run runs/train --json
    hwlm generate --run runs/train --prompt "The" --max-new-tokens 100
    hwlm export --run runs/train --format hf --out runs/hf
    hwlm train --data runs/data --encrypt --key-file data.key ...   # encrypted checkpoints (README)
    hwlm train --nproc 2 --strategy ddp --data runs/data --max-steps 500   # torchrun, 2 processes
    torchrun --nproc-per-node 8 -m hwlm train --data runs/data ...         # under an external torchrun

See docs/distributed.md for multi-node commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from hwlm.config import add_arguments, load_toml, overrides_from_args, resolve
from hwlm.crypt import warn_unused_key
from hwlm.errors import ConfigError
from hwlm.model.config import ModelConfig
from hwlm.train.config import TrainConfig

MODEL_PREFIX = "model-"


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_eval(subparsers)
    _register_generate(subparsers)
    _register_export(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model on prepared data",
        description="Train a decoder-only Transformer on a folder made by `hwlm prepare`. The model is a preset "
                    "(--model) whose fields a [model] TOML table or --model-* flags override. The run stops at the "
                    "first of --max-steps, --max-tokens, --time-budget. Logs: OUT/log.jsonl and OUT/tb.")
    p.add_argument("--config", metavar="RECIPE.toml", help="TOML recipe: a [train] table and a [model] table")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_arguments(p, TrainConfig)
    launch = p.add_argument_group("several processes (torchrun; see docs/distributed.md)")
    launch.add_argument("--nproc", default="1", metavar="N",
                        help="processes on this node (one per GPU), or auto: decide from devices, data and "
                             "model size (default: 1)")
    launch.add_argument("--nnodes", type=int, default=1, help="number of nodes (machines) (default: 1)")
    launch.add_argument("--node-rank", type=int, default=0, help="this node's index, 0 to nnodes-1 (default: 0)")
    launch.add_argument("--master", metavar="ADDR:PORT",
                        help="node 0's address and a free port, the same on every node (one node: picked here)")
    p.add_argument("--resolved-run", type=Path, default=None, help=argparse.SUPPRESS)  # set for launched workers
    group = p.add_argument_group("model overrides (replace fields of the --model preset)")
    add_arguments(group, ModelConfig, prefix=MODEL_PREFIX)  # type: ignore[arg-type]
    from hwlm.cli.classify import add_task_arguments

    add_task_arguments(p)  # --task classify|chat and its flags (hwlm.cli.classify)
    p.set_defaults(func=run_train)


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe's [model] table, then --model-* flags on top."""
    table = load_toml(args.config).get("model", {}) if args.config else {}
    if not isinstance(table, dict):
        raise ConfigError(f"[model] in {args.config} must be a table")
    return {**table, **overrides_from_args(args, ModelConfig, prefix=MODEL_PREFIX)}


def _flags(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Config values back as command-line flags, for the worker processes."""
    out: list[str] = []
    for name, value in values.items():
        flag = "--" + prefix + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + prefix + name.replace("_", "-"))
        elif value is None:
            out += [flag, "none"]
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, repr(value) if isinstance(value, float) else str(value)]
    return out


def run_train(args: argparse.Namespace) -> int:
    from hwlm.cli.classify import run_task_train, task_of

    if task_of(args) != "lm":
        return run_task_train(args)
    from hwlm.train.parallel import under_torchrun
    from hwlm.train.resolve import ResolvedRun, resolve_run

    if under_torchrun() and (args.nproc not in ("1", "auto") or args.nnodes != 1 or args.master):
        raise ConfigError("this process already runs under torchrun: drop --nproc/--nnodes/--master "
                          "(torchrun's own flags set them)")
    if args.resolved_run is not None:  # a worker of `hwlm train --nproc N`: the launcher resolved the run
        run = ResolvedRun.load(args.resolved_run)
    else:
        cfg = resolve(TrainConfig, file=args.config, overrides=overrides_from_args(args, TrainConfig), section="train")
        if os.environ.get("RANK", "0") == "0":  # once under an external torchrun (rank 0): a resumed run reads OUT
            warn_unused_key(cfg.key_file, [cfg.data, cfg.out if cfg.out.exists() else None], encrypt=cfg.encrypt)
        run = resolve_run(cfg, model_overrides(args))
    if under_torchrun():
        rc = _train_here(args, run)
        # A torchrun worker leaves without interpreter finalization: gloo's threads may still hold work
        # objects whose destruction then aborts the process ("terminate called without an active
        # exception", pytorch/pytorch#179291), seen in CI after successful runs. Checkpoints are fsynced.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    from hwlm.train.launch import launch, plan_launch
    from hwlm.train.logs import info
    from hwlm.train.signals import RESUME_COMMAND_ENV, StoppedBySignal, exit_code, resume_command

    plan = plan_launch(run, args.nproc, args.nnodes)
    if plan.nproc * args.nnodes == 1 and plan.strategy != "fsdp":
        if args.nproc == "auto" or run.train.strategy != "auto":
            info(f"one process: {plan.reason}")
        return _train_here(args, run)
    info(f"{plan.nproc} process(es) per node, strategy {plan.strategy}: {plan.reason}")
    # Workers read the run as resolved here (strategy included) from a file in the run folder.
    resolved_file = run.with_train(strategy=plan.strategy).save(run.train.out)
    worker = ["train", "--resolved-run", str(resolved_file), *(["--json"] if args.json else [])]
    threads = max(1, (os.cpu_count() or 1) // plan.nproc)  # processes share the cores, not oversubscribe them
    os.environ[RESUME_COMMAND_ENV] = resume_command(_command_line(args))  # what rank 0 prints on a signal
    try:
        launch(worker, plan.nproc, args.nnodes, args.node_rank, args.master, threads_per_proc=threads)
    except StoppedBySignal as exc:  # rank 0 printed where it stopped and the command that resumes
        return exit_code(exc.signame)
    finally:
        resolved_file.unlink(missing_ok=True)
        os.environ.pop(RESUME_COMMAND_ENV, None)  # for this launch's workers only
    return 0


def _command_line(args: argparse.Namespace) -> list[str]:
    """This ``hwlm train`` invocation as arguments: the options that were given, normalized."""
    spread = [*(["--nproc", str(args.nproc)] if args.nproc != "1" else []),
              *(["--nnodes", str(args.nnodes), "--node-rank", str(args.node_rank)] if args.nnodes != 1 else []),
              *(["--master", args.master] if args.master else [])]
    return ["train", *(["--config", str(args.config)] if args.config else []), *(["--json"] if args.json else []),
            *_flags(overrides_from_args(args, TrainConfig)),
            *_flags(overrides_from_args(args, ModelConfig, prefix=MODEL_PREFIX), MODEL_PREFIX), *spread]


def _stopped(args: argparse.Namespace, signame: str, step: int, ckpt: Path | None) -> int:
    """After SIGINT/SIGTERM: say where the run stopped and the command that resumes; 130 or 143."""
    from hwlm.train.parallel import under_torchrun
    from hwlm.train.signals import RESUME_COMMAND_ENV, exit_code, resume_command

    cmd = resume_command(_command_line(args))
    if under_torchrun() and not os.environ.get(RESUME_COMMAND_ENV):
        cmd += "  (with the same torchrun options in front)"
    print(f"hwlm: stopped by {signame} after step {step}; checkpoint {ckpt}", file=sys.stderr)
    print(f"hwlm: resume with: {cmd}", file=sys.stderr)
    return exit_code(signame)


def _train_here(args: argparse.Namespace, run: Any) -> int:
    """Train in this process (alone, or as one torchrun worker); rank 0 prints the result."""
    from hwlm.errors import HwlmError
    from hwlm.train.launch import ERROR_DIR_ENV
    from hwlm.train.loop import train
    from hwlm.train.parallel import current_world

    try:
        result = train(run)
    except HwlmError as exc:
        errors = os.environ.get(ERROR_DIR_ENV)
        if not errors:
            raise
        # Launched by `hwlm train --nproc`: the launcher prints the lowest rank's line, once.
        Path(errors, f"rank-{current_world().rank}.txt").write_text(str(exc), encoding="utf-8")
        return 1
    code = 0
    if result.stopped_by:
        from hwlm.train.signals import exit_code

        code = exit_code(result.stopped_by)
    if not current_world().is_main:
        return code
    if result.stopped_by:
        _stopped(args, result.stopped_by, result.steps, result.last_checkpoint)
    if args.json:
        print(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                          for k, v in dataclasses.asdict(result).items()}, indent=2))
        return code
    mfu = "n/a (peak unknown)" if result.mfu is None else f"{100 * result.mfu:.1f}%"
    val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
    train_loss = "n/a" if result.train_loss is None else f"{result.train_loss:.4f}"
    where = f" x {result.world_size} processes ({result.strategy})" if result.world_size > 1 else ""
    print(f"trained {result.steps} steps, {result.tokens:,} tokens in {result.seconds:.1f} s "
          f"({result.tokens_per_s:,.0f} tokens/s, MFU {mfu}, {result.precision} on {result.device}{where})")
    print(f"  train loss {train_loss}, val loss {val}")
    print(f"  run folder {result.run_dir}; last checkpoint {result.last_checkpoint}")
    return code


def _key(args: argparse.Namespace) -> bytes | None:
    """The key of --key-file, if given (else encrypted runs are read with $HWLM_DATA_KEY)."""
    from hwlm.crypt import optional_key

    return optional_key(getattr(args, "key_file", None))


def run_data(run: Path | None) -> Path | None:
    """The data folder a run's newest checkpoint trained on (its config.json's data.dir), or None: what eval and
    compress read when --data is not given."""
    from hwlm.errors import HwlmError
    from hwlm.train import checkpoint as ckpt_io

    try:
        return Path(ckpt_io.read_json(ckpt_io.resolve_checkpoint(run) / "config.json")["data"]["dir"])
    except (HwlmError, KeyError, TypeError):  # no run, no checkpoint or no data section: the command says so later
        return None


def _register_eval(subparsers: argparse._SubParsersAction) -> None:
    from hwlm.evaluate import EvalConfig

    p = subparsers.add_parser(
        "eval", help="loss, perplexity and bits per byte of a trained run",
        description="Evaluate a run's newest checkpoint on a prepared split (default: the run's own data, "
                    "val split) or on raw text FILES tokenized like the run's data.")
    p.add_argument("files", nargs="*", metavar="FILES", default=argparse.SUPPRESS,
                   help="raw text or .jsonl files to evaluate on")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_arguments(p, EvalConfig, skip=("files",))
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from hwlm.evaluate import EvalConfig, evaluate

    cfg = resolve(EvalConfig, overrides=overrides_from_args(args, EvalConfig))
    warn_unused_key(cfg.key_file, [cfg.run, None if cfg.files else cfg.data or run_data(cfg.run)])
    from hwlm.train.classify_load import is_classifier_run

    if cfg.run is not None and is_classifier_run(cfg.run):
        from hwlm.cli.classify import run_classify_eval

        return run_classify_eval(args, overrides_from_args(args, EvalConfig))
    r = evaluate(cfg)
    if args.json:
        print(json.dumps(dataclasses.asdict(r), indent=2))
        return 0
    print(f"{cfg.run} (step {r.step}) on {r.source}: loss {r.loss:.4f} nats/token, perplexity {r.perplexity:.2f}, "
          f"{r.bits_per_byte:.4f} bits/byte over {r.tokens:,} tokens, {r.bytes:,} bytes")
    return 0


def _register_generate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="sample text from a trained run, streamed to stdout",
                              description="Continue --prompt with the run's newest checkpoint (KV cache).")
    p.add_argument("--run", "--run-dir", required=True, type=Path, help="run folder or checkpoint folder")
    p.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with this much mass")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps or xla (default: auto)")
    p.add_argument("--compile", action="store_true",
                   help="decode with a fixed-shape step under torch.compile (CUDA graphs on CUDA); compiles first")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch, or onnx: run --onnx (from `hwlm export --format onnx` of this run) with "
                        "onnxruntime on the CPU (default: torch)")
    p.add_argument("--onnx", type=Path, default=None, metavar="PATH", help="ONNX export folder or .onnx file")
    p.add_argument("--draft", type=Path, default=None, metavar="RUN2",
                   help="speculative decoding: a smaller run on the same tokenizer proposes tokens, this run checks "
                        "them (greedy output unchanged); acceptance is printed to stderr")
    p.add_argument("--draft-k", type=int, default=4, help="tokens the draft proposes per round (default: 4)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="tensor-parallel decoding over N torchrun processes (heads and MLP split; gloo on CPU, "
                        "NCCL on CUDA); on a CPU this checks the sharded path, it is not faster")
    p.add_argument("--key-file", type=Path, default=None, metavar="FILE",
                   help="key file (mode 0600) of an encrypted run (`hwlm train --encrypt`); default: $HWLM_DATA_KEY")
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from hwlm.device import select_device
    from hwlm.model.generation import check_args
    from hwlm.train.load import load_model
    from hwlm.train.parallel import under_torchrun

    # The sampling flags first, before loading the model or echoing the prompt (placeholder prompt
    # and vocabulary: only those two are known later, and the library checks them then).
    check_args([0], args.max_new_tokens, args.temperature, args.top_k, args.top_p, vocab_size=1)

    chosen = [name for name, on in (("--backend onnx", args.backend == "onnx"), ("--draft", args.draft is not None),
                                    ("--nproc", args.nproc != 1 or under_torchrun()), ("--compile", args.compile))
              if on]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} do not combine: choose one way to decode")
    if args.backend == "onnx" and args.onnx is None:
        raise ConfigError("--backend onnx needs --onnx PATH (a folder made by `hwlm export --format onnx`)")
    if not under_torchrun():  # once, not in each tensor-parallel worker
        warn_unused_key(args.key_file, [args.run, args.draft])
    if args.nproc != 1 and not under_torchrun():
        return _launch_tp_generate(args)
    if under_torchrun():
        return _tp_worker(args)
    loaded = load_model(args.run, "cpu" if args.backend == "onnx" else select_device(args.device).device, _key(args))
    if args.backend == "torch" and not args.compile:  # a compiled step reads the plain weights
        from hwlm.model.packing import pack_linears

        pack_linears(loaded.model)  # on a CPU, oneDNN on packed weights, as serve and bench infer (else nothing)
    tokens, after = _token_source(args, loaded)
    _stream(args, loaded, tokens, show=True)
    if after is not None:
        after()
    return 0


def _stream(args: argparse.Namespace, loaded: Any, tokens: Any, show: bool) -> None:
    from hwlm.train.load import stream_text

    out = sys.stdout
    if show:
        out.write(args.prompt)
        out.flush()
    for piece in stream_text(loaded, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                             args.top_p, args.seed, tokens=tokens):
        if show:
            out.write(piece)
            out.flush()
    if show:
        out.write("\n")


def _tp_worker(args: argparse.Namespace) -> int:
    """One torchrun rank of ``generate --nproc N``: every rank decodes its shard, rank 0 prints."""
    from hwlm.device import select_device
    from hwlm.errors import HwlmError
    from hwlm.model.tp import TensorParallel
    from hwlm.train.launch import ERROR_DIR_ENV
    from hwlm.train.load import load_model

    rc, tp = 0, None
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if args.nproc not in (1, world):
            raise ConfigError(f"--nproc {args.nproc} differs from torchrun's {world} processes: drop --nproc")
        tp = TensorParallel.start_group(select_device(args.device).type)
        loaded = load_model(args.run, tp.device, _key(args))
        tp.shard(loaded.model)
        sample = (args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, loaded.eot_id)
        _stream(args, loaded, lambda ids: tp.generate(ids, *sample), show=tp.rank == 0)
    except HwlmError as exc:
        errors = os.environ.get(ERROR_DIR_ENV)
        if not errors:
            raise
        Path(errors, f"rank-{os.environ.get('RANK', '0')}.txt").write_text(str(exc), encoding="utf-8")
        rc = 1
    if tp is not None and rc == 0:
        tp.finish()
    # As ``hwlm train``'s workers: leave without interpreter finalization (gloo threads can abort it).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _token_source(args: argparse.Namespace, loaded: Any) -> tuple[Any, Any]:
    """(prompt ids -> new ids, what to run after the stream) for the chosen way of decoding."""
    sample = (args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, loaded.eot_id)
    if args.backend == "onnx":
        from hwlm.export.onnx import OnnxModel, weights_fingerprint

        onnx_model = OnnxModel.load(args.onnx)
        onnx_model.check_matches(loaded.model_cfg, weights_fingerprint(loaded.model), f"run {args.run}")
        return (lambda ids: onnx_model.generate(ids, *sample)), None
    if args.draft is not None:
        return _speculative_source(args, loaded, sample)
    from hwlm.model import generate

    return (lambda ids: generate(loaded.model, ids, *sample, compile=args.compile)), None


def _speculative_source(args: argparse.Namespace, loaded: Any, sample: tuple) -> tuple[Any, Any]:
    import time

    from hwlm.model.packing import pack_linears
    from hwlm.model.speculative import SpecStats, check_draft, speculative_generate
    from hwlm.train.load import load_model

    draft = load_model(args.draft, next(loaded.model.parameters()).device, _key(args))
    pack_linears(draft.model)  # as the target (see generate)
    check_draft(loaded.model, draft.model, loaded.tokenizer.get_vocab(), draft.tokenizer.get_vocab(),
                f"draft {args.draft}")
    stats, start = SpecStats(), time.perf_counter()

    def report() -> None:
        seconds = time.perf_counter() - start
        print(f"speculative: {stats.accepted} of {stats.proposed} draft tokens accepted "
              f"({100 * stats.acceptance_rate:.0f}%), {stats.tokens_per_target_pass:.2f} tokens per target pass, "
              f"{stats.emitted / seconds:,.1f} tokens/s", file=sys.stderr)

    n, temperature, top_k, top_p, seed, eos = sample
    return (lambda ids: speculative_generate(loaded.model, draft.model, ids, n, k=args.draft_k, temperature=temperature,
                                             top_k=top_k, top_p=top_p, seed=seed, eos_id=eos, stats=stats)), report


def _launch_tp_generate(args: argparse.Namespace) -> int:
    """``hwlm generate --nproc N``: check the split here, then start N torchrun workers of the same command."""
    from hwlm.model.tp import check_tp
    from hwlm.train import checkpoint as ckpt_io
    from hwlm.train.launch import launch

    from hwlm.config import from_dict

    ckpt = ckpt_io.resolve_checkpoint(args.run)
    check_tp(from_dict(ModelConfig, ckpt_io.read_json(ckpt / "config.json")["model"]), args.nproc)
    # torchrun's own parser reads these first: "--run" would match its --run-path and "--nproc" its
    # --nproc-per-node, so the worker gets --run-dir, and its world size from torchrun.
    worker = ["generate", "--run-dir", str(args.run), "--prompt", args.prompt, "--max-new-tokens",
              str(args.max_new_tokens), "--temperature", repr(args.temperature), "--device", args.device,
              *(["--top-k", str(args.top_k)] if args.top_k is not None else []),
              *(["--top-p", repr(args.top_p)] if args.top_p is not None else []),
              *(["--seed", str(args.seed)] if args.seed is not None else []),
              *(["--key-file", str(args.key_file)] if args.key_file is not None else [])]
    launch(worker, args.nproc, threads_per_proc=max(1, (os.cpu_count() or 1) // args.nproc))
    return 0


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a trained run in another format (Hugging Face)",
                              description="Export a run's newest checkpoint; hf writes a folder that "
                                          "transformers' AutoModelForCausalLM.from_pretrained loads. The export "
                                          "is always plain, an encrypted run's too (other tools cannot read "
                                          "hwlm's encryption): a one-line note says so.")
    p.add_argument("--run", required=True, type=Path, help="run folder or checkpoint folder")
    p.add_argument("--format", choices=["hf", "onnx"], default="hf",
                   help="hf (transformers folder) or onnx (model.onnx with the KV cache as inputs/outputs, for "
                        "onnxruntime) (default: hf)")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="onnx only: int8 (dynamic, per-channel weights) or int4 (MatMulNBits, groups of 32)")
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--key-file", type=Path, default=None, metavar="FILE",
                   help="key file (mode 0600) of an encrypted run (`hwlm train --encrypt`); default: $HWLM_DATA_KEY")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from hwlm.export.hf import export_hf
    from hwlm.train import checkpoint as ckpt_io
    from hwlm.train.classify_load import is_classifier_run
    from hwlm.train.load import load_model

    warn_unused_key(args.key_file, [args.run])
    if is_classifier_run(args.run):
        from hwlm.cli.classify import run_classify_export

        return run_classify_export(args)
    loaded = load_model(args.run, "cpu", _key(args))
    if ckpt_io.is_encrypted_checkpoint(loaded.path):
        print(ckpt_io.PLAIN_EXPORT_NOTE.format(run=args.run, out=args.out), file=sys.stderr)
    if getattr(args, "format", "hf") == "onnx":
        return _export_onnx(args, loaded)
    if getattr(args, "quantize", None):
        raise ConfigError(f"--quantize {args.quantize} applies to --format onnx only")
    out = export_hf(loaded.model, loaded.model_cfg, loaded.path / "tokenizer.json", args.out)
    print(f"exported {loaded.path} (step {loaded.step}) as a Hugging Face folder: {out}")
    return 0


def _export_onnx(args: argparse.Namespace, loaded: Any) -> int:
    from hwlm.export.onnx import export_onnx

    out = export_onnx(loaded.model, args.out, loaded.path / "tokenizer.json", args.quantize,
                      source={"checkpoint": str(loaded.path), "step": loaded.step})
    print(f"exported {loaded.path} (step {loaded.step}) as ONNX ({args.quantize or 'fp32'}): {out / 'model.onnx'}")
    return 0
