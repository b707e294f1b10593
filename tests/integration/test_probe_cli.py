"""``popalign probe`` end to end on a tiny random model: every output, a rerun from the feature cache,
bad settings as one clear error."""

from __future__ import annotations

import json

import pytest

from popalign.cli.main import main


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from popalign.modeling.tiny import tiny_causal_lm
    from popalign.modeling.tokenizer import build_local_tokenizer

    folder = tmp_path_factory.mktemp("probe_cli_model")
    tokenizer = build_local_tokenizer()
    tiny_causal_lm(tokenizer, seed=0, hidden_size=32, intermediate_size=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _args(ultrafeedback_dir, model, out, cache) -> list[str]:
    data = ultrafeedback_dir / "test.jsonl"
    return [
        "probe", str(data), str(data.with_name("train.jsonl")), "--limit", "40", "--model", model,
        "--folds", "2", "--seeds", "2", "-o", str(out), "features.max_length=64",
        "features.max_prompt_length=32", "features.batch_tokens=512", f"features.cache_dir={cache}",
        "features.progress=false", "head.epochs=2",
    ]  # fmt: skip


def test_probe_writes_its_report_and_reruns_from_the_cache(
    ultrafeedback_dir, tiny_model_dir, tmp_path, capsys
):
    out, cache = tmp_path / "probe", tmp_path / "cache"
    assert main(_args(ultrafeedback_dir, tiny_model_dir, out, cache)) == 0
    for name in ("report.md", "report.html", "results.json", "cumulative_accuracy.png", "predictions.npz"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["rows"] == 80  # two files of 40 rows, stacked
    assert results["not_run"] == {"margin-column": "the data has no margin column"}
    primary = [r for r in results["contrasts"] if r["family"] == "primary"]
    assert {r["id"] for r in primary} == {
        "iter-vs-bt",
        "random-vs-bt",
        "iter-vs-steps",
        "iter-margin",
        "random-margin",
    }
    for r in primary:
        assert r["verdict"] in {"reproduced", "not reproduced", "equivalent", "inconclusive"}
        assert r["ci_low"] <= r["difference"] <= r["ci_high"]
    assert results["features"]["sequences_computed"] > 0
    assert "data:image/png;base64," in (out / "report.html").read_text()

    again = tmp_path / "again"
    assert main(_args(ultrafeedback_dir, tiny_model_dir, again, cache)) == 0
    rerun = json.loads((again / "results.json").read_text())
    assert rerun["features"]["sequences_computed"] == 0
    assert rerun["contrasts"] == results["contrasts"]  # same seeds, same features: the same answer


def test_unknown_setting_is_one_clear_error(ultrafeedback_dir, tiny_model_dir, tmp_path, capsys):
    args = _args(ultrafeedback_dir, tiny_model_dir, tmp_path / "o", tmp_path / "c") + ["head.kinds=mlp"]
    assert main(args) == 2
    assert "head.kinds" in capsys.readouterr().err
