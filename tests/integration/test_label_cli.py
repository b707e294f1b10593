"""`popalign label` commands, and collected labels going straight into DPO-PoP training."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import urllib.request

import pytest

pytest.importorskip("flask")
pytest.importorskip("sqlalchemy")

from popalign.cli import label as label_cli  # noqa: E402
from popalign.errors import PopalignError  # noqa: E402


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="popalign")
    label_cli.register(parser.add_subparsers(), "collect PoP labels from people")
    args = parser.parse_args(["label", *argv])
    return args.func(args)


def subset(ultrafeedback_dir, tmp_path, n: int):
    path = tmp_path / "prefs.jsonl"
    lines = (ultrafeedback_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_cli_module_imports_no_web_or_database_library():
    code = (
        "import sys, popalign.cli.label\n"
        "heavy = {'flask', 'waitress', 'sqlalchemy', 'jinja2', 'werkzeug', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_the_four_commands_with_examples(capsys):
    with pytest.raises(SystemExit):
        run_cli("--help")
    out = capsys.readouterr().out
    for word in ("serve", "add-annotator", "export", "status", "examples:"):
        assert word in out
    with pytest.raises(SystemExit):
        run_cli("serve", "--help")
    assert "--strategy" in capsys.readouterr().out


def test_add_annotator_status_and_export_on_a_new_database(tmp_path, capsys):
    db = str(tmp_path / "labels.sqlite")
    with pytest.raises(PopalignError, match="no label database"):
        run_cli("status", "--db", db)
    assert run_cli("add-annotator", "alice", "--db", db) == 0
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1]
    assert "alice" in out and len(token) >= 40
    with pytest.raises(PopalignError, match="exists"):
        run_cli("add-annotator", "alice", "--db", db)
    assert run_cli("status", "--db", db) == 0
    out = capsys.readouterr().out
    assert "not served yet" in out and "alice" in out
    with pytest.raises(PopalignError, match="project 'default' was never served"):
        run_cli("export", "--db", db, "-o", str(tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()
    assert run_cli("status", "--db", db, "--json", "-") == 0
    assert json.loads(capsys.readouterr().out)["annotators"][0]["name"] == "alice"


def test_serve_refuses_settings_that_differ_from_the_stored_ones(tmp_path, ultrafeedback_dir):
    from popalign.label.project import LabelSettings
    from popalign.label.server import build_context

    prefs = subset(ultrafeedback_dir, tmp_path, 10)
    db = tmp_path / "labels.sqlite"
    build_context(db, prefs, LabelSettings(strategy="random"))
    with pytest.raises(PopalignError, match="strategy=iterative"):
        run_cli("serve", "--prefs", str(prefs), "--db", str(db), "--strategy", "iterative", "--port", "0")
    other = subset(ultrafeedback_dir, tmp_path / "..", 12)
    with pytest.raises(PopalignError, match="different preference dataset"):
        run_cli("serve", "--prefs", str(other), "--db", str(db), "--port", "0")


def http_json(url: str, token: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_labels_collected_over_http_train_dpo_pop(tmp_path, ultrafeedback_dir, capsys):
    from popalign.config import load_config
    from popalign.label.accounts import add_annotator
    from popalign.label.export import judgements
    from popalign.label.project import LabelSettings
    from popalign.label.server import build_context, start_server
    from popalign.pop.labels import load_pop_labels
    from popalign.train.config import TrainConfig
    from popalign.train.run import run_train

    prefs = subset(ultrafeedback_dir, tmp_path, 32)
    db = tmp_path / "labels.sqlite"
    ctx = build_context(db, prefs, LabelSettings(strategy="iterative", k=1))
    token = add_annotator(ctx.store.engine, "alice")
    with start_server(ctx) as server:
        for i in range(12):
            pair = http_json(f"{server.url}/api/next", token)["assignment"]
            choice = ("a", "b", "same")[i % 3]
            ack = http_json(
                f"{server.url}/api/labels", token, {"assignment_id": pair["assignment_id"], "choice": choice}
            )
            assert ack["status"] == "recorded"
    out = tmp_path / "pop_labels.jsonl"
    assert run_cli("export", "--db", str(db), "-o", str(out), "--prefs", str(prefs)) == 0
    assert "PoP pairs load" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # Iterative export keeps the anchors' wins: each row's stronger side is its pair's anchor.
    anchors = {(j.id_a, j.id_b): j.anchor for j in judgements(ctx.store.engine, ctx.project.project_id)}
    assert rows and all(
        anchors[(r["id_a"], r["id_b"])] == (r["id_a"] if r["stronger"] == "a" else r["id_b"]) for r in rows
    )
    from popalign.data.load import load_preferences

    table, _ = load_preferences(prefs)
    assert len(load_pop_labels(out, table)) == len(rows)

    cfg = load_config(
        TrainConfig,
        None,
        [
            "model.name_or_path=random:tiny-llama",
            "method=dpo-pop-iter",
            f"pop_labels={out}",
            f"data.path={prefs}",
            "tokenize.max_length=96",
            "tokenize.max_prompt_length=48",
            "training.per_device_train_batch_size=2",
            "training.max_steps=1",
            "training.report_to=none",
            "training.progress=false",
            f"output_dir={tmp_path / 'run'}",
            f"reference.cache_dir={tmp_path / 'cache'}",
        ],
    )
    summary = run_train(cfg)
    assert math.isfinite(summary["metrics"]["train_loss"])
    meta = json.loads((tmp_path / "run" / "pop_pairs.parquet.meta.json").read_text())
    assert meta["settings"]["strategy"] == "labels" and meta["counts"]["pairs"] == len(rows)


def test_hf_export_round_trips_through_load_from_disk_and_pop_import_labels(
    tmp_path, ultrafeedback_dir, capsys
):
    import datasets

    from popalign.cli.main import main
    from popalign.label.accounts import add_annotator, authenticate
    from popalign.label.project import LabelSettings
    from popalign.label.server import build_context
    from popalign.pop.pairs import PoPPairs

    prefs = subset(ultrafeedback_dir, tmp_path, 12)
    db = tmp_path / "labels.sqlite"
    ctx = build_context(db, prefs, LabelSettings(redundancy=2, target=6, min_gap=0), project="pilot")
    people = [
        authenticate(ctx.store.engine, add_annotator(ctx.store.engine, n, project="pilot")) for n in "xy"
    ]
    store, judged = ctx.store, {}
    for _ in range(7):
        for who in people:
            served = store.next_for(who)
            if served is None:
                continue
            if len(judged) == 1 and who.name == "x" and served.pair_id not in judged:
                store.skip(who, served.assignment_id, "unsure", "no idea")
                continue
            choice = "a" if served.pair_id % 2 else "b"
            store.submit(who, served.assignment_id, choice)
            judged.setdefault(served.pair_id, []).append((who.name, choice))
    out = tmp_path / "hf"
    argv = ["export", "--db", str(db), "--project", "pilot", "--format", "hf", "-o", str(out)]
    assert run_cli(*argv, "--skips", str(tmp_path / "skips.csv")) == 0
    ds = datasets.load_from_disk(str(out))
    assert set(ds.column_names) >= {"id_a", "id_b", "stronger", "annotators", "choices", "seconds", "votes_a"}
    expected = {pid: v for pid, v in judged.items() if len({c for _, c in v}) == 1}  # ties give no row
    assert len(ds) == len(expected) > 0
    for row in ds:
        assert row["stronger"] in ("a", "b") and len(row["annotators"]) == len(row["choices"]) >= 1
        assert row["votes_" + row["stronger"]] == len(row["choices"])
        assert all(s is not None and s >= 0 for s in row["seconds"])
    assert "pilot" in ds.info.description
    skips = (tmp_path / "skips.csv").read_text().splitlines()
    assert skips[0] == "id_a,id_b,annotator,reason,note,created_at" and len(skips) == 2
    assert ",x,unsure,no idea," in skips[1]
    capsys.readouterr()
    pairs_file = tmp_path / "people.parquet"
    assert main(["pop", "import-labels", str(out), "--prefs", str(prefs), "-o", str(pairs_file)]) == 0
    from popalign.data.load import load_preferences

    assert len(PoPPairs.load(pairs_file, load_preferences(prefs)[0])) == len(ds)
    # Exporting again replaces the folder whole; a folder that is not a dataset is never replaced.
    assert run_cli(*argv) == 0
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(PopalignError, match="not a datasets folder"):
        run_cli(
            "export", "--db", str(db), "--project", "pilot", "--format", "hf", "-o", str(tmp_path / "notes")
        )
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_hf_export_of_a_project_without_labels_is_an_empty_dataset_with_the_same_features(
    tmp_path, ultrafeedback_dir
):
    import datasets

    from popalign.label.project import LabelSettings
    from popalign.label.server import build_context

    prefs = subset(ultrafeedback_dir, tmp_path, 6)
    db = tmp_path / "labels.sqlite"
    build_context(db, prefs, LabelSettings(target=3, min_gap=0), project="pilot")
    out = tmp_path / "hf"
    assert run_cli("export", "--db", str(db), "--project", "pilot", "--format", "hf", "-o", str(out)) == 0
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 0
    assert set(ds.column_names) == {
        "id_a", "id_b", "stronger", "anchor", "annotators", "choices", "seconds",
        "votes_a", "votes_b", "votes_same",
    }  # fmt: skip
    assert ds.features["choices"].feature.dtype == "string" and ds.features["votes_a"].dtype == "int64"


def test_projects_guidelines_and_gold_options(tmp_path, ultrafeedback_dir, capsys):
    from popalign.label.project import LabelSettings
    from popalign.label.server import build_context

    with pytest.raises(SystemExit):
        run_cli("serve", "--help")
    out = capsys.readouterr().out
    for option in ("--project", "--guidelines", "--gold-fraction", "--trusted-proxy"):
        assert option in out
    prefs = subset(ultrafeedback_dir, tmp_path, 40)
    db = str(tmp_path / "labels.sqlite")
    assert run_cli("add-annotator", "ann", "--db", db, "--project", "pilot") == 0
    assert "of project 'pilot' created" in capsys.readouterr().out
    ctx = build_context(db, prefs, LabelSettings(gold_fraction=0.2), project="pilot")
    assert ctx.project.name == "pilot" and len(ctx.store.gold) > 0
    assert run_cli("status", "--db", db, "--project", "pilot") == 0
    out = capsys.readouterr().out
    assert "project pilot: random sampling" in out and "gold 20%" in out and "gold acc" in out
    with pytest.raises(PopalignError, match="project 'other' was never served.*served projects: pilot"):
        run_cli("export", "--db", db, "--project", "other", "-o", str(tmp_path / "x.jsonl"))
    unscored = tmp_path / "plain.jsonl"
    unscored.write_text(
        "".join(
            json.dumps({"id": f"u{i}", "prompt": "q", "chosen": "c", "rejected": "r"}) + "\n"
            for i in range(4)
        )
    )
    with pytest.raises(PopalignError, match="gold pairs need scored data"):
        build_context(db, unscored, LabelSettings(gold_fraction=0.1), project="plain")
    with pytest.raises(PopalignError, match="guidelines file .* is empty"):
        (tmp_path / "empty.md").write_text(" \n")
        build_context(db, prefs, project="pilot", guidelines=tmp_path / "empty.md")
    with pytest.raises(PopalignError, match="cannot read the guidelines file"):
        build_context(db, prefs, project="pilot", guidelines=tmp_path / "missing.md")
    with pytest.raises(PopalignError, match="gold_fraction must be"):
        LabelSettings(gold_fraction=1.0).validate()


def test_an_old_database_is_refused_untouched(tmp_path):
    import sqlalchemy as sa

    from popalign.label.db import make_engine

    path = tmp_path / "old.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL)")
        conn.exec_driver_sql("INSERT INTO meta VALUES ('schema', '1')")
    with pytest.raises(PopalignError, match="schema version 1; this popalign reads version 2"):
        make_engine(path)
    assert sa.inspect(engine).get_table_names() == ["meta"]


def test_server_stops_when_its_wake_up_pipe_is_gone(tmp_path, ultrafeedback_dir):
    """A trigger that has closed itself (seen once in a full test run: EBADF in stop) must not keep
    stop() from closing the server and ending its thread."""
    from popalign.label.server import build_context, start_server

    ctx = build_context(tmp_path / "labels.sqlite", subset(ultrafeedback_dir, tmp_path, 4))
    server = start_server(ctx)
    with urllib.request.urlopen(f"{server.url}/login", timeout=30) as resp:
        assert resp.status == 200
    server.server.trigger.close()  # what its loop does when the pipe reports an error or its end
    server.stop(timeout=10)
    assert not server.thread.is_alive()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/login", timeout=5)
