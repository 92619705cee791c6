"""Several campaigns at once (`studies.results.across`, `hvadam compare A B C`): the rank
table, win/tie/loss and performance profiles on campaigns with chosen values."""

from __future__ import annotations

import csv
import io
import math

import pytest
from across_fixtures import RATIOS, RHO, write_campaign, write_three

from studies.cli import main
from studies.results import UnknownCampaign, across_frame, load_across, profile_ratio


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('across') / 'hvadam.db'}"
    write_three(url)
    return url


def test_profiles_on_three_campaigns_match_the_hand_computed_rho(three):
    across = load_across(three, ["A", "B", "C"])
    ratios = across.ratios()
    assert list(ratios.columns) == ["A", "B", "C"]
    for opt, row in RATIOS.items():
        for campaign, expected in row.items():
            assert ratios.loc[opt, campaign] == pytest.approx(expected), (opt, campaign)
    profile = across.profile(list(RHO))
    for tau, row in RHO.items():
        for opt, expected in row.items():
            assert profile.loc[opt, tau] == pytest.approx(expected), (opt, tau)
    steps = across.profile_steps()
    assert steps["sgd"][0] == pytest.approx([1.5, 4.0])
    assert steps["sgd"][1] == pytest.approx([1 / 3, 2 / 3])
    assert steps["hvadam"][0] == pytest.approx([1.0, 2.0])
    assert steps["hvadam"][1] == pytest.approx([2 / 3, 1.0])


def test_rank_table_per_campaign_with_its_own_metric_and_the_search_fallback(three):
    frame = across_frame(three, ["A", "B", "C"])
    rows = {(r["campaign"], r["optimizer"]): r for r in frame.to_dict(orient="records")}
    assert [r["cost_rule"] for r in frame.drop_duplicates("campaign").to_dict("records")] == [
        "value", "error", "reciprocal",
    ]  # fmt: skip
    assert frame[frame["campaign"] == "A"]["optimizer"].tolist() == ["hvadam", "sgd", "adam"]
    assert [rows[("A", o)]["rank"] for o in ("hvadam", "sgd", "adam")] == [1, 2, 3]
    assert rows[("A", "sgd")]["value"] == pytest.approx(1.5)
    assert rows[("A", "sgd")]["std"] == pytest.approx(0.25)
    assert rows[("B", "adam")]["rank"] == 1 and rows[("B", "adam")]["metric"] == "accuracy"
    assert ("B", "sgd") not in rows  # sgd did not take part in B
    assert {r["source"] for k, r in rows.items() if k[0] == "C"} == {"search"}
    assert rows[("C", "sgd")]["value"] == 50.0 and rows[("C", "sgd")]["n"] == 1
    assert rows[("C", "adam")]["vs_best"] == "too few seeds"  # one value: no test
    assert rows[("A", "hvadam")]["vs_best"] == "best" and rows[("A", "hvadam")]["best"] == "hvadam"


def test_significance_against_the_best_is_welch_with_holm_as_scipy_computes_it(three):
    from scipy import stats

    frame = across_frame(three, ["A"])
    best = [0.75, 1.0, 1.25]
    raw = {
        "sgd": stats.ttest_ind([1.25, 1.5, 1.75], best, equal_var=False).pvalue,
        "adam": stats.ttest_ind([1.75, 2.0, 2.25], best, equal_var=False).pvalue,
    }
    # Holm over the two tests: the smaller p times 2, the larger times 1 (kept monotone)
    small, large = sorted(raw, key=raw.get)
    holm = {small: 2 * raw[small], large: max(2 * raw[small], raw[large])}
    got = frame.set_index("optimizer")
    for opt in ("sgd", "adam"):
        assert got.loc[opt, "p_holm"] == pytest.approx(holm[opt], rel=1e-9)
        assert got.loc[opt, "vs_best"] == ("worse" if holm[opt] < 0.05 else "not significant")
    assert got.loc["adam", "vs_best"] == "worse" and got.loc["sgd", "vs_best"] == "not significant"


def test_ratio_rule_for_non_positive_best_costs():
    assert profile_ratio(0.3, 0.1, is_best=False) == pytest.approx(3.0)
    assert profile_ratio(0.0, 0.0, is_best=True) == 1.0
    assert profile_ratio(0.5, 0.0, is_best=False) == math.inf  # a perfect best: no factor
    assert profile_ratio(-1.0, -2.0, is_best=False) == math.inf  # negative losses likewise


@pytest.fixture(scope="module")
def duels(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Known outcomes: K1 hvadam clearly better than adam, anon clearly worse (minimize);
    K2 the same by accuracy (maximize); K3 overlapping seeds (tie) and one anon seed (too few
    seeds: tie). Labels differ from classes: `hv-fixed` is an HVAdam study."""
    url = f"sqlite:///{tmp_path_factory.mktemp('duels') / 'hvadam.db'}"
    classes = {"hv-fixed": "hvadam", "anon": "anon", "adam": "adam"}
    write_campaign(
        url,
        "K1",
        classes=classes,
        confirm={
            "hv-fixed": [1.0, 1.01, 0.99],
            "anon": [3.0, 3.01, 2.99],
            "adam": [2.0, 2.01, 1.99],
        },
    )
    write_campaign(
        url,
        "K2",
        classes=classes,
        metric="accuracy",
        direction="maximize",
        confirm={
            "hv-fixed": [0.9, 0.91, 0.89],
            "anon": [0.5, 0.51, 0.49],
            "adam": [0.6, 0.61, 0.59],
        },
    )
    write_campaign(url, "K3", classes=classes, confirm={
        "hv-fixed": [1.0, 2.0, 3.0], "anon": [0.5], "adam": [1.5, 2.5, 3.5]})  # fmt: skip
    return url


def test_win_tie_loss_counts_on_known_outcomes(duels):
    across = load_across(duels, ["K1", "K2", "K3"])
    wtl = across.win_tie_loss().set_index(["candidate", "baseline"])
    assert wtl.loc[("hv-fixed", "adam")].tolist() == [2, 1, 0, 3]  # wins, ties, losses, campaigns
    assert wtl.loc[("anon", "adam")].tolist() == [0, 1, 2, 3]
    assert len(wtl) == 2  # candidates are not tested against each other
    o = across.outcomes.set_index(["campaign", "candidate"])
    assert o.loc[("K3", "anon"), "verdict"] == "too few seeds"
    assert across.optimizers[:2] == ["hv-fixed", "anon"]
    assert across.table.set_index(["campaign", "optimizer"]).loc[("K1", "hv-fixed"), "candidate"]


def test_compare_several_campaigns_prints_the_rank_table_as_csv(three, capsys):
    assert main(["compare", "A", "B", "C", "--storage", three, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["campaign"], r["optimizer"], r["rank"]) for r in rows] == [
        ("A", "hvadam", "1"), ("A", "sgd", "2"), ("A", "adam", "3"),
        ("B", "adam", "1"), ("B", "hvadam", "2"),
        ("C", "hvadam", "1"), ("C", "adam", "2"), ("C", "sgd", "3"),
    ]  # fmt: skip
    by = {(r["campaign"], r["optimizer"]): r for r in rows}
    assert float(by[("B", "hvadam")]["value"]) == pytest.approx(0.5)
    assert float(by[("B", "hvadam")]["ratio"]) == pytest.approx(2.0)
    assert by[("C", "sgd")]["source"] == "search" and by[("B", "adam")]["metric"] == "accuracy"
    assert float(by[("C", "sgd")]["ratio"]) == pytest.approx(4.0)


def test_compare_several_campaigns_as_json_and_table(three, capsys):
    import json

    assert main(["compare", "A", "C", "--storage", three, "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 6 and records[0]["campaign"] == "A"
    assert main(["compare", "A", "B", "C", "--storage", three]) == 0
    out = capsys.readouterr().out
    assert "B (accuracy, higher better)" in out and "absent" in out  # sgd is not in B
    assert "200 #1*" in out  # C's best search value, marked


def test_one_campaign_keeps_the_single_comparison(three, capsys):
    assert main(["compare", "A", "--storage", three, "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("optimizer,metric,direction,best_value")


def test_unknown_or_repeated_campaign_is_a_clear_error(three, capsys):
    with pytest.raises(UnknownCampaign, match=r"'nope'.*'A', 'B', 'C'"):
        load_across(three, ["A", "nope"])
    with pytest.raises(ValueError, match="more than once: A"):
        load_across(three, ["A", "B", "A"])
    assert main(["compare", "A", "nope", "--storage", three]) == 2
    err = capsys.readouterr().err
    assert "no campaign 'nope'" in err and "Traceback" not in err
    for flag in (["--budget-curve"], ["--target", "0.5"]):
        assert main(["compare", "A", "B", "--storage", three, *flag]) == 2
        assert f"{flag[0]} reads one campaign" in capsys.readouterr().err


def test_a_campaign_without_runs_negative_values_and_a_perfect_loss(sqlite_url, capsys):
    write_campaign(sqlite_url, "empty")
    write_campaign(sqlite_url, "neg", metric="reward", direction="maximize",
                   confirm={"hvadam": [-1.0, -2.0], "adam": [3.0, 4.0]})  # fmt: skip
    write_campaign(sqlite_url, "zero", confirm={"hvadam": [0.0, 0.0], "adam": [1.0, 1.0]})
    across = load_across(sqlite_url, ["empty", "neg", "zero"])
    ratios = across.ratios()
    # reward <= 0 costs infinity; a best loss of 0 leaves every other optimizer at infinity
    assert ratios.to_dict() == {
        "empty": {"hvadam": math.inf, "adam": math.inf},
        "neg": {"hvadam": math.inf, "adam": 1.0},
        "zero": {"hvadam": 1.0, "adam": math.inf},
    }
    assert across.profile([1e12]).iloc[:, 0].tolist() == [pytest.approx(1 / 3)] * 2
    assert across.meta.loc["neg", "cost_rule"] == "reciprocal"
    assert across.win_tie_loss().iloc[0].tolist() == ["hvadam", "adam", 0, 1, 1, 2]
    assert main(["compare", "empty", "neg", "zero", "--storage", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "absent" in out and "1 #2 ?" in out  # zero: both without spread, not testable
