"""Text-classification data: a CSV or JSONL of texts and labels -> deduplicated, stratified splits.

    data = load_classification("sms-spam.csv", text_key="text", label_key="spam", names={"0": "ham", "1": "spam"})
    data.train, data.val, data.test      # lists of (text, class index)
    data.classes                         # ["ham", "spam"]
    data.summary()                       # one line: sizes per split and class, duplicates dropped

Duplicate texts are dropped (the first occurrence stays) before splitting, so no text is in two
splits. `balance` down-samples every class to the size of the smallest. The split is stratified and
seeded: each class is shuffled and cut into test / val / train by the fractions.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmforge._io import jsonl_objects, read_text
from lmforge.errors import LmforgeError


class ClassifyDataError(LmforgeError):
    """A bad classification data file or setting."""


@dataclass
class ClassifyData:
    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    duplicates: int = 0
    source: str = ""

    def summary(self) -> str:
        parts = []
        for split in ("train", "val", "test"):
            c = Counter(label for _, label in getattr(self, split))
            parts.append(f"{split} {len(getattr(self, split))} (" + ", ".join(
                f"{name} {c[i]}" for i, name in enumerate(self.classes)) + ")")
        return f"{self.source}: " + "; ".join(parts) + f"; {self.duplicates} duplicate texts dropped"


def _rows(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """(where, row) pairs and the column names of a CSV or JSONL file."""
    text = read_text(path, ClassifyDataError)
    if path.suffix == ".csv":
        try:
            reader = csv.DictReader(text.splitlines())
            rows = [(f"{path}:{i + 2}", row) for i, row in enumerate(reader)]
        except csv.Error as e:
            raise ClassifyDataError(f"{path}: not valid CSV ({e})") from None
        return rows, list(reader.fieldnames or [])
    if path.suffix in (".jsonl", ".json"):
        rows = [(f"{path}:{n}", obj) for n, obj in jsonl_objects(text.splitlines(), path, ClassifyDataError)]
        return rows, sorted({k for _, obj in rows for k in obj})
    raise ClassifyDataError(f"{path}: expected a .csv or .jsonl file")


def load_classification(path: str | Path, text_key: str = "text", label_key: str = "label",
                        classes: list[str] | None = None, names: dict[str, str] | None = None,
                        balance: bool = False, val_fraction: float = 0.1, test_fraction: float = 0.2,
                        seed: int = 0, limit: int | None = None) -> ClassifyData:
    """Read, deduplicate, optionally balance and split a labelled text file.

    Args:
        path: a .csv (with a header row) or .jsonl file.
        text_key, label_key: the columns (keys) holding the text and the label.
        classes: the class names in index order; a label not among them is an error. Default: the
            sorted distinct labels (after `names`).
        names: renames raw label values (`{"0": "ham", "1": "spam"}`).
        balance: down-sample every class to the smallest class's size.
        val_fraction, test_fraction: shares of each class held out.
        seed: shuffling seed.
        limit: use at most this many texts (after deduplication and balancing), a seeded sample that
            keeps each class's share.
    """
    path = Path(path)
    if limit is not None and limit < 2:
        raise ClassifyDataError(f"limit must be >= 2 (at least one text per class), got {limit}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ClassifyDataError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
                                "and leave something to train on")
    rows, columns = _rows(path)
    for key in (text_key, label_key):
        if key not in columns:
            raise ClassifyDataError(f"{path}: no column {key!r} (columns: {', '.join(c for c in columns if c) or 'none'});"
                                    f" set --data.{'text' if key == text_key else 'label'}_key")
    seen: set[str] = set()
    items: list[tuple[str, str]] = []
    duplicates = 0
    for where, row in rows:
        text, label = row.get(text_key), row.get(label_key)
        if not isinstance(text, str) or not text.strip():
            raise ClassifyDataError(f"{where}: the text ({text_key!r}) is missing or empty")
        if label is None or isinstance(label, (dict, list)) or str(label).strip() == "":
            raise ClassifyDataError(f"{where}: the label ({label_key!r}) is missing")
        label = str(label).strip()
        label = (names or {}).get(label, label)
        if text in seen:
            duplicates += 1
            continue
        seen.add(text)
        items.append((text, label))
    if not items:
        raise ClassifyDataError(f"{path}: no rows")
    found = sorted({label for _, label in items})
    classes = list(classes) if classes else found
    unknown = [lab for lab in found if lab not in classes]
    if unknown:
        where = next(w for w, r in rows if (names or {}).get(str(r.get(label_key)).strip(), str(r.get(label_key)).strip())
                     == unknown[0])
        raise ClassifyDataError(f"{where}: label {unknown[0]!r} is not among the classes {classes}")
    if len(found) < 2:
        raise ClassifyDataError(f"{path}: every row has the label {found[0]!r}; a classifier needs at least two classes")
    rng = random.Random(seed)
    by_class: dict[int, list[str]] = {i: [] for i in range(len(classes))}
    for text, label in items:
        by_class[classes.index(label)].append(text)
    if balance:
        smallest = min(len(v) for v in by_class.values() if v)
        by_class = {i: rng.sample(v, min(len(v), smallest)) for i, v in by_class.items()}
    total = sum(len(v) for v in by_class.values())
    if limit is not None and limit < total:  # each class keeps its share (and at least one text)
        by_class = {i: rng.sample(v, max(1, round(len(v) * limit / total)) if v else []) for i, v in by_class.items()}
    train, val, test = [], [], []
    for i, texts in by_class.items():
        texts = list(texts)
        rng.shuffle(texts)
        n_test, n_val = round(len(texts) * test_fraction), round(len(texts) * val_fraction)
        test += [(t, i) for t in texts[:n_test]]
        val += [(t, i) for t in texts[n_test:n_test + n_val]]
        train += [(t, i) for t in texts[n_test + n_val:]]
    for split in (train, val, test):
        rng.shuffle(split)
    return ClassifyData(classes, train, val, test, duplicates, str(path))
