"""The training recipe's parts: what SFT and preference jobs hand to the shared stages."""

from __future__ import annotations

import json
from types import SimpleNamespace

from popalign.methods import get_method
from popalign.train.recipe import run_recipe
from popalign.train.run import PreferenceParts
from popalign.train.sft import IGNORE_INDEX, SFTParts


class Untouchable:
    """Parts whose every use is a failure: the recipe must not reach them."""

    reward_model = False

    def __getattr__(self, name):
        raise AssertionError(f"the recipe used parts.{name}")


def test_a_finished_run_touches_no_part(tmp_path, capsys):
    (tmp_path / "train_results.json").write_text(json.dumps({"train_loss": 0.5}))
    cfg = SimpleNamespace(output_dir=str(tmp_path), resume="auto")
    summary = run_recipe(cfg, Untouchable())
    assert summary["finished"] is True and summary["metrics"] == {"train_loss": 0.5}
    assert "finished already" in capsys.readouterr().out


class Tokens:
    prompt_ids = [[1, 2], [3]]
    chosen_ids = [[4], [5, 6]]
    rejected_ids = [[7, 8, 9], [10]]

    def __len__(self) -> int:
        return 2


def sft_job(response: str, lora: bool) -> SimpleNamespace:
    cfg = SimpleNamespace(response=response, lora=SimpleNamespace(enabled=lora))
    return SimpleNamespace(cfg=cfg, tokenized=Tokens(), tokenizer=SimpleNamespace(pad_token_id=0))


def test_sft_trains_on_the_chosen_or_rejected_response():
    parts = SFTParts()
    for response, first_row in (("chosen", [1, 2, 4]), ("rejected", [1, 2, 7, 8, 9])):
        dataset, collator = parts.setup_data(sft_job(response, lora=False))
        assert len(dataset) == 2 and [dataset[i] for i in range(2)] == [0, 1]
        batch = collator([0])
        assert batch["input_ids"][0].tolist() == first_row
        # Only the response is learnt: the prompt's two tokens are masked.
        assert batch["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, *first_row[2:]]
    assert not parts.reward_model


def test_each_job_saves_as_its_settings_say():
    assert SFTParts().save_how(sft_job("chosen", lora=True).cfg) == "merged"
    assert SFTParts().save_how(sft_job("chosen", lora=False).cfg) == "full"
    dpo = PreferenceParts(get_method("dpo"))
    assert dpo.save_how(SimpleNamespace(save_final="adapter")) == "adapter"
    assert not dpo.reward_model
    assert PreferenceParts(get_method("bt", "reward-model")).reward_model  # a scalar head, not an LM
