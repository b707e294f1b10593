"""Preference training end to end on a tiny random Llama and the real UltraFeedback sample."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from popalign.cli.main import main as cli_main
from popalign.config import load_config
from popalign.errors import PopalignError
from popalign.methods import EXTENSIONS
from popalign.train.config import TrainConfig
from popalign.train.run import run_train

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "model.name_or_path=random:tiny-llama",
    "data.limit=32",
    "tokenize.max_length=96",
    "tokenize.max_prompt_length=48",
    "training.per_device_train_batch_size=4",
    "training.gradient_accumulation_steps=1",
    "training.learning_rate=1e-3",
    "training.warmup_ratio=0",
    "training.logging_steps=1",
    "training.report_to=none",
    "training.progress=false",
]


def config(tmp_path, *overrides: str, name: str = "run") -> TrainConfig:
    return load_config(
        TrainConfig,
        None,
        [
            *TINY,
            f"data.path={DATA['path']}",
            f"output_dir={tmp_path / name}",
            f"reference.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ],
    )


DATA: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _data(ultrafeedback_dir):
    DATA["path"] = str(ultrafeedback_dir)


def weights(model_dir) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by {worst}"


POLICY_METHODS = [
    "dpo",
    "dpo-margin",
    "dpo-margin-gt",
    "dpo-sbt",
    "dpo-pop-iter",
    "dpo-pop-random",
    "dpo-pop-nomargin",
]


@pytest.mark.parametrize("method", POLICY_METHODS)
def test_every_policy_method_trains_through_the_cli(tmp_path, method, capsys):
    out = tmp_path / method
    code = cli_main(
        [
            "train",
            *TINY,
            f"method={method}",
            f"data.path={DATA['path']}",
            f"output_dir={out}",
            f"reference.cache_dir={tmp_path / 'cache'}",
            "training.max_steps=2",
        ]
    )
    assert code == 0
    saved = load_config(TrainConfig, out / "config.yaml", [])
    if method in ("dpo-pop-iter", "dpo-pop-random"):
        # The preset's strategy, not the default, is what the saved config says ran.
        assert saved.pop.strategy == method.removeprefix("dpo-pop-").replace("iter", "iterative")
        info = json.loads((out / "run_info.json").read_text())
        assert info["examples"]["pop"]["settings"]["strategy"] == saved.pop.strategy
    results = json.loads((out / "train_results.json").read_text())
    assert math.isfinite(results["train_loss"])
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert logged and all(k in logged[0] for k in ("rewards/chosen", "rewards/margins", "rewards/accuracies"))
    if method.startswith("dpo-pop") and method != "dpo-pop-nomargin":
        assert "pop/target_margin" in logged[0] and (out / "pop_pairs.parquet").exists()
    AutoModelForCausalLM.from_pretrained(out)  # the final model loads with the standard class


@pytest.mark.parametrize("method", ["bt", "margin-gt", "sbt", "pop-random"])
def test_reward_model_methods_train(tmp_path, method):
    from transformers import AutoModelForSequenceClassification

    cfg = config(tmp_path, "objective=reward-model", f"method={method}", "training.max_steps=2")
    summary = run_train(cfg)
    assert math.isfinite(summary["metrics"]["train_loss"])
    model = AutoModelForSequenceClassification.from_pretrained(summary["model"])
    assert model.config.num_labels == 1


def test_reward_model_pop_with_live_margin(tmp_path):
    cfg = config(
        tmp_path, "objective=reward-model", "method=pop", "loss.margin_source=live", "training.max_steps=2"
    )
    assert math.isfinite(run_train(cfg)["metrics"]["train_loss"])


def test_reference_precompute_obeys_the_process_settings(tmp_path, monkeypatch):
    import popalign.modeling.reference as reference
    from popalign.modeling.chunked_head import chunk_size_setting, set_chunk_size

    seen = {}
    compute = reference.compute_reference_logps

    def recording(*args, **kwargs):
        seen.update(threads=torch.get_num_threads(), chunk=chunk_size_setting())
        return compute(*args, **kwargs)

    monkeypatch.setattr(reference, "compute_reference_logps", recording)
    before, chunk_before = torch.get_num_threads(), chunk_size_setting()
    threads = 1 if before > 1 else 2
    try:
        overrides = (
            "training.max_steps=1",
            f"training.torch_threads={threads}",
            "training.logps_chunk_size=7",
        )
        run_train(config(tmp_path, *overrides))
    finally:
        torch.set_num_threads(before)
        set_chunk_size(chunk_before)
    assert seen == {"threads": threads, "chunk": 7}


def test_first_loss_is_log_two_when_policy_equals_reference(tmp_path):
    # At initialisation policy = reference = target, so every implicit reward and PoP margin is 0.
    for method in ("dpo", "dpo-pop-iter"):
        cfg = config(
            tmp_path, f"method={method}", "training.max_steps=1", "training.learning_rate=0", name=method
        )
        run_train(cfg)
        state = json.loads((tmp_path / method / "trainer_state.json").read_text())
        first = next(h for h in state["log_history"] if "loss" in h)
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def batch_8_and_4_x_2(tmp_path, *common: str) -> tuple[dict, dict]:
    """Final weights of two SGD runs of ``common``: batch 8, and batch 4 with 2 accumulation steps.

    Plain SGD: Adam's first step is about lr * sign(gradient), which magnifies float rounding of
    near-zero gradients; SGD keeps the comparison about the gradients themselves.
    """
    common = (*common, "training.max_steps=2", "training.optim=sgd", "training.max_grad_norm=0")
    a = config(tmp_path, *common, "training.per_device_train_batch_size=8", name="b8")
    b = config(
        tmp_path,
        *common,
        "training.per_device_train_batch_size=4",
        "training.gradient_accumulation_steps=2",
        name="b4x2",
    )
    return weights(run_train(a)["model"]), weights(run_train(b)["model"])


def test_batch_8_equals_batch_4_with_two_accumulation_steps(tmp_path):
    common = ("method=dpo-pop-random", "training.learning_rate=0.5", "data.limit=48")
    assert_same_weights(*batch_8_and_4_x_2(tmp_path, *common), atol=2e-6)


class _Crash(TrainerCallback):
    """Simulates a killed process right after the given step."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "method, lora, refresh",
    [("dpo-pop-iter", False, 1), ("dpo-pop-random", True, 1), ("dpo-pop-iter", False, 4)],
    ids=["full", "lora", "margin-cache"],
)
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path, method, lora, refresh):
    common = (f"method={method}", "training.max_steps=6", "training.save_steps=2", f"lora.enabled={lora}")
    if lora:
        common += ("save_final=merged", "lora.r=4", "target.tau=0.3")
    if refresh > 1:
        # Cached margins computed before the kill must serve the steps after it, as in the straight run;
        # a fast-moving target makes a recomputed margin differ visibly. With 4 preferences every weak one
        # comes back within the refresh window.
        common += (f"loss.margin_refresh_steps={refresh}", "target.tau=0.5", "data.limit=4")

    def target_saved():
        assert (tmp_path / "resumed" / "checkpoint-2" / "popalign_target.pt").exists()

    assert_same_weights(*straight_and_resumed(tmp_path, *common, after_crash=target_saved))


def straight_and_resumed(tmp_path, *common: str, after_crash=lambda: None) -> tuple[dict, dict]:
    """Final weights of ``common`` run straight through, and killed after step 3 then resumed."""
    straight = run_train(config(tmp_path, *common, name="straight"))
    interrupted = config(tmp_path, *common, name="resumed")
    with pytest.raises(KeyboardInterrupt):
        run_train(interrupted, callbacks=[_Crash(step=3)])
    after_crash()
    resumed = run_train(interrupted)
    assert resumed["resumed_from"].endswith("checkpoint-2")
    return weights(straight["model"]), weights(resumed["model"])


# One preset of each loss form besides DPO's sigmoid (dpo-pop-random and dpo-pop-iter above), with a
# learning rate that keeps its SGD steps as small as DPO's (IPO's gradient is about 1 / beta^2 larger).
FORM_PRESETS = {
    "ipo-pop-iter": ("training.learning_rate=0.005",),
    "hinge-pop-random": ("training.learning_rate=0.5",),
    "cdpo": ("training.learning_rate=0.5", "loss.label_smoothing=0.1"),
    "rdpo": ("training.learning_rate=0.5", "loss.label_smoothing=0.2"),
    "simpo": ("training.learning_rate=0.5", "loss.beta=2"),
}


def test_form_presets_cover_every_loss_form():
    from popalign.losses.forms import FORMS

    assert {EXTENSIONS[name].form for name in FORM_PRESETS} | {"sigmoid"} == set(FORMS)


@pytest.mark.parametrize("method", sorted(FORM_PRESETS))
def test_batch_8_equals_4_x_2_for_every_loss_form(tmp_path, method):
    first, second = batch_8_and_4_x_2(tmp_path, f"method={method}", *FORM_PRESETS[method], "data.limit=32")
    assert_same_weights(first, second, atol=2e-6)
    moved = max((first[k] - weights_at_init(tmp_path, method)[k]).abs().max().item() for k in first)
    assert moved > 1e-4, "the steps did not move the weights, so the comparison shows nothing"


def weights_at_init(tmp_path, method) -> dict[str, torch.Tensor]:
    cfg = config(
        tmp_path,
        f"method={method}",
        *FORM_PRESETS[method],
        "training.max_steps=1",
        "training.learning_rate=0",
        "data.limit=8",
        name=f"init-{method}",
    )
    return weights(run_train(cfg)["model"])


@pytest.mark.parametrize("method", sorted(FORM_PRESETS))
def test_killed_and_resumed_run_is_identical_for_every_loss_form(tmp_path, method):
    common = (f"method={method}", *FORM_PRESETS[method], "training.max_steps=4", "training.save_steps=2")
    assert_same_weights(*straight_and_resumed(tmp_path, *common, "data.limit=24"))


def test_rerunning_a_finished_run_changes_nothing(tmp_path, capsys):
    # The Trainer would resume from the last checkpoint and take one step past max_steps.
    cfg = config(tmp_path, "method=dpo-pop-iter", "training.max_steps=2", "training.save_steps=1")
    first = run_train(cfg)
    before = weights(first["model"])
    again = run_train(cfg)
    assert "finished already" in capsys.readouterr().out
    assert again["metrics"] == first["metrics"]
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert_same_weights(before, weights(again["model"]), atol=0)


def test_resuming_from_a_checkpoint_without_its_target_is_refused(tmp_path):
    cfg = config(tmp_path, "method=dpo-pop-iter", "training.max_steps=2", "training.save_steps=2")
    run_train(cfg)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    (checkpoint / "popalign_target.pt").unlink()
    again = config(tmp_path, "method=dpo-pop-iter", "training.max_steps=4", f"resume={checkpoint}")
    with pytest.raises(PopalignError, match="checkpoint-2: the checkpoint has no target state"):
        run_train(again)


class _Poison(TrainerCallback):
    """Corrupts the weights just after checkpoint-2 is written, as a diverging update would."""

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.global_step == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    from popalign.train.trainer import TrainingDiverged

    cfg = config(tmp_path, "method=dpo", "training.max_steps=6", "training.save_steps=2")
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3.*checkpoint-2"):
        run_train(cfg, callbacks=[_Poison()])
    good = weights(tmp_path / "run" / "checkpoint-2")
    assert all(torch.isfinite(v).all() for v in good.values())


def test_lora_pop_saves_adapter_without_the_target(tmp_path):
    from safetensors.torch import load_file

    cfg = config(
        tmp_path,
        "method=dpo-pop-iter",
        "lora.enabled=true",
        "lora.r=4",
        "save_final=adapter",
        "training.max_steps=2",
    )
    out = tmp_path / "run"
    run_train(cfg)
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    assert not any("popalign_target" in k for k in saved)
    assert not (out / "popalign_target").exists()


def _sample_rows(tmp_path, name: str, row) -> str:
    """The sample's first 48 rows as a JSONL file, each made by ``row(prompt, chosen, rejected, sc, sr)``."""
    from popalign.data.load import DataSpec, load_preferences

    table, _ = load_preferences(DataSpec(path=DATA["path"], limit=48))
    columns = (table.prompts, table.chosen, table.rejected, table.score_chosen, table.score_rejected)
    rows = [row(*values) for values in zip(*columns, strict=True)]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r is not None))
    return str(path)


def margin_column_data(tmp_path) -> str:
    """A ``margin`` column (half the score margin) instead of scores, as a data set may carry."""

    def row(p, c, r, sc, sr):
        return {"prompt": p, "chosen": c, "rejected": r, "margin": 0.5 * (sc - sr)}

    return _sample_rows(tmp_path, "with_margin.jsonl", row)


# What some presets need beyond the tiny config: their own data, or a setting. ODPO's log needs a
# positive score margin: the sample's tied rows are left out by the data option that does it.
PRESET_DATA = {"dpo-margin-column": margin_column_data}
PRESET_SETTINGS = {
    "rdpo": ["loss.label_smoothing=0.1"],
    "cdpo": ["loss.label_smoothing=0.1"],
    "odpo": ["data.tie_policy=skip"],
}


def test_odpo_refuses_tied_scores_naming_the_row(tmp_path):
    with pytest.raises(
        PopalignError, match="odpo.*7 rows do not.*margin 0.0.*leave ties out.*tie_policy=skip"
    ):
        run_train(config(tmp_path, "method=odpo", "data.limit=64", "training.max_steps=1"))


@pytest.mark.parametrize("method", sorted(EXTENSIONS))
def test_every_extension_preset_trains_through_the_cli_on_the_tiny_config(tmp_path, method):
    out = tmp_path / method
    data = PRESET_DATA[method](tmp_path) if method in PRESET_DATA else DATA["path"]
    code = cli_main(
        [
            "train",
            "--config",
            str(REPO / "configs" / "tiny" / "dpo.yaml"),
            f"method={method}",
            f"data.path={data}",
            f"output_dir={out}",
            f"reference.cache_dir={tmp_path / 'cache'}",
            "training.max_steps=2",
            "training.logging_steps=1",
            "training.progress=false",
            *PRESET_SETTINGS.get(method, []),
        ]
    )
    assert code == 0
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert len(logged) == 2 and all(math.isfinite(h["loss"]) for h in logged)
    info = json.loads((out / "run_info.json").read_text())
    assert info["method"]["form"] == EXTENSIONS[method].form
    assert info["method"]["margin"] == EXTENSIONS[method].margin
    assert ("reference" in info) != EXTENSIONS[method].loss_form.reference_free
    if EXTENSIONS[method].margin != "none":
        assert "margin/used" in logged[0]
    AutoModelForCausalLM.from_pretrained(out)


def test_a_margin_source_with_its_own_row_input_trains_as_written_in_the_docs(tmp_path):
    import re

    from popalign.losses.sources import MARGIN_SOURCES, ROW_INPUTS

    text = (REPO / "docs" / "losses.md").read_text()
    block = re.search(r"<!-- add-your-own: row-input -->\n```python\n(.*?)```", text, re.S).group(1)
    try:
        exec(compile(block, "docs/losses.md (row-input)", "exec"), {})
        run_train(
            config(tmp_path, "method=custom", "loss.margin_source=chosen_score", "training.max_steps=2")
        )
        state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
        logged = [h for h in state["log_history"] if "margin/used" in h]
        # The margin is a tenth of the chosen replies' scores: the sample's are between 1 and 10.
        assert logged and all(0.1 <= h["margin/used"] <= 1.0 for h in logged)
    finally:
        MARGIN_SOURCES.pop("chosen_score", None)
        ROW_INPUTS.pop("chosen_score", None)


def test_reference_logps_are_cached(tmp_path):
    first = config(tmp_path, "method=dpo", "training.max_steps=1", name="a")
    run_train(first)
    run_train(config(tmp_path, "method=dpo", "training.max_steps=1", name="b"))
    info = json.loads((tmp_path / "b" / "run_info.json").read_text())
    assert info["reference"]["cache"] == "hit"


def test_unknown_key_is_refused_by_the_cli(capsys):
    assert cli_main(["train", "data.path=x", "trainig.max_steps=3"]) == 2
    assert "unknown key 'trainig.max_steps'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=dpo", "loss.margin_source=target"], "margin source 'target' needs PoP pairs"),
        (["method=custom", "loss.form=sigmoids"], "unknown loss form 'sigmoids'; valid: sigmoid, ipo"),
        (["method=rdpo", "loss.label_smoothing=0.5"], r"label_smoothing must lie in \[0, 0.5\)"),
        (["objective=reward-model", "method=bt", "loss.form=simpo"], "is for a policy only"),
    ],
)
def test_parts_that_do_not_fit_are_refused_by_the_cli(capsys, overrides, message):
    assert cli_main(["train", "data.path=x", *overrides]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_train_help_lists_every_preset_and_the_parts_table(capsys):
    from popalign.losses.forms import FORMS
    from popalign.losses.sources import MARGIN_SOURCES
    from popalign.methods import all_methods

    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    for name in [*all_methods("policy"), *all_methods("reward-model"), *FORMS, *MARGIN_SOURCES]:
        assert re.search(rf"^\s*{re.escape(name)}\s", text, re.M), name
    assert "forms x sources" in text and "Azar et al. 2024, Eq. 17" in text


def test_padding_free_trains_to_the_padded_run_s_weights(tmp_path):
    # Real UltraFeedback lengths, DPO-PoP (weak pair through the target), 2 accumulation steps, SGD.
    common = (
        "method=dpo-pop-random",
        "tokenize.max_length=256",
        "training.learning_rate=0.5",
        "training.max_steps=2",
        "training.optim=sgd",
        "training.max_grad_norm=0",
        "training.gradient_accumulation_steps=2",
    )
    padded = run_train(config(tmp_path, *common, name="padded"))
    packed = run_train(config(tmp_path, *common, "training.padding_free=true", name="packed"))
    assert json.loads((tmp_path / "packed" / "run_info.json").read_text())["padding_free"] is True
    # Sums of up to 256 float32 log-probs in another order, after two steps at learning rate 0.5.
    assert_same_weights(weights(padded["model"]), weights(packed["model"]), atol=2e-5)
    logs = json.loads((tmp_path / "packed" / "trainer_state.json").read_text())["log_history"]
    padded_logs = json.loads((tmp_path / "padded" / "trainer_state.json").read_text())["log_history"]
    share = [h["throughput/padding_share"] for h in logs if "loss" in h]
    padded_share = [h["throughput/padding_share"] for h in padded_logs if "loss" in h]
    assert len(share) == 2 and all(a < b for a, b in zip(share, padded_share, strict=True))


def test_a_token_budget_groups_whole_preferences(tmp_path):
    cfg = config(
        tmp_path, "training.padding_free=true", "training.max_tokens_per_batch=600", "training.max_steps=2"
    )
    run_train(cfg)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    # 32 preferences of at most 2 x 96 tokens each: at least 32 * 2 * ~30 / 600 micro-batches, fewer than 32.
    assert 1 < info["micro_batches"] < 32
