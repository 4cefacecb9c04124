"""Model cards: every model folder gets a README.md with data, size, config, limits; recipes add the WER table."""

from __future__ import annotations

import pytest


def test_training_writes_cards_with_the_data(tiny_training, tiny_corpus):
    result, exp_dir = tiny_training
    vocabulary = {w for t in tiny_corpus.texts for w in t.split()}
    card = (result.final_dir / "README.md").read_text()
    assert (exp_dir / "data.json").is_file()
    assert "## Training data" in card and "## Config" in card and "## Intended use and limits" in card
    assert f"{len(vocabulary)} distinct words" in card  # the tiny corpus' vocabulary
    assert "No WER table yet" in card
    assert "listener_hidden: 64" in card  # the config is the model's own


def test_average_writes_a_card_and_model_card_adds_results(tiny_training, tmp_path, capsys):
    from asr.cli import EXIT_USER_ERROR, main

    _, exp_dir = tiny_training
    out = tmp_path / "final"
    assert main(["average", "--exp-dir", str(exp_dir), "--n", "1", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "M parameters" in card and "utterances" in card
    table = "| set | WER |\n|---|---|\n| test | 12.5 |\n"
    (tmp_path / "RESULTS.md").write_text(table)
    assert main(["model-card", str(out), "--results", str(tmp_path / "RESULTS.md")]) == 0
    updated = (out / "README.md").read_text()
    assert "| test | 12.5 |" in updated and "No WER table yet" not in updated
    assert updated.replace(table.strip(), "") .count("## Config") == 1
    # Updating again replaces the table instead of adding a second one.
    (tmp_path / "RESULTS.md").write_text("| set | WER |\n|---|---|\n| test | 10.0 |\n")
    assert main(["model-card", str(out), "--results", str(tmp_path / "RESULTS.md")]) == 0
    again = (out / "README.md").read_text()
    assert "| test | 10.0 |" in again and "12.5" not in again
    capsys.readouterr()
    assert main(["model-card", str(tmp_path / "nope"), "--results", str(tmp_path / "RESULTS.md")]) == EXIT_USER_ERROR
    assert capsys.readouterr().err.startswith("asr: error:")


@pytest.mark.parametrize("data", [None, {"manifest": "m.jsonl", "utterances": 3, "hours": 0.01,
                                         "speakers": {"slt": 2, "awb": 1}, "distinct_words": 150,
                                         "common_words": ["GO"]}])
def test_render_card_limits(tiny_model_dir, data):
    from asr.checkpoint import load_las
    from asr.model_card import render_card

    _, tok, cfg = load_las(tiny_model_dir)
    card = render_card("final", cfg, tok, 1_234_567, data)
    assert "1.23 M parameters" in card
    if data:
        assert "150 distinct words" in card and "slt (2), awb (1)" in card and "Synthetic" in card
    else:
        assert "Not recorded" in card
