"""PoP labels from an LLM judge: ask which of two preferences is the stronger one, in both orders.

For each pair (chosen as ``pop build`` chooses them, :mod:`popalign.pop.judge_pairs`) the judge is asked
twice, once with each preference shown first (:mod:`popalign.pop.judge_prompt`). Both answers naming
the same preference (or both "about the same") make a *consistent* verdict; answers that disagree are
*inconsistent* and become a tie or are dropped (``inconsistent``); an answer that cannot be read makes
the pair *unparseable*. Every pair is recorded with both answers; the label file gets the pairs with a
stronger side, in the ``(id_a, id_b, stronger)`` format that ``train pop_labels=...`` and
``pop import-labels`` read (iterative: the anchors' wins only, unless ``all_pairs``, as the label app
exports). Answers go through a content-keyed cache (:mod:`popalign.pop.judge_cache`) committed after
each one, so a killed run resumes where it stopped and nothing is asked twice.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from popalign.config import ConfigError, help_field
from popalign.data.schema import PreferenceTable
from popalign.pop.agreement import position_consistency
from popalign.pop.build import PoPSpec
from popalign.pop.judge_cache import Answer, AnswerCache, question_key
from popalign.pop.judge_client import JudgeClient, JudgeEndpointError
from popalign.pop.judge_pairs import IterativeQuestions, Question, random_questions
from popalign.pop.judge_prompt import SAME, load_template, parse_answer, prompt_text, render_messages

PER_MILLION = 1_000_000


@dataclass
class JudgeSpec:
    """The judge, its question and its answers' treatment (the pairs are chosen by a :class:`PoPSpec`)."""

    endpoint: str = help_field("", help="base URL of an OpenAI-compatible server, e.g. http://host:8000/v1")
    model: str = help_field("", help="model name the server knows (for transformers serve: the model folder)")
    api_key_env: str | None = help_field(
        None, help="environment variable holding the API key (none: local servers need no key)"
    )
    max_candidates: int | None = help_field(
        None, help="iterative: an anchor is finished after this many candidates (default: 4 * k)"
    )
    allow_same: bool = help_field(False, help='offer the judge "about the same" (SAME) as an answer')
    inconsistent: Literal["tie", "drop"] = help_field(
        "tie",
        help="pairs whose two orders disagree: tie (about the same) or drop (no verdict); both recorded",
    )
    all_pairs: bool = help_field(
        False, help="iterative: the label file also gets the pairs the candidate won (default: wins only)"
    )
    template: str | None = help_field(
        None, help="file holding the prompt template (default: the built-in one; see docs/pop_builder.md)"
    )
    max_chars: int = help_field(0, help="cut each prompt and reply to this many characters (0: never)")
    temperature: float = help_field(0.0, help="sampling temperature (0: greedy, the same answer each time)")
    max_tokens: int = help_field(8, help="longest answer in tokens (the answer is one word)")
    concurrency: int = help_field(4, help="questions in flight at once")
    timeout: float = help_field(120.0, help="seconds to wait for one answer before retrying")
    max_retries: int = help_field(
        5, help="retries with backoff on timeouts, 429 and 5xx (Retry-After honoured)"
    )
    price_prompt: float | None = help_field(None, help="price per million prompt tokens, for the cost")
    price_completion: float | None = help_field(None, help="price per million completion tokens")
    cache: str | None = help_field(
        None, help="answer cache (SQLite) shared by reruns (default: <output>.judge-cache.sqlite)"
    )

    def validate(self) -> None:
        if not self.endpoint:
            raise ConfigError("judge.endpoint: give the server's base URL, e.g. http://127.0.0.1:8000/v1")
        if not self.model:
            raise ConfigError("judge.model: give the model name the server knows")
        for name, low in (("max_tokens", 1), ("concurrency", 1), ("max_retries", 0), ("max_chars", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"judge.{name}: must be at least {low}, got {getattr(self, name)!r}")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ConfigError(f"judge.max_candidates: must be at least 1, got {self.max_candidates!r}")
        if not (self.timeout > 0 and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError("judge.timeout must be > 0 and judge.temperature >= 0")
        if self.inconsistent not in ("tie", "drop"):
            raise ConfigError(f"judge.inconsistent: {self.inconsistent!r} is not one of tie, drop")

    def sampling(self) -> dict[str, Any]:
        """The request's sampling settings; part of every cache key."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


@dataclass
class Verdict:
    """One judged pair. ``first``/``second``: the pick in each order as ``"a"`` (the preference shown
    first in the first order), ``"b"``, ``"same"`` or ``None`` (unparseable); ``stronger`` the verdict."""

    question: Question
    answers: tuple[str, str]
    first: str | None
    second: str | None
    stronger: str | None
    status: Literal["consistent", "inconsistent", "unparseable"]


def verdict(question: Question, answers: tuple[str, str], allow_same: bool, inconsistent: str) -> Verdict:
    """Combine the answers of both orders; the second order showed ``b`` first, so its letters swap."""
    first = parse_answer(answers[0], allow_same)
    raw_second = parse_answer(answers[1], allow_same)
    second = {"a": "b", "b": "a"}.get(raw_second, raw_second)
    if first is None or second is None:
        return Verdict(question, answers, first, second, None, "unparseable")
    if first == second:
        return Verdict(question, answers, first, second, first, "consistent")
    return Verdict(question, answers, first, second, SAME if inconsistent == "tie" else None, "inconsistent")


class Asker:
    """Both orders of each pair, through the cache, ``concurrency`` questions at a time."""

    def __init__(self, table: PreferenceTable, spec: JudgeSpec, client: JudgeClient, cache: AnswerCache):
        self.table, self.spec, self.client, self.cache = table, spec, client, cache
        self.template = load_template(spec.template)
        self.tokens = {"prompt": 0, "completion": 0, "prompt_cached": 0, "completion_cached": 0}
        self.questions = {"asked": 0, "from_cache": 0}
        self.progress = None
        self._lock = threading.Lock()  # the counters are shared by the worker threads

    def _pref(self, row: int) -> dict[str, str]:
        t = self.table
        return {"prompt": prompt_text(t.prompts[row]), "chosen": t.chosen[row], "rejected": t.rejected[row]}

    def _one(self, first: int, second: int) -> str:
        spec = self.spec
        messages = render_messages(
            self.template, self._pref(first), self._pref(second), spec.allow_same, spec.max_chars
        )
        key = question_key(spec.model, messages, spec.sampling())
        answer = self.cache.get(key)
        cached = answer is not None
        if not cached:
            answer = self.client.ask(messages, spec.sampling())
            self.cache.put(key, answer)
        self._count(answer, cached)
        return answer.text

    def _count(self, answer: Answer, cached: bool) -> None:
        suffix = "_cached" if cached else ""
        with self._lock:
            self.questions["from_cache" if cached else "asked"] += 1
            self.tokens["prompt" + suffix] += answer.prompt_tokens or 0
            self.tokens["completion" + suffix] += answer.completion_tokens or 0
            if self.progress is not None:
                self.progress.update(1)

    def ask(self, pool: ThreadPoolExecutor, questions: list[Question]) -> list[Verdict]:
        futures = [
            (pool.submit(self._one, q.first, q.second), pool.submit(self._one, q.second, q.first))
            for q in questions
        ]
        flat = [f for pair in futures for f in pair]
        wait(flat, return_when=FIRST_EXCEPTION)
        failed = next((f for f in flat if f.done() and f.exception() is not None), None)
        if failed is not None:
            for f in flat:
                f.cancel()
            wait(flat)
            raise failed.exception()
        spec = self.spec
        return [
            verdict(q, (a.result(), b.result()), spec.allow_same, spec.inconsistent)
            for q, (a, b) in zip(questions, futures, strict=True)
        ]


def judge_pairs(
    table: PreferenceTable, pop: PoPSpec, spec: JudgeSpec, cache_path: str | Path, progress: bool = True
) -> tuple[list[Verdict], dict[str, Any]]:
    """Ask the judge about the pairs ``pop`` chooses; returns the verdicts and the run's summary.

    Raises :class:`JudgeEndpointError` (one line, saying how many answers the cache keeps) when the
    endpoint fails after its retries; rerunning asks only the questions not in the cache.
    """
    pop.validate()
    spec.validate()
    margins = table.margins if table.has_scores else None
    client = JudgeClient(spec.endpoint, spec.model, spec.api_key_env, spec.timeout, spec.max_retries)
    client.check_model()
    cache = AnswerCache(cache_path)
    asker = Asker(table, spec, client, cache)
    verdicts: list[Verdict] = []
    try:
        with ThreadPoolExecutor(max_workers=spec.concurrency) as pool, _progress(progress) as bar:
            asker.progress = bar
            if pop.strategy == "random":
                questions, sampler_counts = random_questions(margins, len(table), pop)
                bar.total = 2 * len(questions)
                verdicts = asker.ask(pool, questions)
            else:
                verdicts, sampler_counts = _iterative(table, margins, pop, spec, asker, pool, bar)
    except JudgeEndpointError as exc:
        raise JudgeEndpointError(
            f"{exc}; {len(cache)} answers are kept in {cache_path}: rerun the same command to ask "
            "only the rest"
        ) from None
    finally:
        cache.close()
    return verdicts, summarize(verdicts, pop, spec, asker, sampler_counts)


def _iterative(table, margins, pop: PoPSpec, spec: JudgeSpec, asker: Asker, pool, bar):
    k = int(pop.k)
    sampler = IterativeQuestions(margins, len(table), pop.min_gap, k, spec.max_candidates or 4 * k, pop.seed)
    bar.total = 2 * k * len(table)  # an estimate: short anchors ask fewer, lost candidates more
    verdicts: list[Verdict] = []
    while questions := sampler.next_round():
        for v in asker.ask(pool, questions):
            q = v.question
            winner = {"a": q.first, "b": q.second}.get(v.stronger or "")
            sampler.record(q, winner)
            verdicts.append(v)
    return verdicts, {"target": k * len(table), **sampler.shortfall()}


class _NoBar:
    total = None

    def update(self, n: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(desc="judge questions", unit="q", dynamic_ncols=True)


def label_rows(verdicts: list[Verdict], table: PreferenceTable, pop: PoPSpec, spec: JudgeSpec) -> list[dict]:
    """The label file's rows: pairs with a stronger side (iterative: anchor wins unless ``all_pairs``)."""
    ids = [str(x) for x in table.ids]
    rows = []
    for v in verdicts:
        if v.stronger not in ("a", "b"):
            continue
        q = v.question
        winner = q.first if v.stronger == "a" else q.second
        if pop.strategy == "iterative" and not spec.all_pairs and winner != q.anchor:
            continue
        rows.append({"id_a": ids[q.first], "id_b": ids[q.second], "stronger": v.stronger})
    return rows


def record_rows(verdicts: list[Verdict], table: PreferenceTable) -> list[dict]:
    """Every judged pair with both answers, for the records file (``agreement`` reads it)."""
    ids = [str(x) for x in table.ids]
    return [
        {
            "id_a": ids[v.question.first],
            "id_b": ids[v.question.second],
            "anchor": None if v.question.anchor is None else ids[v.question.anchor],
            "stronger": v.stronger,
            "first": v.first,
            "second": v.second,
            "status": v.status,
            "answers": list(v.answers),
        }
        for v in verdicts
    ]


def summarize(verdicts: list[Verdict], pop: PoPSpec, spec: JudgeSpec, asker: Asker, sampler: dict) -> dict:
    """Counts, position bias, tokens and cost of a run (the ``<output>.judge.json`` content)."""
    status = {s: sum(v.status == s for v in verdicts) for s in ("consistent", "inconsistent", "unparseable")}
    tokens = asker.tokens
    cost = None
    if spec.price_prompt is not None or spec.price_completion is not None:
        cost = (
            tokens["prompt"] * (spec.price_prompt or 0.0)
            + tokens["completion"] * (spec.price_completion or 0.0)
        ) / PER_MILLION
    settings = {name: value for name, value in asdict(spec).items() if name != "api_key_env"}
    return {
        "format": "popalign.pop_judge/1",
        "settings": {
            "pop": {n: getattr(pop, n) for n in ("strategy", "k", "min_gap", "seed")},
            "judge": settings,
        },
        "sampler": sampler,
        "pairs": {
            "judged": len(verdicts),
            **status,
            "ties": sum(v.stronger == SAME for v in verdicts),
            "with_stronger_side": sum(v.stronger in ("a", "b") for v in verdicts),
        },
        "questions": dict(asker.questions),
        "position": position_consistency(
            [(v.first, v.second) for v in verdicts if v.status != "unparseable"]
        ),
        "tokens": dict(tokens),
        "cost": cost,
    }
