"""Loss forms, margin sources and weightings as parts: hand-worked values, registries, docs, custom methods.

The running example of tests/unit/test_losses.py: chosen reward 0.2, rejected -0.1, so ``z = 0.3``.
``softplus(x) = log(1 + e^x)``; ``softplus(x) - softplus(-x) = x`` shortens several hand computations.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from popalign.data.schema import PreferenceTable
from popalign.errors import PopalignError
from popalign.losses.compose import method_loss
from popalign.losses.forms import FORMS, get_form
from popalign.losses.params import DEFAULT_BETA, LossParams
from popalign.losses.preference import preference_loss
from popalign.losses.sources import MARGIN_SOURCES, ROW_INPUTS, MarginInputs, get_source
from popalign.method_tables import docs_tables
from popalign.methods import (
    CUSTOM,
    EXTENSIONS,
    METHODS,
    Method,
    all_methods,
    get_method,
    resolve_method,
)

REPO = Path(__file__).resolve().parents[2]
LOG2 = math.log(2.0)


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def loss(form: str, chosen=0.2, rejected=-0.1, margin=None, eps=0.0, beta=0.1, lengths=(1.0, 1.0)) -> float:
    out = preference_loss(
        t(chosen),
        t(rejected),
        margin=margin,
        form=get_form(form),
        params=LossParams(beta=beta, label_smoothing=eps),
        chosen_lengths=t(lengths[0]),
        rejected_lengths=t(lengths[1]),
    )
    return out.losses.item()


# ---- each form: without a margin, with one, and at initialisation (z = 0) ----------------------------


def test_sigmoid_is_the_default_form():
    assert loss("sigmoid") == pytest.approx(softplus(-0.3), abs=1e-12)  # 0.5543552
    assert loss("sigmoid", margin=1.0) == pytest.approx(1.1031860, abs=1e-6)
    assert loss("sigmoid", chosen=0.0, rejected=0.0) == pytest.approx(LOG2, abs=1e-12)


def test_ipo_hand_values_and_its_value_at_initialisation():
    # (z / beta - 1 / (2 beta))^2 with per-token z. Lengths 1: z = 0.3 -> (3 - 5)^2 = 4.
    assert loss("ipo") == pytest.approx(4.0, abs=1e-9)
    # chosen over 2 tokens: z = 0.1 - (-0.1) = 0.2 -> (2 - 5)^2 = 9
    assert loss("ipo", lengths=(2.0, 1.0)) == pytest.approx(9.0, abs=1e-9)
    # margin 0.5 raises the target: u = -0.2 -> (-2 - 5)^2 = 49
    assert loss("ipo", margin=0.5) == pytest.approx(49.0, abs=1e-9)
    # at initialisation: (1 / (2 beta))^2 = 25 for beta 0.1; 1 / (2 * 0.5)^2 ... = 1 for beta 0.5
    assert loss("ipo", chosen=0.0, rejected=0.0) == pytest.approx(25.0, abs=1e-9)
    assert loss("ipo", chosen=0.0, rejected=0.0, beta=0.5) == pytest.approx(1.0, abs=1e-9)
    # with margin 1 at initialisation: u = -1 -> (-10 - 5)^2 = 225
    assert loss("ipo", chosen=0.0, rejected=0.0, margin=1.0) == pytest.approx(225.0, abs=1e-9)


def test_ipo_needs_the_completion_lengths():
    with pytest.raises(ValueError, match="length-normalised"):
        preference_loss(t(0.2), t(-0.1), form=FORMS["ipo"])


def test_hinge_hand_values_and_its_flat_region():
    assert loss("hinge") == pytest.approx(0.7, abs=1e-12)  # max(0, 1 - 0.3)
    assert loss("hinge", margin=1.0) == pytest.approx(1.7, abs=1e-12)  # max(0, 1 + 1 - 0.3)
    assert loss("hinge", chosen=0.0, rejected=0.0) == pytest.approx(1.0, abs=1e-12)
    # separated by more than 1 + m: loss 0 and no gradient
    chosen = t(2.0, grad=True)
    out = preference_loss(chosen, t(0.0), margin=0.5, form=FORMS["hinge"])
    out.losses.sum().backward()
    assert out.losses.item() == 0.0 and chosen.grad.item() == 0.0


def test_cdpo_hand_values():
    # (1 - eps) sp(-u) + eps sp(u) = sp(-u) + eps u. u = 0.3, eps 0.1: 0.5543552 + 0.03 = 0.5843552
    assert loss("cdpo", eps=0.1) == pytest.approx(0.5843552, abs=1e-6)
    # margin 1, u = -0.7: sp(0.7) - 0.07 = 1.1031860 - 0.07 = 1.0331860
    assert loss("cdpo", eps=0.1, margin=1.0) == pytest.approx(1.0331860, abs=1e-6)
    assert loss("cdpo", eps=0.1, chosen=0.0, rejected=0.0) == pytest.approx(LOG2, abs=1e-12)
    assert loss("cdpo", eps=0.0) == pytest.approx(loss("sigmoid"), abs=1e-12)


def test_robust_hand_values():
    # ((1 - eps) sp(-u) - eps sp(u)) / (1 - 2 eps); u = 0.3, eps 0.1:
    # (0.9 * 0.5543552 - 0.1 * 0.8543552) / 0.8 = (0.4989197 - 0.0854355) / 0.8 = 0.5168552
    assert loss("robust", eps=0.1) == pytest.approx(0.5168552, abs=1e-6)
    # margin 1, u = -0.7: (0.9 * 1.1031860 - 0.1 * 0.4031860) / 0.8 = 1.1906860
    assert loss("robust", eps=0.1, margin=1.0) == pytest.approx(1.1906860, abs=1e-6)
    assert loss("robust", eps=0.1, chosen=0.0, rejected=0.0) == pytest.approx(LOG2, abs=1e-12)
    assert loss("robust", eps=0.0) == pytest.approx(loss("sigmoid"), abs=1e-12)


@pytest.mark.parametrize("form, eps", [("robust", 0.5), ("robust", -0.1), ("cdpo", 0.6)])
def test_label_smoothing_out_of_range_is_refused(form, eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        loss(form, eps=eps)


def test_simpo_hand_values():
    # beta 2: log pi(y+) = -10 over 5 tokens -> reward -20, per token -4; log pi(y-) = -12 over 4 -> -6.
    # z = -4 - (-6) = 2; gamma 1: -log sigmoid(1) = sp(-1) = 0.3132617; without: sp(-2) = 0.1269280
    kw = {"chosen": -20.0, "rejected": -24.0, "beta": 2.0, "lengths": (5.0, 4.0)}
    assert loss("simpo", margin=1.0, **kw) == pytest.approx(0.3132617, abs=1e-6)
    assert loss("simpo", **kw) == pytest.approx(0.1269280, abs=1e-6)
    assert loss("simpo", chosen=0.0, rejected=0.0, margin=1.0) == pytest.approx(softplus(1.0), abs=1e-12)
    assert FORMS["simpo"].reference_free and not FORMS["ipo"].reference_free


def test_metrics_report_summed_rewards_whatever_the_form():
    # rewards/* are the rewards themselves (TRL logs them so for IPO too), not the per-token argument.
    out = preference_loss(
        t(0.2), t(-0.1), form=FORMS["ipo"], chosen_lengths=t(4.0), rejected_lengths=t(2.0), margin=0.1
    )
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.3)
    assert out.metrics["margin/used"].item() == pytest.approx(0.1)


# ---- margin sources ---------------------------------------------------------------------------------


def source(name: str, **inputs):
    return get_source(name)(MarginInputs(like=t(0.0, 0.0), **inputs), LossParams(odpo_alpha=0.5))


def test_odpo_offset_is_alpha_log_of_the_score_margin():
    margin, _ = source("odpo", gt_margins=t(math.e, 1.0))
    assert margin.tolist() == pytest.approx([0.5, 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="must be > 0"):
        source("odpo", gt_margins=t(1.0, 0.0))
    # through the loss: z = 0.3, offset 0.5 * log(e) = 0.5: log(1 + e^0.2) = 0.7981389
    out = method_loss(
        EXTENSIONS["odpo"], t(0.2), t(-0.1), gt_margins=t(math.e), params=LossParams(odpo_alpha=0.5)
    )
    assert out.losses.item() == pytest.approx(0.7981389, abs=1e-6)


def test_column_source_uses_the_data_margin_as_given():
    out = method_loss(EXTENSIONS["dpo-margin-column"], t(0.2), t(-0.1), margin_column=t(0.5))
    assert out.losses.item() == pytest.approx(0.7981389, abs=1e-6)
    with pytest.raises(ValueError, match="dpo-margin-column.*margin_column"):
        method_loss(EXTENSIONS["dpo-margin-column"], t(0.2), t(-0.1))


def test_live_and_target_pop_margins_agree_and_differ_only_in_the_model():
    weak = {"weak_chosen_rewards": t(0.0, 1.5), "weak_rejected_rewards": t(3.0, 1.0)}
    live, live_metrics = source("live", **weak)
    target, _ = source("target", **weak)
    assert live.tolist() == target.tolist() == [0.0, 0.5]
    assert live_metrics["pop/clipped_low"].tolist() == [1.0, 0.0]
    assert MARGIN_SOURCES["target"].uses_target and not MARGIN_SOURCES["live"].uses_target


def test_pop_margin_is_in_the_units_of_a_length_normalised_form():
    # IPO, strong pair over 1 token each: z = 0.3. Weak pair 0.6 over 2 tokens, 0.1 over 1: margin 0.2.
    # u = 0.1 -> (1 - 5)^2 = 16
    lengths = {
        name: t(n) for name, n in (("chosen", 1), ("rejected", 1), ("weak_chosen", 2), ("weak_rejected", 1))
    }
    out = method_loss(
        EXTENSIONS["ipo-pop-iter"],
        t(0.2),
        t(-0.1),
        weak_chosen_rewards=t(0.6),
        weak_rejected_rewards=t(0.1),
        lengths=lengths,
    )
    assert out.metrics["pop/target_margin"].item() == pytest.approx(0.2)
    assert out.losses.item() == pytest.approx(16.0, abs=1e-9)


@pytest.mark.parametrize("name", sorted(EXTENSIONS))
def test_every_extension_preset_at_initialisation(name):
    method = EXTENSIONS[name]
    zero = t(0.0, 0.0)
    out = method_loss(
        method,
        zero,
        zero,
        gt_margins=t(math.e, 1.0),
        weak_chosen_rewards=zero,
        weak_rejected_rewards=zero,
        margin_column=t(0.5, 0.0),
        lengths={k: t(3.0, 2.0) for k in ("chosen", "rejected", "weak_chosen", "weak_rejected")},
        params=LossParams(label_smoothing=0.1),
    )
    # z = 0 and every PoP margin 0; constant 1 (simpo), odpo log e = 1 and log 1 = 0, column 0.5 and 0.
    expected = {
        "ipo": [25.0, 25.0],
        "ipo-pop-iter": [25.0, 25.0],
        "hinge": [1.0, 1.0],
        "hinge-pop-random": [1.0, 1.0],
        "simpo": [softplus(1.0)] * 2,
        "odpo": [softplus(1.0), LOG2],
        "dpo-margin-column": [softplus(0.5), LOG2],
    }.get(name, [LOG2, LOG2])
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-9)


# ---- registries, presets, custom methods ------------------------------------------------------------


def test_registries_hold_every_part_named_by_the_issue():
    assert set(FORMS) == {"sigmoid", "ipo", "hinge", "cdpo", "robust", "simpo"}
    assert set(MARGIN_SOURCES) == {"none", "constant", "ground_truth", "target", "live", "column", "odpo"}
    for part in [*FORMS.values(), *MARGIN_SOURCES.values()]:
        assert part.citation and part.equation and part.title, part.name


def test_paper_presets_keep_their_parts_and_every_name_is_unique():
    assert all(m.form == "sigmoid" for m in METHODS.values())
    names = [*all_methods("policy"), *all_methods("reward-model"), CUSTOM]
    assert len(names) == len(set(names))
    assert DEFAULT_BETA == 0.1


def test_custom_and_replaced_parts():
    custom = resolve_method(CUSTOM, "policy", "ipo", "target")
    assert (custom.form, custom.margin, custom.sampler) == ("ipo", "target", "pop")
    assert resolve_method(CUSTOM).sampler == "preferences"
    assert resolve_method(CUSTOM).form == "sigmoid" and resolve_method(CUSTOM).margin == "none"
    live = resolve_method("dpo-pop", "policy", margin_source="live")
    assert live.name == "dpo-pop" and live.margin == "live" and live.pop_strategy is None
    assert resolve_method("dpo") is get_method("dpo")
    with pytest.raises(PopalignError, match="needs PoP pairs"):
        resolve_method("dpo", "policy", margin_source="target")
    with pytest.raises(PopalignError, match="unknown loss form 'sigmoids'"):
        resolve_method(CUSTOM, form="sigmoids")
    with pytest.raises(PopalignError, match="policy only"):
        resolve_method("bt", "reward-model", form="simpo")
    with pytest.raises(PopalignError, match="unknown margin source"):
        Method("x", "preferences", "nope", "one", None, "", "")


# ---- docs: the generated tables and the worked "add your own" example ------------------------------


def test_docs_tables_match_the_registries():
    text = (REPO / "docs" / "losses.md").read_text()
    begin = "<!-- generated by `python -m popalign.method_tables docs/losses.md`: begin -->\n"
    generated = text.split(begin, 1)[1].split("\n<!-- generated: end -->", 1)[0]
    assert generated == docs_tables(), "run: python -m popalign.method_tables docs/losses.md"
    assert "| `ipo` | IPO |" in generated and "`ipo-pop-iter`" in generated


def test_the_add_your_own_section_works_as_written():
    text = (REPO / "docs" / "losses.md").read_text()
    blocks = {
        key: re.search(rf"<!-- add-your-own: {key} -->\n```python\n(.*?)```", text, re.S).group(1)
        for key in ("form", "source", "test", "row-input", "row-input-test")
    }
    try:
        for key in ("form", "source", "test", "row-input", "row-input-test"):
            exec(compile(blocks[key], f"docs/losses.md ({key})", "exec"), {})
        assert "exponential" in FORMS and "half_gt" in MARGIN_SOURCES
        # the new parts appear in the generated tables and combine with every other part
        assert "`exponential`" in docs_tables() and "`half_gt`" in docs_tables()
        method = resolve_method("dpo-pop", "policy", form="exponential")
        out = method_loss(method, t(0.2), t(-0.1), weak_chosen_rewards=t(0.3), weak_rejected_rewards=t(0.0))
        assert out.losses.item() == pytest.approx(1.0, abs=1e-9)  # exp(-(0.3 - 0.3))
        # the new input is asked for by name, read from the table, and refused where the data lacks it
        custom = MARGIN_SOURCES["chosen_score"]
        assert "chosen_score" in docs_tables()
        table = PreferenceTable(["a"], ["p"], ["x"], ["y"], score_chosen=[7.0], score_rejected=[2.0])
        assert custom.row_arrays(table)["chosen_score"].tolist() == [7.0]
        with pytest.raises(ValueError, match="needs 'chosen_score', which the data lacks"):
            custom.check_table(PreferenceTable(["a"], ["p"], ["x"], ["y"]))
        with pytest.raises(ValueError, match="needs the row input 'chosen_score'"):
            method_loss(resolve_method("custom", margin_source="chosen_score"), t(0.2), t(-0.1))
    finally:
        FORMS.pop("exponential", None)
        MARGIN_SOURCES.pop("half_gt", None)
        MARGIN_SOURCES.pop("chosen_score", None)
        ROW_INPUTS.pop("chosen_score", None)


def test_no_method_or_source_name_is_compared_as_a_string_outside_the_registries():
    registries = {"methods.py", "forms.py", "sources.py", "weights.py"}
    compare = re.compile(
        r"\b(method|margin|margin_source|form|sampler|weighting)\b[\w.]*\s*((==|!=)\s*|\bin\s*[(\[{]\s*)[\"']"
    )
    hits = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in (REPO / "src" / "popalign").rglob("*.py")
        if path.name not in registries
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if compare.search(line)
    ]
    assert not hits, hits


# ---- the data's per-row margin column ----------------------------------------------------------------


def test_margin_column_is_read_and_a_bad_value_names_file_row_and_field(tmp_path):
    import json

    from popalign.data.load import load_preferences
    from popalign.errors import DataError

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": m} for m in (0.5, 2, "1.5")]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, _ = load_preferences(good)
    assert table.margin_column.tolist() == [0.5, 2.0, 1.5]
    assert table.select([2, 0]).margin_column.tolist() == [1.5, 0.5]
    MARGIN_SOURCES["column"].check_table(table)  # accepted

    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {**rows[0], "margin": "wide"}]))
    with pytest.raises(DataError, match=r"bad.jsonl.*row 4.*'margin'.*finite number"):
        load_preferences(bad)

    without = table.select([0])
    without.margin_column = None
    with pytest.raises(ValueError, match="needs a per-row 'margin' column"):
        MARGIN_SOURCES["column"].check_table(without)
