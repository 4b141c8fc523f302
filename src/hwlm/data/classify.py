"""``hwlm prepare --task classify``: labelled CSV / JSON Lines -> clean, stratified train/val/test splits.

Flow, in the order that keeps test examples out of training:

1. Read every row's text (``text_field``) and label (``label_field``); labels may be strings or integers.
2. Normalize the text exactly as the language-model pipeline does, drop empty texts.
3. Remove duplicates *before* splitting: a text seen twice with one label is kept once; a text seen
   with two different labels is removed altogether (no split can hold a true answer for it).
4. Check the classes: at least two, each with at least two examples (one for training, one held out).
5. Stratified, seeded split: each class is shuffled with ``random.Random(seed)`` and cut into
   test / val / train by ``test_fraction`` / ``val_fraction``; every class keeps at least one training
   example.
6. A tokenizer is trained on the *training* texts only (or ``--tokenizer`` is reused, e.g. the one of a
   pretrained language-model run, which ``--init-from`` needs).

The folder holds ``manifest.json`` (``task: classify``, the label map, class counts per split and the
imbalance), ``tokenizer.json`` and ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` (``{"text", "label"}``
with the label's integer id). ``builtin:digits`` reads scikit-learn's bundled 8x8 digits instead (no
download): rows are ``{"x": [64 floats in 0..1], "label"}`` and there is no tokenizer. Written atomically.

With ``--encrypt`` the split files are ``train.jsonl.enc`` ... (:mod:`hwlm.crypt`, encrypted in memory: no
plaintext row touches the disk), the manifest gains ``encryption: {scheme, key_id}`` and its sha256s are
those of the files as stored; :func:`read_split` decrypts them with the key (``key``, else $HWLM_DATA_KEY).
The manifest (labels, counts) and ``tokenizer.json`` stay plain, as in a language-model folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hwlm.config import to_dict
from hwlm.crypt import check_chunks, encrypt_bytes, encryption_section, key_for, load_key, read_encrypted
from hwlm.data.config import PrepareConfig
from hwlm.data.normalize import normalize
from hwlm.data.readers import json_lines
from hwlm.errors import ConfigError, DataError
from hwlm.io import atomic_dir, atomic_write_bytes, atomic_write_json, sha256_file

__all__ = ["prepare_classify", "ClassifyPrepareResult", "read_labelled", "dedupe", "stratified_split",
           "load_classify_manifest", "read_split", "DIGITS", "CLASSIFY_VERSION", "SPLITS"]

CLASSIFY_VERSION = 1
DIGITS = "builtin:digits"
SPLITS = ("train", "val", "test")
CSV_SUFFIXES = (".csv", ".tsv")


@dataclass
class ClassifyPrepareResult:
    """What ``prepare_classify`` made."""

    out: Path
    manifest: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {"out": str(self.out), "task": "classify", "labels": m["labels"], "class_counts": m["class_counts"],
                "imbalance": m["imbalance"], "removed": m["removed"],
                "examples": {s: m["splits"][s]["examples"] for s in SPLITS}, "seconds": round(self.seconds, 3)}


def _label_name(value: Any, where: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise DataError(f"{where}: label {value!r} is not a string or an integer; give one label per row")
    if isinstance(value, float):
        if not value.is_integer():
            raise DataError(f"{where}: label {value!r} is not an integer; use integer or string labels")
        value = int(value)
    name = str(value).strip()
    if not name:
        raise DataError(f"{where}: the label is empty; every row needs a label")
    return name


def _csv_rows(path: Path, text_field: str, label_field: str) -> Iterator[tuple[Any, Any, str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = reader.fieldnames or []
        for want, flag in ((text_field, "--text-field"), (label_field, "--label-field")):
            if want not in columns:
                raise DataError(f"{path} has no column {want!r} (columns: {', '.join(columns) or 'none'}); "
                                f"pass {flag} NAME")
        for i, row in enumerate(reader, start=2):
            yield row[text_field], row[label_field], f"{path}:{i}"


def _jsonl_rows(path: Path, text_field: str, label_field: str) -> Iterator[tuple[Any, Any, str]]:
    for i, row in json_lines(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i} is not a JSON object; each line needs {text_field!r} and {label_field!r}")
        for want, flag in ((text_field, "--text-field"), (label_field, "--label-field")):
            if want not in row:
                raise DataError(f"{path}:{i} has no field {want!r} (fields: {', '.join(row) or 'none'}); "
                                f"pass {flag} NAME")
        yield row[text_field], row[label_field], f"{path}:{i}"


def read_labelled(inputs: list[str], text_field: str, label_field: str, form: str = "nfkc",
                  strip_control: bool = True) -> list[tuple[str, str]]:
    """``(normalized text, label name)`` of every non-empty row of CSV/TSV/JSONL ``inputs``, in order."""
    if not inputs:
        raise DataError("prepare --task classify needs labelled files: give CSV or JSON Lines INPUTS "
                        f"(or {DIGITS})")
    rows: list[tuple[str, str]] = []
    for name in inputs:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"input {path} does not exist or is not a file: give CSV or JSON Lines files")
        suffix = path.suffix.lower()
        if suffix not in CSV_SUFFIXES + (".jsonl", ".ndjson", ".json"):
            raise DataError(f"{path} is neither CSV (.csv, .tsv) nor JSON Lines (.jsonl): convert it or rename it")
        reader = _csv_rows if suffix in CSV_SUFFIXES else _jsonl_rows
        for text, label, where in reader(path, text_field, label_field):
            if not isinstance(text, str):
                raise DataError(f"{where}: the text field {text_field!r} is not a string")
            text = normalize(text, form, strip_control).strip()
            if text:
                rows.append((text, _label_name(label, where)))
    if not rows:
        raise DataError(f"no labelled text found in {', '.join(inputs)}: check --text-field and the files")
    return rows


def dedupe(rows: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """One row per distinct text; texts seen with two or more labels are dropped. Keeps first-seen order.

    >>> dedupe([("a", "x"), ("a", "x"), ("b", "x"), ("b", "y"), ("c", "y")])
    ([('a', 'x'), ('c', 'y')], {'duplicates': 1, 'conflicting_texts': 1, 'conflicting_rows': 2})
    """
    labels: dict[str, set[str]] = defaultdict(set)
    count: Counter[str] = Counter()
    for text, label in rows:
        labels[text].add(label)
        count[text] += 1
    kept, seen = [], set()
    conflicting = {t for t, ls in labels.items() if len(ls) > 1}
    for text, label in rows:
        if text in conflicting or text in seen:
            continue
        seen.add(text)
        kept.append((text, label))
    dupes = sum(count[t] - 1 for t in seen)
    return kept, {"duplicates": dupes, "conflicting_texts": len(conflicting),
                  "conflicting_rows": sum(count[t] for t in conflicting)}


def _ordered_labels(names: set[str]) -> list[str]:
    """Integer labels in numeric order, otherwise alphabetical: the id of a label is its index here."""
    try:
        return sorted(names, key=lambda n: int(n))
    except ValueError:
        return sorted(names)


def check_classes(counts: Counter[str]) -> None:
    """At least two classes, each with at least two examples; else a one-line DataError."""
    if len(counts) < 2:
        only = next(iter(counts), "none")
        raise DataError(f"only one class ({only!r}) in the data: classification needs at least two labels; "
                        "check --label-field")
    single = sorted(n for n, c in counts.items() if c < 2)
    if single:
        raise DataError(f"class(es) {', '.join(repr(s) for s in single[:5])} have a single example, too few for a "
                        "stratified split (one to train on, one to hold out): add examples or drop those rows")


def stratified_split(labels: list[int], val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, list[int]]:
    """Row indices of each split, class by class, seeded; every class keeps a training example."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    rng = random.Random(seed)
    for label in sorted(by_class):
        idx = by_class[label]
        rng.shuffle(idx)
        n = len(idx)
        n_test = min(round(n * test_fraction), n - 1)
        n_val = min(round(n * val_fraction), n - 1 - n_test)
        out["test"] += idx[:n_test]
        out["val"] += idx[n_test:n_test + n_val]
        out["train"] += idx[n_test + n_val:]
    for s in SPLITS:
        out[s].sort()  # file order follows input order, not class order
    return out


def _digits(seed: int) -> tuple[list[list[float]], list[str]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(f"{DIGITS} needs scikit-learn: pip install 'hwlm[classify]'") from None
    d = load_digits()  # shipped inside scikit-learn: nothing is downloaded
    return [[float(v) / 16.0 for v in row] for row in d.data], [str(int(t)) for t in d.target]


def prepare_classify(cfg: PrepareConfig) -> ClassifyPrepareResult:
    """Build a classification folder at ``cfg.out`` from ``cfg.inputs`` (see the module docstring)."""
    t0 = time.perf_counter()
    key = load_key(cfg.key_file) if cfg.encrypt else None  # a bad key file stops here, before anything is read
    features = cfg.inputs == [DIGITS]
    removed = {"duplicates": 0, "conflicting_texts": 0, "conflicting_rows": 0}
    if features:
        xs, names = _digits(cfg.seed)
        rows: list[tuple[Any, str]] = list(zip(xs, names))
    else:
        rows, removed = dedupe(read_labelled(cfg.inputs, cfg.text_field, cfg.label_field, cfg.normalize,
                                             cfg.strip_control))
    counts = Counter(label for _, label in rows)
    check_classes(counts)
    labels = _ordered_labels(set(counts))
    label_id = {name: i for i, name in enumerate(labels)}
    ids = [label_id[label] for _, label in rows]
    parts = stratified_split(ids, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    class_counts = {s: {labels[k]: c for k, c in sorted(Counter(ids[i] for i in parts[s]).items())} for s in SPLITS}
    missing = [n for n in labels if n not in class_counts["train"]]
    if missing:  # cannot happen with stratified_split; guards any future split rule
        raise DataError(f"label(s) {', '.join(missing)} are absent from the training split; add examples")
    train_counts = [class_counts["train"][n] for n in labels]
    manifest: dict[str, Any] = {
        "version": CLASSIFY_VERSION, "task": "classify", "input": "features" if features else "text",
        "labels": labels, "label_map": label_id, "class_counts": class_counts,
        "imbalance": round(max(train_counts) / min(train_counts), 4), "removed": removed,
        "rows_read": len(rows) + removed["duplicates"] + removed["conflicting_rows"],
    }
    with atomic_dir(cfg.out, what="hwlm prepare") as tmp:
        if features:
            manifest["n_features"] = len(rows[0][0])
        else:
            manifest |= _write_tokenizer(cfg, [rows[i][0] for i in parts["train"]], tmp)
        manifest["splits"] = {}
        if key is not None:
            manifest["encryption"] = encryption_section(key)
        field = "x" if features else "text"
        for s in SPLITS:
            lines = "".join(json.dumps({field: rows[i][0], "label": ids[i]}, ensure_ascii=False) + "\n"
                            for i in parts[s]).encode("utf-8")
            name = f"{s}.jsonl" if key is None else f"{s}.jsonl.enc"
            atomic_write_bytes(tmp / name, lines if key is None else encrypt_bytes(lines, key))
            manifest["splits"][s] = {"file": name, "examples": len(parts[s]), "sha256": sha256_file(tmp / name)}
        manifest["config"] = to_dict(cfg)
        atomic_write_json(tmp / "manifest.json", manifest)
    return ClassifyPrepareResult(out=cfg.out, manifest=manifest, seconds=time.perf_counter() - t0)


def _write_tokenizer(cfg: PrepareConfig, train_texts: list[str], folder: Path) -> dict[str, Any]:
    """Train a BPE tokenizer on the training texts (or copy ``cfg.tokenizer``) into ``folder``."""
    from hwlm.data.tokenizer import TOKENIZER_FILE, load_tokenizer, save_tokenizer, token_id, train_tokenizer

    if cfg.tokenizer is not None:
        src = cfg.tokenizer / TOKENIZER_FILE if cfg.tokenizer.is_dir() else cfg.tokenizer
        tok = load_tokenizer(src)
        shutil.copyfile(src, folder / TOKENIZER_FILE)  # byte for byte: --init-from compares digests
        digest = sha256_file(folder / TOKENIZER_FILE)
    else:
        tok = train_tokenizer(train_texts, cfg.vocab_size, cfg.special_tokens)
        digest = save_tokenizer(tok, folder / TOKENIZER_FILE)
    eot = token_id(tok, cfg.eot_token)
    # The end-of-text token pads: no text contains it (specials in text are encoded as plain text),
    # and padding on the right with it is what Hugging Face's sequence classifiers expect.
    return {"vocab_size": tok.get_vocab_size(), "eot_id": eot, "pad_id": eot, "tokenizer_sha256": digest}


def load_classify_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a classification folder; a language-model folder is a one-line DataError."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"no manifest.json in {data_dir}: run `hwlm prepare --task classify --out {data_dir}` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise DataError(f"{path} cannot be read ({exc}); rerun hwlm prepare --task classify") from None
    if manifest.get("task") != "classify":
        raise DataError(f"{data_dir} is not a classification folder (task {manifest.get('task', 'lm')!r}): "
                        "prepare it with `hwlm prepare --task classify`")
    return manifest


def read_split(data_dir: str | Path, split: str, manifest: dict[str, Any] | None = None,
               verify: bool = True, key: bytes | None = None) -> tuple[list[Any], list[int]]:
    """``(texts or feature rows, label ids)`` of one split, its sha256 checked against the manifest.

    An encrypted folder's split is decrypted with ``key`` (else $HWLM_DATA_KEY), checked against the
    manifest's key id first: a wrong or missing key is one line, a changed chunk is named."""
    manifest = manifest or load_classify_manifest(data_dir)
    key = key_for(f"data folder {data_dir}", manifest.get("encryption"), key)
    if split not in manifest["splits"]:
        raise DataError(f"split {split!r} is not in {data_dir}; choose one of {', '.join(manifest['splits'])}")
    entry = manifest["splits"][split]
    path = Path(data_dir) / entry["file"]
    if not path.is_file():
        raise DataError(f"{path} listed in the manifest is missing; rerun hwlm prepare --task classify")
    if verify and hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
        if key is not None:
            check_chunks(path, key)  # names the chunk that fails, if one does
        raise DataError(f"{path} does not match its sha256 in the manifest; rerun hwlm prepare --task classify")
    field = "x" if manifest["input"] == "features" else "text"
    if key is None:
        text = path.read_text(encoding="utf-8")
    else:
        text = bytes(read_encrypted(path, key)).decode("utf-8")
    xs, ys = [], []
    for line in text.split("\n"):  # not splitlines(): U+2028 inside a text is not a line break here
        if not line:
            continue
        row = json.loads(line)
        xs.append(row[field])
        ys.append(int(row["label"]))
    return xs, ys
