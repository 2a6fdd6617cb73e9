"""Instruction data whose answers a program checks: the finetuning and evaluation stages' yardstick.

    from lmforge.data.tasks import FAMILIES, make_tasks, check, score
    train, test = make_tasks(n_train=2000, n_test=300, seed=0)   # lists of records
    check("arithmetic", "The answer is 42.", "42")                 # -> False (exact match, normalised)
    score(test, predictions)                                       # -> {"arithmetic": 0.9, …, "overall": …}

Each family has several phrasings ("templates") of one task and a generator of random instances.
The split is **by template**: test instructions use phrasings never seen in training, so a gain on
the test split is the task learned, not the sentence memorised. A record is Alpaca-shaped
(`instruction`, `input`, `output`) plus `family` and `template` (its index in the family).

The checker compares the first line of a reply with the answer after normalisation (case, outer
whitespace and quotes, a trailing full stop); numeric families compare numbers (thousands
separators ignored, tolerance 1e-6). `lmforge data tasks --out DIR` writes `train.jsonl` and
`test.jsonl`.
"""

from __future__ import annotations

import datetime
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WORDS = (
    "apple river candle garden window silver market planet forest bridge castle yellow summer winter "
    "pencil rocket jungle orange guitar island butter dragon mirror camera ticket basket cotton violet "
    "falcon harbor meadow pillow rabbit saddle tunnel velvet wizard anchor breeze copper desert engine "
    "feather glacier hammer lantern marble needle oyster pepper quartz shadow thunder walnut zebra "
    "blanket cabin dolphin emerald fossil galaxy hollow insect kettle lemon magnet nectar olive parrot "
    "puzzle ribbon sketch tomato umbrella vessel willow"
).split()
NAMES = "Ana Ben Chloe David Emma Farid Grace Hiro Ines Jamal Kofi Lena Mateo Nora Omar Priya".split()
OBJECTS = "apples books marbles stamps coins pencils cookies shells cards stickers".split()


@dataclass(frozen=True)
class Family:
    """One task: its phrasings, a generator of (slots, answer), and how answers compare."""

    name: str
    templates: tuple[str, ...]
    make: Callable[[random.Random], tuple[dict, str]]
    numeric: bool = False


def _arith(r: random.Random) -> tuple[dict, str]:
    a, b = r.randint(10, 999), r.randint(10, 999)
    return {"a": a, "b": b}, str(a + b)


def _sub(r: random.Random) -> tuple[dict, str]:
    a, b = sorted((r.randint(10, 999), r.randint(10, 999)), reverse=True)
    return {"a": a, "b": b}, str(a - b)


def _mul(r: random.Random) -> tuple[dict, str]:
    a, b = r.randint(2, 30), r.randint(2, 30)
    return {"a": a, "b": b}, str(a * b)


_UNITS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("kilograms", "grams", 1000),
          ("hours", "minutes", 60), ("minutes", "seconds", 60), ("liters", "milliliters", 1000),
          ("centimeters", "millimeters", 10), ("days", "hours", 24)]


def _units(r: random.Random) -> tuple[dict, str]:
    src, dst, factor = r.choice(_UNITS)
    x = r.randint(2, 90)
    return {"x": x, "src": src, "dst": dst}, str(x * factor)


def _reverse(r: random.Random) -> tuple[dict, str]:
    w = r.choice(WORDS)
    return {"w": w}, w[::-1]


def _upper(r: random.Random) -> tuple[dict, str]:
    w = " ".join(r.sample(WORDS, r.randint(1, 3)))
    return {"w": w}, w.upper()


def _count_letter(r: random.Random) -> tuple[dict, str]:
    w = r.choice(WORDS)
    c = r.choice(sorted(set(w)))
    return {"w": w, "c": c}, str(w.count(c))


def _date(r: random.Random) -> tuple[dict, str]:
    start = datetime.date(2020, 1, 1) + datetime.timedelta(days=r.randint(0, 1800))
    n = r.randint(1, 40)
    return {"date": start.isoformat(), "n": n}, (start + datetime.timedelta(days=n)).isoformat()


def _numbers(r: random.Random) -> list[int]:
    return r.sample(range(1, 100), r.randint(3, 6))


def _sort(r: random.Random) -> tuple[dict, str]:
    xs = _numbers(r)
    return {"xs": ", ".join(map(str, xs))}, ", ".join(map(str, sorted(xs)))


def _max(r: random.Random) -> tuple[dict, str]:
    xs = _numbers(r)
    return {"xs": ", ".join(map(str, xs))}, str(max(xs))


def _min(r: random.Random) -> tuple[dict, str]:
    xs = _numbers(r)
    return {"xs": ", ".join(map(str, xs))}, str(min(xs))


def _json_field(r: random.Random) -> tuple[dict, str]:
    keys = r.sample(["name", "city", "color", "pet", "food", "sport", "tool"], 3)
    values = r.sample(WORDS, 3)
    key = r.choice(keys)
    return {"json": json.dumps(dict(zip(keys, values))), "key": key}, values[keys.index(key)]


def _commas(r: random.Random) -> tuple[dict, str]:
    n = r.randint(1000, 99_999_999)
    return {"n": n}, f"{n:,}"


def _word_problem(r: random.Random) -> tuple[dict, str]:
    a, b = r.randint(2, 60), r.randint(2, 60)
    return {"name": r.choice(NAMES), "a": a, "b": b, "obj": r.choice(OBJECTS)}, str(a + b)


def _word_count(r: random.Random) -> tuple[dict, str]:
    words = r.sample(WORDS, r.randint(3, 9))
    return {"s": " ".join(words)}, str(len(words))


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("addition", ("What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}.",
                        "What do you get when you add {b} to {a}?", "Find the sum of {a} and {b}.",
                        "{a} + {b} = ?"), _arith, numeric=True),
    Family("subtraction", ("What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}.",
                           "What is the difference between {a} and {b}?", "Take {b} away from {a}.",
                           "{a} - {b} = ?"), _sub, numeric=True),
    Family("multiplication", ("What is {a} times {b}?", "Multiply {a} by {b}.", "Compute {a} * {b}.",
                              "What is the product of {a} and {b}?", "{a} x {b} = ?",
                              "How much is {a} multiplied by {b}?"), _mul, numeric=True),
    Family("unit_conversion", ("Convert {x} {src} to {dst}.", "How many {dst} are in {x} {src}?",
                               "Express {x} {src} in {dst}.", "{x} {src} is how many {dst}?",
                               "Change {x} {src} into {dst}.", "What is {x} {src} in {dst}?"), _units,
           numeric=True),
    Family("reverse", ("Reverse the word '{w}'.", "Write '{w}' backwards.", "Spell '{w}' in reverse order.",
                       "What is '{w}' reversed?", "Give the letters of '{w}' from last to first.",
                       "Reverse this string: {w}"), _reverse),
    Family("uppercase", ("Write '{w}' in capital letters.", "Convert '{w}' to uppercase.",
                         "Make '{w}' all caps.", "Rewrite '{w}' using only upper-case letters.",
                         "Uppercase this text: {w}", "What is '{w}' in upper case?"), _upper),
    Family("letter_count", ("How many times does the letter '{c}' appear in '{w}'?",
                            "Count the letter '{c}' in the word '{w}'.", "In '{w}', how many '{c}'s are there?",
                            "How often does '{c}' occur in '{w}'?", "Number of '{c}' characters in '{w}'?",
                            "Tell me how many '{c}' letters '{w}' has."), _count_letter, numeric=True),
    Family("date_add", ("What date is {n} days after {date}?", "Add {n} days to {date}.",
                        "If today is {date}, what is the date in {n} days?",
                        "Which date comes {n} days after {date}? Answer as YYYY-MM-DD.",
                        "Starting from {date}, move forward {n} days.", "{date} plus {n} days is which date?"),
           _date),
    Family("sort", ("Sort these numbers in ascending order: {xs}", "Order from smallest to largest: {xs}",
                    "Arrange {xs} in increasing order.", "List {xs} sorted from low to high.",
                    "Put these in ascending order: {xs}", "Sort ascending: {xs}"), _sort),
    Family("maximum", ("What is the largest number in {xs}?", "Find the maximum of {xs}.",
                       "Which is the biggest of these numbers: {xs}?", "Give the highest value among {xs}.",
                       "Max of {xs}?", "Of {xs}, which number is greatest?"), _max, numeric=True),
    Family("minimum", ("What is the smallest number in {xs}?", "Find the minimum of {xs}.",
                       "Which is the lowest of these numbers: {xs}?", "Give the least value among {xs}.",
                       "Min of {xs}?", "Of {xs}, which number is smallest?"), _min, numeric=True),
    Family("json_field", ("Given the JSON {json}, what is the value of \"{key}\"?",
                          "Extract the field \"{key}\" from {json}.", "In {json}, what does \"{key}\" hold?",
                          "Read {json} and return the value of {key}.", "What is {key} in this JSON: {json}",
                          "From the object {json}, give me \"{key}\"."), _json_field),
    Family("thousands", ("Write {n} with commas as thousands separators.", "Format {n} with thousands separators.",
                         "Insert commas into {n} to group its digits by thousands.", "Add digit-group commas to {n}.",
                         "How is {n} written with comma separators?", "Format the number {n} like 1,234."),
           _commas),
    Family("word_problem", ("{name} has {a} {obj} and gets {b} more. How many {obj} does {name} have now?",
                            "{name} had {a} {obj}, then found {b} more. How many {obj} in total?",
                            "There are {a} {obj} in a box and {name} adds {b}. How many {obj} are in the box?",
                            "{name} collects {a} {obj} on Monday and {b} on Tuesday. How many altogether?",
                            "After receiving {b} {obj}, {name}, who had {a}, has how many {obj}?",
                            "{name} owns {a} {obj}. A friend gives {name} {b} more. Total {obj}?"),
           _word_problem, numeric=True),
    Family("word_count", ("How many words are in this sentence: '{s}'?", "Count the words in '{s}'.",
                          "'{s}' has how many words?", "Number of words in: {s}",
                          "Tell me the word count of '{s}'.", "How many separate words does '{s}' contain?"),
           _word_count, numeric=True),
]}
TEST_TEMPLATES = 2  # per family, the phrasings held out for the test split


def _split_templates(family: Family, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(len(family.templates)))
    random.Random(f"{seed}-{family.name}").shuffle(order)
    return sorted(order[TEST_TEMPLATES:]), sorted(order[:TEST_TEMPLATES])


def _record(family: Family, template: int, r: random.Random) -> dict:
    slots, answer = family.make(r)
    return {"instruction": family.templates[template].format(**slots), "input": "", "output": answer,
            "family": family.name, "template": template}


def make_tasks(n_train: int = 2000, n_test: int = 300, seed: int = 0,
               families: Sequence[str] | None = None) -> tuple[list[dict], list[dict]]:
    """Seeded train and test records, spread evenly over the families, split by template."""
    from lmforge.errors import LmforgeError

    names = list(families or FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise LmforgeError(f"unknown task family {unknown[0]!r} (known: {', '.join(FAMILIES)})")
    if n_train < 0 or n_test < 0:
        raise LmforgeError("n_train and n_test must be >= 0")
    r = random.Random(seed)
    train: list[dict] = []
    test: list[dict] = []
    for out, n, which in ((train, n_train, 0), (test, n_test, 1)):
        for i in range(n):
            family = FAMILIES[names[i % len(names)]]
            templates = _split_templates(family, seed)[which]
            out.append(_record(family, r.choice(templates), r))
    return train, test


def normalize(text: str) -> str:
    """The first non-empty line, without outer whitespace, quotes or a final full stop, lower-cased,
    inner whitespace collapsed."""
    line = next((ln for ln in str(text).strip().splitlines() if ln.strip()), "")
    line = re.sub(r"\s+", " ", line.strip()).strip("'\"`").rstrip(".").strip()
    return line.lower()


_NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?$")


def check(family: str, prediction: str, answer: str) -> bool:
    """Whether `prediction` is `answer` for a task of `family` (exact match after `normalize`)."""
    got, want = normalize(prediction), normalize(answer)
    if FAMILIES[family].numeric and _NUMBER.match(got) and _NUMBER.match(want):
        return abs(float(got.replace(",", "")) - float(want.replace(",", ""))) <= 1e-6
    return got == want


def score(records: Sequence[dict], predictions: Sequence[str]) -> dict[str, float]:
    """Exact match per family and `overall` (the mean over records) for these predictions."""
    from collections import defaultdict

    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    hits: dict[str, list[bool]] = defaultdict(list)
    for rec, pred in zip(records, predictions):
        hits[rec["family"]].append(check(rec["family"], pred, rec["output"]))
    out = {name: sum(h) / len(h) for name, h in sorted(hits.items())}
    every = [x for h in hits.values() for x in h]
    out["overall"] = sum(every) / len(every) if every else 0.0
    return out


def write_tasks(out_dir, n_train: int = 2000, n_test: int = 300, seed: int = 0) -> dict[str, int]:
    """Write `train.jsonl` and `test.jsonl` under `out_dir` (atomically); returns the counts."""
    from pathlib import Path

    from lmforge._io import atomic_write_text

    train, test = make_tasks(n_train, n_test, seed)
    out = Path(out_dir)
    for name, rows in (("train", train), ("test", test)):
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"train": len(train), "test": len(test), "families": len(FAMILIES)}
