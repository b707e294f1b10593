"""PoP labels from an LLM judge: prompt, answers, pair choice, and a run against a fake local server.

The fake server (stdlib ``http.server`` on loopback) plays an OpenAI-compatible endpoint whose judge
knows the scores: it names the preference with the larger margin, so every expected label is worked
out by hand from the margins below. Faults (429, malformed answers, a dead port, an unknown model) are
scripted per test. The real server (``transformers serve``) is in tests/integration/test_judge_server.py.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

pytest.importorskip("openai")

from popalign.data.load import load_preferences  # noqa: E402
from popalign.errors import PopalignError  # noqa: E402
from popalign.pop.build import PoPSpec  # noqa: E402
from popalign.pop.judge import JudgeSpec, judge_pairs, label_rows, verdict  # noqa: E402
from popalign.pop.judge_client import JudgeEndpointError  # noqa: E402
from popalign.pop.judge_pairs import IterativeQuestions, Question  # noqa: E402
from popalign.pop.judge_prompt import check_template, parse_answer, render_messages  # noqa: E402
from popalign.pop.labels import load_pop_labels  # noqa: E402

# Preference Pi has margin MARGINS[i]: any two differ by at least 1, and not in row order.
MARGINS = [3, 0, 5, 1, 4, 2]
MODEL = "fake-judge"


def write_prefs(path):
    rows = [
        {
            "id": f"p{i}",
            "prompt": f"P{i}",
            "chosen": f"good {i}",
            "rejected": f"bad {i}",
            "score_chosen": 5.0 + m,
            "score_rejected": 5.0,
        }
        for i, m in enumerate(MARGINS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class FakeJudge:
    """Scripted OpenAI-compatible endpoint; ``answer(body, hit)`` returns ``(status, headers, text)``."""

    def __init__(self) -> None:
        self.hits: list[tuple[float, int]] = []  # (time, status) of each chat request
        self.models = [MODEL]
        self.answer = self.by_margin
        self.lock = threading.Lock()

    @staticmethod
    def by_margin(body, hit):
        user = body["messages"][-1]["content"]
        a, b = (int(x) for x in re.findall(r"Prompt:\nP(\d+)", user))
        return 200, {}, "A" if MARGINS[a] > MARGINS[b] else "B"

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.endswith("/models"):
                    self._send(
                        200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]}
                    )
                else:
                    self._send(404, {"error": {"message": "no such path"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    hit = len(fake.hits)
                    status, headers, text = fake.answer(body, hit)
                    fake.hits.append((time.monotonic(), status))
                if status != 200:
                    self._send(status, {"error": {"message": text}}, headers)
                    return
                self._send(
                    200,
                    {
                        "id": f"c{hit}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text},
                            }
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
                    },
                )

        return Handler


@pytest.fixture
def fake():
    judge = FakeJudge()
    server = ThreadingHTTPServer(("127.0.0.1", 0), judge.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    judge.endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield judge
    server.shutdown()
    server.server_close()


@pytest.fixture
def table(tmp_path):
    return load_preferences(str(write_prefs(tmp_path / "prefs.jsonl")))[0]


def spec_for(fake, **kw):
    return JudgeSpec(endpoint=fake.endpoint, model=MODEL, **{"max_retries": 2, "timeout": 10.0, **kw})


# --- the question and the answer -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, allow_same, expected",
    [
        ("A", False, "a"),
        (" b.", False, "b"),
        ("**A**", False, "a"),
        ("Preference B is clearer", False, "b"),
        ("Answer: A", False, "a"),
        ("SAME", True, "same"),
        ("SAME", False, None),  # not offered, so not accepted
        ("Both are fine", False, None),
        ("Absolutely A", False, None),  # read from the start only: no guessing
        ("A or B", False, None),  # the instruction echoed
        ("A/b", False, None),
        ("A\n\n### Preference B", False, "a"),  # what follows the answer's line is not read
        ("", False, None),
    ],
)
def test_answers_are_read_from_their_start(text, allow_same, expected):
    assert parse_answer(text, allow_same) == expected


def test_the_template_shows_both_preferences_in_the_order_asked():
    first = {"prompt": "P1", "chosen": "c1", "rejected": "r1"}
    second = {"prompt": "P2 ${not a placeholder}", "chosen": "c2" * 10, "rejected": "r2"}
    from popalign.pop.judge_prompt import DEFAULT_TEMPLATE

    messages = render_messages(DEFAULT_TEMPLATE, first, second, allow_same=True, max_chars=8)
    user = messages[-1]["content"]
    assert user.index("P1") < user.index("### Preference B") < user.index("P2 ${not")
    assert "c2c2c2c2 [...]" in user and "c2c2c2c2c" not in user  # cut to 8 characters
    assert "SAME" in user and messages[0]["role"] == "system"


@pytest.mark.parametrize(
    "text, match",
    [
        ("${prompt_a} ${chosen_a} ${rejected_a} ${prompt_b} ${chosen_b} ${rejected_b} ${score}", "unknown"),
        ("${prompt_a} ${chosen_a} ${rejected_a} ${prompt_b} ${chosen_b}", r"never shows \$\{rejected_b\}"),
        ("costs $ 5 ${prompt_a}", "'\\$\\$'"),
    ],
)
def test_a_bad_template_file_is_one_error_naming_it(text, match):
    with pytest.raises(PopalignError, match=match):
        check_template(text, "my_template.txt")


@pytest.mark.parametrize(
    "answers, inconsistent, stronger, status",
    [
        (("A", "B"), "tie", "a", "consistent"),  # second order showed b first: its "B" is our a
        (("B", "A"), "tie", "b", "consistent"),
        (("A", "A"), "tie", "same", "inconsistent"),  # always the first shown: position bias
        (("A", "A"), "drop", None, "inconsistent"),
        (("A", "??"), "tie", None, "unparseable"),
    ],
)
def test_both_orders_combine_into_one_verdict(answers, inconsistent, stronger, status):
    v = verdict(Question(0, 1), answers, allow_same=False, inconsistent=inconsistent)
    assert (v.stronger, v.status) == (stronger, status)


# --- which pairs ---------------------------------------------------------------------------------------


def test_iterative_asks_each_anchor_until_k_wins_or_max_candidates():
    margins = np.arange(6, dtype=float)
    sampler = IterativeQuestions(margins, 6, min_gap=1.0, k=2, max_candidates=3, seed=0)
    asked: dict[int, list[int]] = {}
    while questions := sampler.next_round():
        for q in questions:
            other = q.second if q.first == q.anchor else q.first
            assert margins[q.anchor] - margins[other] >= 1  # only weaker candidates
            asked.setdefault(q.anchor, []).append(other)
            # A judge that calls the anchor stronger only against margin-0 P0.
            sampler.record(q, q.anchor if other == 0 else other)
    # P0 has no weaker candidate; P1 has only P0 (1 win, short by 1); the others try 3 candidates and
    # win once (P0 among them) or never.
    assert 0 not in asked and asked[1] == [0]
    for anchor in range(2, 6):
        assert len(asked[anchor]) == min(3, anchor) and len(set(asked[anchor])) == len(asked[anchor])
    assert sampler.wins[1] == 1
    assert sampler.shortfall()["preferences_short"] == 6  # nobody reached k = 2 wins with this judge


# --- runs against the fake server ----------------------------------------------------------------------


def test_random_run_gives_the_labels_the_scores_give_and_a_rerun_asks_nothing(fake, table, tmp_path):
    pop = PoPSpec(strategy="random", k=1, min_gap=1.0, seed=3)
    cache = tmp_path / "cache.sqlite"
    verdicts, summary = judge_pairs(table, pop, spec_for(fake), cache, progress=False)
    assert len(verdicts) == 6 and len(fake.hits) == 12  # k * N pairs, two orders each
    assert all(v.status == "consistent" for v in verdicts)
    assert summary["questions"] == {"asked": 12, "from_cache": 0}
    assert summary["tokens"]["prompt"] == 1200 and summary["tokens"]["completion"] == 12
    # A judge without position bias picks the first shown in exactly one of each pair's two orders.
    pos = summary["position"]
    assert (pos["pairs"], pos["answers_a_or_b"], pos["picked_first_shown"], pos["consistent"]) == (
        6,
        12,
        0.5,
        1.0,
    )
    rows = label_rows(verdicts, table, pop, spec_for(fake))
    from popalign.pop.labels import write_labels

    pairs = load_pop_labels(write_labels(rows, tmp_path / "labels.jsonl"), table)
    assert len(pairs) == 6
    assert np.all(table.margins[pairs.strong_idx] > table.margins[pairs.weak_idx])
    # The same command again: every answer comes from the cache, the server sees nothing.
    _, again = judge_pairs(table, pop, spec_for(fake), cache, progress=False)
    assert len(fake.hits) == 12 and again["questions"] == {"asked": 0, "from_cache": 12}
    assert again["tokens"]["prompt"] == 0 and again["tokens"]["prompt_cached"] == 1200


def test_iterative_run_exports_the_anchors_wins(fake, table, tmp_path):
    pop = PoPSpec(strategy="iterative", k=1, min_gap=1.0, seed=0)
    spec = spec_for(fake, price_prompt=2.0, price_completion=10.0)
    verdicts, summary = judge_pairs(table, pop, spec, tmp_path / "c.sqlite", progress=False)
    # The judge knows the scores, so every anchor wins its first candidate: one pair per anchor that has
    # one; the margin-0 preference has none.
    assert len(verdicts) == 5 and summary["sampler"]["preferences_short"] == 1
    rows = label_rows(verdicts, table, pop, spec)
    assert len(rows) == 5
    assert summary["cost"] == pytest.approx((1000 * 2.0 + 10 * 10.0) / 1e6)


def test_429_answers_are_retried_after_the_servers_delay(fake, table, tmp_path):
    def busy_at_first(body, hit):
        if hit < 2:
            return 429, {"Retry-After": "0.3"}, "slow down"
        return FakeJudge.by_margin(body, hit)

    fake.answer = busy_at_first
    spec = spec_for(fake, concurrency=1)
    verdicts, summary = judge_pairs(
        table, PoPSpec("random", k=1, seed=3), spec, tmp_path / "c", progress=False
    )
    assert [s for _, s in fake.hits[:3]] == [429, 429, 200]
    assert fake.hits[1][0] - fake.hits[0][0] >= 0.3 and fake.hits[2][0] - fake.hits[1][0] >= 0.3
    assert summary["questions"]["asked"] == 12 and all(v.status == "consistent" for v in verdicts)


def test_too_many_429_stop_the_run_in_one_line_and_keep_the_answers(fake, table, tmp_path):
    fake.answer = lambda body, hit: FakeJudge.by_margin(body, hit) if hit < 4 else (429, {}, "quota")
    spec = spec_for(fake, concurrency=1, max_retries=1)
    with pytest.raises(JudgeEndpointError, match=r"HTTP 429 after retries.*4 answers are kept") as err:
        judge_pairs(table, PoPSpec("random", k=1, seed=3), spec, tmp_path / "c", progress=False)
    assert "\n" not in str(err.value)


def test_malformed_answers_are_counted_never_a_crash(fake, table, tmp_path):
    def chatty(body, hit):
        status, headers, text = FakeJudge.by_margin(body, hit)
        return (status, headers, "I cannot decide." if hit % 4 == 0 else text)

    fake.answer = chatty
    pop = PoPSpec("random", k=1, seed=3)
    spec = spec_for(fake, concurrency=1)
    verdicts, summary = judge_pairs(table, pop, spec, tmp_path / "c", progress=False)
    bad = sum(v.status == "unparseable" for v in verdicts)
    assert bad == summary["pairs"]["unparseable"] == 3  # hits 0, 4, 8: the first order of pairs 1, 3, 5
    assert len(label_rows(verdicts, table, pop, spec)) == 3


def test_a_dead_endpoint_is_one_line(table, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    spec = JudgeSpec(endpoint=f"http://127.0.0.1:{port}/v1", model=MODEL, max_retries=0, timeout=5)
    with pytest.raises(JudgeEndpointError, match="cannot reach the endpoint") as err:
        judge_pairs(table, PoPSpec("random", k=1), spec, tmp_path / "c", progress=False)
    assert "\n" not in str(err.value)


def test_a_model_the_server_lacks_is_named(fake, table, tmp_path):
    spec = JudgeSpec(endpoint=fake.endpoint, model="gpt-nope", max_retries=0)
    with pytest.raises(
        JudgeEndpointError, match=r"does not serve model 'gpt-nope' \(it serves: fake-judge\)"
    ):
        judge_pairs(table, PoPSpec("random", k=1), spec, tmp_path / "c", progress=False)
    assert fake.hits == []  # stopped before the first question


def test_cli_judge_then_agreement(fake, tmp_path, capsys):
    from popalign.cli.main import main

    prefs = write_prefs(tmp_path / "prefs.jsonl")
    out = tmp_path / "judge" / "labels.csv"
    argv = ["pop", "judge", str(prefs), "--strategy", "random", "-k", "1", "--seed", "3"]
    argv += ["--endpoint", fake.endpoint, "--model", MODEL, "--no-progress", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "questions: 12 asked, 0 from the cache" in printed and "6 labels" in printed
    records = out.with_name("labels.csv.judge.jsonl")
    assert len(records.read_text().splitlines()) == 6
    summary = json.loads(out.with_name("labels.csv.judge.json").read_text())
    assert summary["label_rows"] == 6 and "api_key_env" not in summary["settings"]["judge"]
    assert main(["pop", "agreement", str(records), str(out), "--prefs", str(prefs)]) == 0
    printed = capsys.readouterr().out
    assert "verdicts against the scores: 100.0% of 6 decided agree" in printed
    assert "single answers (each order apart) against the scores: 100.0% of 12 decided agree" in printed
    assert "6 shared pairs, agree 100.0%, Cohen's kappa 1.000" in printed
    assert "100.0% of 6 pairs consistent" in printed


def test_a_template_file_and_about_the_same_answers(fake, table, tmp_path):
    template = tmp_path / "mine.txt"
    template.write_text(
        "MY QUESTION\nPrompt:\n${prompt_a}\n${chosen_a}\n${rejected_a}\n"
        "Prompt:\n${prompt_b}\n${chosen_b}\n${rejected_b}\n${answer_format}\n"
    )
    seen = []

    def near_ties_are_the_same(body, hit):
        user = body["messages"][-1]["content"]
        seen.append(user)
        a, b = (int(x) for x in re.findall(r"Prompt:\nP(\d+)", user))
        if abs(MARGINS[a] - MARGINS[b]) == 1:
            return 200, {}, "SAME"
        return FakeJudge.by_margin(body, hit)

    fake.answer = near_ties_are_the_same
    pop = PoPSpec("random", k=1, seed=3)
    spec = spec_for(fake, template=str(template), allow_same=True)
    verdicts, summary = judge_pairs(table, pop, spec, tmp_path / "c", progress=False)
    assert all(u.startswith("MY QUESTION") and "SAME" in u for u in seen)
    margins = table.margins
    near = [abs(margins[v.question.first] - margins[v.question.second]) == 1 for v in verdicts]
    assert 0 < sum(near) < len(verdicts)  # both kinds of pair are drawn
    assert summary["pairs"]["ties"] == sum(near) and all(v.status == "consistent" for v in verdicts)
    assert len(label_rows(verdicts, table, pop, spec)) == len(verdicts) - sum(near)
