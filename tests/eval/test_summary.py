"""The sweep's comparison and per-probe tables, from summaries built by hand."""

from __future__ import annotations

from ltray.eval.metrics import summarize_runs
from ltray.eval.summary import comparison_rows, probe_of, probe_rows, probe_title, sweep_markdown


def _rows():
    # Two splits of one configuration: full-shot All 60 and 70 → 65 ± 5; group_std 10 and 20 points → 15 ± 5.
    colt = summarize_runs([
        {"run": "s1", "full_all": 60.0, "full_many": 80.0, "full_medium": 60.0, "full_few": 40.0,
         "full_group_std": 10.0, "few_all": 30.0, "shot10_all": 20.0},
        {"run": "s2", "full_all": 70.0, "full_many": 90.0, "full_medium": 70.0, "full_few": 50.0,
         "full_group_std": 20.0, "few_all": 40.0, "shot10_all": 30.0},
    ], expected=["s1", "s2", "s3"])
    return [("colt", colt)]


def test_probe_names_split_at_the_first_underscore():
    assert probe_of("shot10_group_std") == ("shot10", "group_std")
    assert probe_of("few_few") == ("few", "few")
    assert probe_title("shot5") == "5-shot probe (mean over draws)"
    assert probe_title("few") == "few-shot linear probe (S_b)"


def test_probe_rows_strip_the_prefix():
    (name, summary), = probe_rows(_rows(), "full")
    assert name == "colt"
    assert summary["mean"] == {"all": 65.0, "many": 85.0, "medium": 65.0, "few": 45.0, "group_std": 15.0}
    assert summary["std"]["all"] == 5.0
    assert summary["missing"] == ["s3"] and summary["n_runs"] == 2


def test_comparison_has_headline_figures_and_other_probes_all():
    (name, summary), = comparison_rows(_rows())
    assert set(summary["mean"]) == {"all", "many", "medium", "few", "group_std", "few-shot All (%)",
                                    "10-shot All (%)"}
    assert summary["mean"]["few-shot All (%)"] == 35.0 and summary["std"]["10-shot All (%)"] == 5.0


def test_markdown_has_the_comparison_then_one_table_per_probe():
    text = sweep_markdown(_rows(), "sweep demo")
    assert text.startswith("# sweep demo")
    assert "| colt | 2 | 65.00 ± 5.00 | 85.00 ± 5.00 | 65.00 ± 5.00 | 45.00 ± 5.00 | 15.00 ± 5.00 |" in text
    assert text.index("## full-shot linear probe") < text.index("## few-shot linear probe (S_b)") < \
        text.index("## 10-shot probe (mean over draws)")
    assert text.count("| s3 |") == 4


def test_std_figures_are_points_with_two_decimals_in_every_table():
    summary = summarize_runs([
        {"run": "s1", "full_all": 60.0, "full_group_std": 10.0, "few_all": 30.0, "few_group_std": 30.0},
        {"run": "s2", "full_all": 70.0, "full_group_std": 20.0, "few_all": 40.0, "few_group_std": 50.0},
    ])
    text = sweep_markdown([("colt", summary)], "sweep demo")
    few_table = text[text.index("## few-shot linear probe (S_b)"):]
    assert "| Std (points) |" in few_table
    assert "| colt | 2 | 35.00 ± 5.00 | 40.00 ± 10.00 | – |" in few_table


def test_the_figures_pair_with_the_plain_simclr_configuration():
    from ltray.cluster.sweep import baseline_config

    assert baseline_config(["colt", "simclr", "sdclr"]) == "simclr"
    assert baseline_config(["colt colt.budget:500 temperature:0.2", "simclr temperature:0.2"]) == "simclr temperature:0.2"
    assert baseline_config(["simclr temperature:0.1", "simclr temperature:0.2"]) is None  # no single baseline
    assert baseline_config(["colt", "sdclr"]) is None
