"""LLM-as-judge: another model scores answers 0-100, or picks the better of two answers.

    from lmforge.evaluate.judge import JudgeArgs, run_judge, run_pairwise
    cfg = JudgeArgs(url="http://127.0.0.1:8000/v1", out="runs/judge-a.jsonl")
    run_judge(llm, cfg)      # llm answers the instructions, the judge scores each answer 0-100
    run_pairwise("runs/judge-a.jsonl", "runs/judge-b.jsonl", JudgeArgs(out="runs/a-vs-b.jsonl"))
    judge_answers("answers.jsonl", cfg)   # score answers written elsewhere (instruction + answer lines)

The judge is any OpenAI-compatible chat endpoint (`lmforge serve` included), reached with the `openai`
client; the API key comes from the environment variable `api_key_env` names. The prompt is a template
(`template`, a file, overrides the built-in one) with `{instruction}` and `{answer}` (pairwise:
`{answer_a}` and `{answer_b}`) in it.

- **Scores.** `parse_score` reads "Score: 87", "87/100", "8/10" (80), "I'd give it 87." or a bare "87";
  a reply with no score, or an ambiguous one, is a parse failure: counted, listed and kept (score null),
  never dropped. The mean comes with a seeded bootstrap confidence interval (`lmforge.evaluate.stats`).
- **Pairwise** (AlpacaEval-style win rate of model a over model b): each item is judged twice, the
  answers in both orders, so a judge that prefers a position cancels out (its two votes disagree: a
  tie). A vote is 1 for a, 0 for b, 1/2 for a tie; an item's score is the mean of its parsed votes.
- **Failures.** A call that fails to connect, times out, or gets a 429/5xx is retried `retries` times
  with a growing wait; then the run stops with one line. Every judged item is appended to `out` (one
  JSONL line) the moment it is judged, so nothing judged is lost, and `resume=True` continues the file.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import ConfigError, LmforgeError

if TYPE_CHECKING:
    from lmforge.api import LLM

SCORE_TEMPLATE = """\
You are a strict and fair judge. Rate how well the answer below responds to the instruction: is it \
correct, helpful, complete and clearly written? Use a scale from 0 (useless, wrong or off-topic) to \
100 (excellent: correct, complete, clear, nothing to improve).

[Instruction]
{instruction}

[Answer]
{answer}

Give one short sentence of reasons, then the last line exactly as "Score: N", where N is an integer \
from 0 to 100."""

PAIRWISE_TEMPLATE = """\
You are a strict and fair judge. Two assistants answered the same instruction. Decide which answer is \
better: more correct, helpful, complete and clear. The order of the answers says nothing about their \
quality, and a longer answer is not better for being longer.

[Instruction]
{instruction}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Give one short sentence of reasons, then the last line exactly as "[[A]]" if answer A is better, \
"[[B]]" if answer B is better, or "[[tie]]" if they are equally good."""

PLACEHOLDERS = {"score": ("{instruction}", "{answer}"), "pairwise": ("{instruction}", "{answer_a}", "{answer_b}")}


@dataclass
class JudgeArgs:
    """The judge: where it is, how it is asked, and where its verdicts are kept."""

    url: str = "http://127.0.0.1:8000/v1"
    """The OpenAI-compatible endpoint's base URL, ending in /v1 (an `lmforge serve` prints its own)."""
    model: str | None = None
    """The judge model's name at that endpoint (default: the first that /v1/models lists)."""
    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable holding the endpoint's API key (unset: no key, as `lmforge serve` wants)."""
    template: str | None = None
    """A file with the judge prompt, over the built-in one: {instruction} and {answer} in it (pairwise:
    {instruction}, {answer_a} and {answer_b})."""
    instructions: str | None = None
    """A JSONL of instructions for the model to answer (default: the shipped set, `lmforge data
    instructions`)."""
    limit: int | None = None
    """Judge the first `limit` instructions only."""
    out: str = "judge.jsonl"
    """The judged items, one JSONL line each, written as they are judged."""
    resume: bool = False
    """Continue an existing `out` file: items already in it are not answered or judged again."""
    max_new_tokens: int = 256
    """Longest answer the evaluated model writes."""
    temperature: float = 0.0
    """The evaluated model's sampling temperature (0: greedy)."""
    batch_size: int = 8
    """Answers generated together (also: at most this many are lost to a crash)."""
    judge_max_tokens: int = 256
    """Longest judge reply."""
    concurrency: int = 4
    """Judge requests in flight at once."""
    retries: int = 3
    """Retries of a failed judge request (connection error, timeout, 429, 5xx) before the run stops."""
    retry_wait: float = 1.0
    """Seconds before the first retry; doubled at each one (at most 30)."""
    timeout: float = 120.0
    """Seconds one judge request may take."""
    bootstrap: int = 1000
    """Bootstrap resamples of the confidence interval."""
    confidence: float = 0.95
    """The confidence interval's level."""
    seed: int = 0
    """Seeds the bootstrap and a sampled answer."""

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.url or ""):
            raise ConfigError(f"judge url {self.url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1")
        for name, low in (("limit", 1), ("max_new_tokens", 1), ("batch_size", 1), ("judge_max_tokens", 1),
                          ("concurrency", 1), ("retries", 0), ("bootstrap", 2)):
            value = getattr(self, name)
            if value is None and name == "limit":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"judge {name} must be an integer >= {low}, got {value!r}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"judge confidence must be between 0 and 1, got {self.confidence}")
        for name in ("retry_wait", "timeout", "temperature"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"judge {name} must be >= 0, got {getattr(self, name)}")

    def prompt_template(self, mode: str) -> str:
        """The judge prompt of `mode` ("score" or "pairwise"): the `template` file, or the built-in one."""
        from lmforge._io import read_text

        if self.template is None:
            return SCORE_TEMPLATE if mode == "score" else PAIRWISE_TEMPLATE
        text = read_text(Path(self.template), ConfigError)
        missing = [p for p in PLACEHOLDERS[mode] if p not in text]
        if missing:
            raise ConfigError(f"judge template {self.template}: no {missing[0]} in it (a {mode} template needs "
                              f"{', '.join(PLACEHOLDERS[mode])})")
        return text


def fill(template: str, **values: str) -> str:
    """`template` with each `{name}` replaced by its value (only those names: other braces stay)."""
    return re.sub(r"\{(" + "|".join(map(re.escape, values)) + r")\}", lambda m: values[m.group(1)], template)


# ---------------------------------------------------------------------------------------------
# reading the judge's replies
# ---------------------------------------------------------------------------------------------
_NUM = r"(\d+(?:\.\d+)?)"
# "87/100", "8 / 10", "87 out of 100": the score as a fraction of its scale
_FRACTION = re.compile(rf"(?<![\d.-]){_NUM}\s*(?:/|out\s+of)\s*{_NUM}(?![\d.])", re.IGNORECASE)
# "Score: 87", "rating of 87", "**Score**: 87", "I'd give it 87", "I rate this answer 87"
_LABELLED = re.compile(rf"\b(?:score|scores|scored|rating|rated|rate|grade|give|gives|giving|award|assign)\b"
                       rf"[^\d\n]{{0,24}}?(?<![\d.-]){_NUM}(?![\d.]*\d)", re.IGNORECASE)
_ANY_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_score(reply: str | None) -> float | None:
    """The 0-100 score in a judge's reply, or None (a parse failure) when it has none or it is unclear.

    The last "N/D" or "N out of D" (D > 0, N <= D) gives 100*N/D; else the last number after "score",
    "rating", "give"…; else the reply's only number. A score outside 0-100 is a failure.
    """
    if not reply:
        return None
    text = str(reply)
    value = None
    fractions = [(float(n), float(d)) for n, d in _FRACTION.findall(text) if 0 < float(d) and float(n) <= float(d)]
    if fractions:
        n, d = fractions[-1]
        value = 100.0 * n / d
    elif labelled := _LABELLED.findall(text):
        value = float(labelled[-1])
    elif len(numbers := _ANY_NUMBER.findall(text)) == 1:
        value = float(numbers[0])
    return value if value is not None and 0.0 <= value <= 100.0 else None


_VERDICT_BRACKETS = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_VERDICT_ALONE = re.compile(r"^\W*(?:(?:answer|response|assistant|output)\s+)?(A|B|tie)\W*$", re.IGNORECASE)
_VERDICT_BETTER = re.compile(r"\b(?:answer|response|assistant|output)\s+(A|B)\s+is\s+(?:the\s+)?better\b",
                             re.IGNORECASE)


def parse_verdict(reply: str | None) -> str | None:
    """"A", "B" or "tie" from a pairwise judge's reply ("[[A]]", "[[C]]" or "[[tie]]", a bare "B.",
    "Answer A is better"), or None (a parse failure)."""
    if not reply:
        return None
    text = str(reply).strip()
    found = _VERDICT_BRACKETS.findall(text) or _VERDICT_ALONE.findall(text) or _VERDICT_BETTER.findall(text)
    if not found:
        return None
    v = found[-1].upper()
    return "tie" if v in ("C", "TIE") else v


def swapped_prompts(template: str, instruction: str, answer_a: str, answer_b: str) -> tuple[str, str]:
    """The two pairwise prompts of one item: model a's answer first, then model b's first."""
    return (fill(template, instruction=instruction, answer_a=answer_a, answer_b=answer_b),
            fill(template, instruction=instruction, answer_a=answer_b, answer_b=answer_a))


def votes(verdicts: Sequence[str | None]) -> list[str | None]:
    """The two position verdicts ("A"/"B"/"tie"/None, of `swapped_prompts`' order) as votes for the
    models ("a"/"b"/"tie"/None): in the second prompt, position A holds model b's answer."""
    first, second = verdicts
    return [{"A": "a", "B": "b"}.get(first, first), {"A": "b", "B": "a"}.get(second, second)]


def item_score(model_votes: Sequence[str | None]) -> float | None:
    """Model a's share of an item: the mean of its parsed votes (a: 1, tie: 1/2, b: 0); None if none."""
    points = [{"a": 1.0, "tie": 0.5, "b": 0.0}[v] for v in model_votes if v is not None]
    return sum(points) / len(points) if points else None


# ---------------------------------------------------------------------------------------------
# talking to the endpoint
# ---------------------------------------------------------------------------------------------
class Judge:
    """An OpenAI-compatible chat endpoint with bounded retries; `ask(prompt)` returns the reply text."""

    def __init__(self, cfg: JudgeArgs, log: JudgedLog) -> None:
        import os

        try:
            import openai
        except ImportError:
            raise LmforgeError("the judge needs the openai client: pip install openai") from None
        self.cfg, self.log, self.openai = cfg, log, openai
        key = os.environ.get(cfg.api_key_env) or "none"
        self.client = openai.OpenAI(base_url=cfg.url, api_key=key, max_retries=0, timeout=cfg.timeout)
        self.model = cfg.model or self._first_model()

    def _first_model(self) -> str:
        listed = self._call(lambda: self.client.models.list().data, "GET /models")
        if not listed:
            raise LmforgeError(f"judge endpoint {self.cfg.url} lists no models; give the judge model's name")
        return listed[0].id

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        import time

        openai, cfg = self.openai, self.cfg
        transient = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
        for attempt in range(cfg.retries + 1):
            try:
                return fn()
            except transient as e:  # APITimeoutError is an APIConnectionError
                if attempt == cfg.retries:
                    tries = f"{attempt + 1} time{'s' * (attempt > 0)}"
                    raise LmforgeError(f"judge endpoint {cfg.url} unreachable: {what} failed {tries} "
                                       f"({_brief(e)}){self._kept()}") from None
                time.sleep(min(cfg.retry_wait * 2 ** attempt, 30.0))
            except openai.APIStatusError as e:
                raise LmforgeError(f"judge endpoint {cfg.url} answered {what} with {e.status_code} ({_brief(e)}); "
                                   f"check the judge URL (ending in /v1), the judge model's name and the key in "
                                   f"${cfg.api_key_env}{self._kept()}") from None

    def _kept(self) -> str:
        return f"; {len(self.log.done)} judged items are kept in {self.log.path}: rerun with --resume to continue"

    def ask(self, prompt: str) -> str:
        """The judge's reply to one user message (temperature 0)."""
        def call() -> str:
            r = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                    max_tokens=self.cfg.judge_max_tokens, temperature=0.0)
            return (r.choices[0].message.content or "") if r.choices else ""

        return self._call(call, "POST /chat/completions")

    def judge_items(self, items: Iterable[tuple[str, list[str]]], finish: Callable[[str, list[str]], dict]) -> None:
        """Ask every prompt of every (id, prompts) item, `concurrency` at a time; as soon as all of an
        item's replies are in, append `finish(id, replies)` to the log. A failure stops the run after
        the requests in flight; what was judged stays in the log."""
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        items = list(items)
        replies: dict[str, list[str | None]] = {key: [None] * len(prompts) for key, prompts in items}
        left = {key: len(prompts) for key, prompts in items}
        error: BaseException | None = None
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            pending = {pool.submit(self.ask, p): (key, i) for key, prompts in items for i, p in enumerate(prompts)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    key, i = pending.pop(future)
                    if future.cancelled():
                        continue
                    if future.exception() is not None:
                        if error is None:  # stop: cancel what has not started, keep what finishes
                            error = future.exception()
                            for f in pending:
                                f.cancel()
                        continue
                    replies[key][i] = future.result()
                    left[key] -= 1
                    if left[key] == 0:
                        self.log.append(finish(key, replies[key]))
        if error is not None:
            raise error


def _brief(e: Exception) -> str:
    msg = " ".join(str(getattr(e, "message", None) or e).split())
    return f"{type(e).__name__}: {msg[:200]}"


class JudgedLog:
    """The judged items of a run, one JSONL line each, appended and flushed as each is judged.

    An existing file needs `resume=True` (it is never overwritten); on resume, a last line cut short by a
    crash is dropped, and an item whose instruction differs from this run's is an error.
    """

    def __init__(self, path: str | Path, resume: bool, instructions: dict[str, str]) -> None:
        import json

        from lmforge._io import jsonl_objects, read_text

        self.path = Path(path)
        self.done: dict[str, dict] = {}
        text = read_text(self.path, LmforgeError) if self.path.exists() else ""
        if text.strip() and not resume:
            raise LmforgeError(f"{self.path} already holds judged items; pass --resume to continue it, "
                               "or choose another --out")
        if text and not text.endswith("\n"):  # the last line was cut short: judge that item again
            text = text[:text.rfind("\n") + 1]
            self.path.write_text(text)
        for lineno, rec in jsonl_objects(text.splitlines(), self.path, LmforgeError):
            key = str(rec.get("id"))
            if key not in instructions or rec.get("instruction") != instructions[key]:
                raise LmforgeError(f"{self.path}:{lineno}: item {key!r} is not one of this run's instructions; "
                                   "resume with the same instructions, or choose another --out")
            self.done[key] = rec
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._json = json

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(self._json.dumps(record, ensure_ascii=False) + "\n")
        self.done[str(record["id"])] = record


# ---------------------------------------------------------------------------------------------
# the two runs
# ---------------------------------------------------------------------------------------------
def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _interval(values: list[float], cfg: JudgeArgs) -> dict[str, Any]:
    from lmforge.evaluate.stats import bootstrap_ci, mean_stderr

    mean, _ = mean_stderr(values)
    std, low, high = bootstrap_ci(values, cfg.bootstrap, cfg.seed, cfg.confidence)
    return {"mean": mean, "stderr": std, "low": low, "high": high}


def _report_failures(what: str, failed: list[str], total: int) -> None:
    if failed:
        shown = ", ".join(failed[:10]) + (", …" if len(failed) > 10 else "")
        print(f"judge: {len(failed)} of {total} {what} had no readable verdict (kept, null): {shown}",
              file=sys.stderr)


def _score(judge: Judge, template: str, answered: list[dict]) -> None:
    """Judge each answered item (`id`, `instruction`, `answer`, …) 0-100, appending it to the log."""
    by_id = {it["id"]: it for it in answered}

    def finish(key: str, replies: list[str]) -> dict:
        return {**by_id[key], "judge_model": judge.model, "reply": replies[0], "score": parse_score(replies[0])}

    judge.judge_items(((it["id"], [fill(template, instruction=it["instruction"], answer=it["answer"])])
                       for it in answered), finish)


def run_judge(llm: LLM, cfg: JudgeArgs) -> dict[str, Any]:
    """Have `llm` answer the instructions, and the judge score each answer 0-100.

    Returns:
        `{"task": "judge", "metrics": {"judge_score", "judge_score_ci_low", "judge_score_ci_high",
        "parse_failures"}, "breakdown": {…}, "samples": [the judged items]}`; the samples are also in
        `cfg.out`, one JSONL line each.
    """
    from lmforge.data.instructions import read_instructions

    template = cfg.prompt_template("score")
    items = read_instructions(cfg.instructions, cfg.limit)
    log = JudgedLog(cfg.out, cfg.resume, {it["id"]: it["instruction"] for it in items})
    judge = Judge(cfg, log)
    todo = [it for it in items if it["id"] not in log.done]
    for chunk in _batches(todo, cfg.batch_size):
        answers = llm.chat([[{"role": "user", "content": it["instruction"]}] for it in chunk],
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed,
                           max_batch_size=cfg.batch_size)
        _score(judge, template, [{**it, "answer": a} for it, a in zip(chunk, answers)])
        print(f"judge: {len(log.done)}/{len(items)} items judged", file=sys.stderr)
    return summarise_scores([log.done[it["id"]] for it in items], cfg, judge.model)


def judge_answers(answers: str | Path | Sequence[dict], cfg: JudgeArgs) -> dict[str, Any]:
    """Score answers already written (a JSONL or dicts of `instruction` + `answer`, see `read_answers`)
    0-100: `run_judge` without the generation. Returns the same result dict."""
    template = cfg.prompt_template("score")
    given = read_answers(answers)
    keys = list(given)[:cfg.limit] if cfg.limit else list(given)
    log = JudgedLog(cfg.out, cfg.resume, {k: given[k]["instruction"] for k in keys})
    judge = Judge(cfg, log)
    _score(judge, template, [{"category": None, **given[k], "id": k} for k in keys if k not in log.done])
    return summarise_scores([log.done[k] for k in keys], cfg, judge.model)


def summarise_scores(samples: list[dict], cfg: JudgeArgs, judge_model: str) -> dict[str, Any]:
    """The result dict of judged items (each with an "id", a "score" or None, and a "category")."""
    from collections import defaultdict

    scores = [s["score"] for s in samples if s["score"] is not None]
    failed = [str(s["id"]) for s in samples if s["score"] is None]
    _report_failures("replies", failed, len(samples))
    ci = _interval(scores, cfg)
    by_cat = defaultdict(list)
    for s in samples:
        if s["score"] is not None:
            by_cat[s.get("category") or "all"].append(s["score"])
    return {"task": "judge",
            "metrics": {"judge_score": {"value": ci["mean"], "stderr": ci["stderr"]},
                        "judge_score_ci_low": {"value": ci["low"], "stderr": None},
                        "judge_score_ci_high": {"value": ci["high"], "stderr": None},
                        "parse_failures": {"value": float(len(failed)), "stderr": None}},
            "breakdown": {"items": len(samples), "scored": len(scores), "parse_failures": len(failed),
                          "failed_ids": failed, "confidence": cfg.confidence, "bootstrap": cfg.bootstrap,
                          "seed": cfg.seed, "judge_url": cfg.url, "judge_model": judge_model,
                          "categories": {c: sum(v) / len(v) for c, v in sorted(by_cat.items())}},
            "samples": samples}


def read_answers(source: str | Path | Sequence[dict]) -> dict[str, dict]:
    """A model's answers by id: a JSONL file (what `run_judge` writes, or lines of `instruction` +
    `answer`, with an optional `id`) or a list of such dicts. An id defaults to the line number."""
    from lmforge._io import jsonl_objects, read_text

    if isinstance(source, (str, Path)):
        rows = list(jsonl_objects(read_text(Path(source), LmforgeError).splitlines(), source, LmforgeError))
        name = str(source)
    else:
        rows, name = list(enumerate(source, start=1)), "answers"
    out: dict[str, dict] = {}
    for lineno, rec in rows:
        for field in ("instruction", "answer"):
            if not isinstance(rec.get(field), str):
                raise LmforgeError(f"{name}:{lineno}: missing field {field!r} (a string); each line needs "
                                   "'instruction' and 'answer'")
        key = str(rec.get("id", lineno))
        if key in out:
            raise LmforgeError(f"{name}:{lineno}: id {key!r} appears twice")
        out[key] = rec
    if not out:
        raise LmforgeError(f"{name}: no answers")
    return out


def run_pairwise(answers_a: str | Path | Sequence[dict], answers_b: str | Path | Sequence[dict],
                 cfg: JudgeArgs) -> dict[str, Any]:
    """Model a's win rate over model b: each item judged twice, the answers in both orders.

    `answers_a` and `answers_b` pair up by id and must hold the same instructions (`run_judge` files
    of the two models do). Returns `{"task": "pairwise", "metrics": {"win_rate", "win_rate_ci_low",
    "win_rate_ci_high", "wins", "ties", "losses", "parse_failures", "position_agreement"}, …}`.
    """
    template = cfg.prompt_template("pairwise")
    a, b = read_answers(answers_a), read_answers(answers_b)
    common = [k for k in a if k in b]
    if not common:
        raise LmforgeError("the two answer sets share no item ids; pair the answers of the same instructions")
    for k in common:
        if a[k]["instruction"] != b[k]["instruction"]:
            raise LmforgeError(f"item {k!r} has different instructions in the two answer sets")
    common = common[:cfg.limit] if cfg.limit else common
    log = JudgedLog(cfg.out, cfg.resume, {k: a[k]["instruction"] for k in common})
    judge = Judge(cfg, log)

    def finish(key: str, replies: list[str]) -> dict:
        verdicts = [parse_verdict(r) for r in replies]
        model_votes = votes(verdicts)
        return {"id": key, "instruction": a[key]["instruction"], "answer_a": a[key]["answer"],
                "answer_b": b[key]["answer"], "judge_model": judge.model, "replies": replies,
                "verdicts": verdicts, "votes": model_votes, "score": item_score(model_votes)}

    todo = [k for k in common if k not in log.done]
    judge.judge_items(((k, list(swapped_prompts(template, a[k]["instruction"], a[k]["answer"], b[k]["answer"])))
                       for k in todo), finish)
    samples = [log.done[k] for k in common]
    return summarise_pairwise(samples, cfg, judge.model, unpaired=len(a) + len(b) - 2 * len(common))


def summarise_pairwise(samples: list[dict], cfg: JudgeArgs, judge_model: str, unpaired: int = 0) -> dict[str, Any]:
    """The result dict of pairwise-judged items (each with "votes" and a "score" for model a)."""
    scores = [s["score"] for s in samples if s["score"] is not None]
    failed_votes = sum(v is None for s in samples for v in s["votes"])
    _report_failures("items", [str(s["id"]) for s in samples if s["score"] is None], len(samples))
    both = [s["votes"] for s in samples if None not in s["votes"]]
    counts = {"wins": sum(x > 0.5 for x in scores), "ties": sum(x == 0.5 for x in scores),
              "losses": sum(x < 0.5 for x in scores)}
    ci = _interval(scores, cfg)
    agreement = sum(v[0] == v[1] for v in both) / len(both) if both else float("nan")
    first = [s["verdicts"][i] for s in samples for i in (0, 1) if s["verdicts"][i] in ("A", "B")]
    metrics = {"win_rate": {"value": ci["mean"], "stderr": ci["stderr"]},
               "win_rate_ci_low": {"value": ci["low"], "stderr": None},
               "win_rate_ci_high": {"value": ci["high"], "stderr": None},
               **{k: {"value": float(v), "stderr": None} for k, v in counts.items()},
               "parse_failures": {"value": float(failed_votes), "stderr": None},
               "position_agreement": {"value": agreement, "stderr": None}}
    return {"task": "pairwise", "metrics": metrics,
            "breakdown": {"items": len(samples), "scored": len(scores), "unpaired_items": unpaired,
                          "failed_votes": failed_votes, "first_position_rate":
                          sum(v == "A" for v in first) / len(first) if first else float("nan"),
                          "confidence": cfg.confidence, "bootstrap": cfg.bootstrap, "seed": cfg.seed,
                          "judge_url": cfg.url, "judge_model": judge_model},
            "samples": samples}
