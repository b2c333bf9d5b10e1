"""The report's rules on hand-made records: grouping keys, intervals near 100%, roles, wording, files."""

from __future__ import annotations

import base64
import math

import pytest

from ssmoe_cli.report import intervals
from ssmoe_cli.report.build import build_report
from ssmoe_cli.report.cells import fmt_value, full
from ssmoe_cli.report.records import RunRecord, group_runs
from ssmoe_cli.report.render import render
from ssmoe_cli.report.roles import Role, Roles, size_phrase

T975_2 = 4.302652729911275  # t(0.975, df=2)


def run(rid: str, seed: int, tags: dict[str, str], params: dict[str, str], acc: float = 0.9, t: int = 0) -> RunRecord:
    return RunRecord(
        rid,
        start_time=t,
        tags={"run_type": "train", **tags},
        params={"seed": str(seed), "model.seed": str(seed), "paths.output_dir": f"/out/{rid}", **params},
        metrics={"val/acc": acc, "test/acc": acc, "params/nonzero": 1000.0},
    )


def test_grouping_uses_every_varying_key_less_the_seed_its_copies_and_volatile_keys():
    fcl = {"model": "fcl", "prune": "none"}
    runs = [
        run("a", 0, fcl, {"optim.lr": "0.001", "skip_finished": "true"}),
        run("b", 1, fcl, {"optim.lr": "0.001", "skip_finished": "false"}),
        run("c", 0, fcl, {"optim.lr": "0.01", "skip_finished": "true"}),
    ]
    groups, keys = group_runs(runs)
    # seed and model.seed (a copy of it) vary but are the seed; paths, skip_finished: where/how a job ran.
    assert keys == ["model", "prune", "params.optim.lr"]
    assert [(g.label, [r.run_id for r in g.runs]) for g in groups] == [
        ("fcl / none / lr=0.001", ["a", "b"]),
        ("fcl / none / lr=0.01", ["c"]),
    ]


def test_keys_that_only_follow_from_a_choice_are_not_shown_and_same_suffixes_stay_apart():
    moe = {"model": "moe", "prune": "none", "gating": "softmax"}
    runs = [
        run("a", 0, {"model": "fcl", "prune": "none"}, {"model.hidden": "[300]"}),
        run("b", 0, moe, {"model.num_experts": "8", "model.gate.hidden": "[16]"}),
        run("c", 0, moe, {"model.num_experts": "8", "model.gate.hidden": "[32]"}),
    ]
    groups, keys = group_runs(runs)
    # model.num_experts and model.hidden differ only between models: not shown. gate.hidden varies within moe.
    assert keys == ["model", "prune", "params.model.gate.hidden"]
    assert [g.label for g in groups] == ["fcl / none", "moe / none / hidden=[16]", "moe / none / hidden=[32]"]
    both = {"model": "fcl", "prune": "none"}
    groups, keys = group_runs(
        [
            run("a", 0, both, {"model.hidden": "[1]", "data.hidden": "x"}),
            run("b", 0, both, {"model.hidden": "[2]", "data.hidden": "y"}),
        ]
    )
    assert [g.label for g in groups] == [
        "fcl / none / data.hidden=x / model.hidden=[1]",  # params in name order
        "fcl / none / data.hidden=y / model.hidden=[2]",
    ]


def test_repeated_seed_is_set_aside_by_name():
    tags = {"model": "fcl", "prune": "none"}
    report = build_report([run("old", 0, tags, {}, acc=0.5, t=1), run("new", 0, tags, {}, acc=0.7, t=2)])
    (g,) = report.groups
    assert [r.run_id for r in g.runs] == ["new"] and g.mean("test/acc") == 0.7
    assert [(s.run.run_id, s.kept.run_id) for s in report.set_aside] == [("old", "new")]
    assert (
        "set aside old: seed 0 of fcl / none again, and the later run new counts (one sample per seed)" in report.notes
    )


def test_accuracy_interval_near_100_stays_within_bounds():
    values = [0.995, 0.999, 0.990]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    plain = intervals.summarize(values)
    assert plain.ci_high == pytest.approx(mean + T975_2 * std / math.sqrt(3)) and plain.ci_high > 1  # the old bug
    cut = intervals.summarize(values, bounds=(0.0, 1.0))
    assert cut.ci_low == pytest.approx(plain.ci_low) and cut.ci_high == 1.0 and cut.mean == plain.mean
    # A seed at exactly 100% (small test sets) is a plain value, not an infinity.
    s = intervals.summarize([1.0, 1.0, 0.99], bounds=(0.0, 1.0))
    assert s.ci_high == 1.0 and s.ci_low == pytest.approx(0.99667 - T975_2 * 0.0057735 / math.sqrt(3), abs=1e-4)
    # Through the report: accuracy in percent, never above 100.00; a time never below 0.
    tags = {"model": "fcl", "prune": "none"}
    runs = [run(str(i), i, tags, {}, acc=v) for i, v in enumerate(values)]
    runs = [
        RunRecord(r.run_id, tags=r.tags, params=r.params, metrics={**r.metrics, "time/epoch_s": t})
        for r, t in zip(runs, (1.0, 1.2, 9.0), strict=True)
    ]
    report = build_report(runs)
    acc = next(m for m in report.metrics if m.name == "test/acc")
    cell = full(acc, report.groups[0].summary("test/acc"), 3)
    assert cell == f"99.47 ± 0.45 [{100 * cut.ci_low:.2f}, 100.00]"
    assert report.groups[0].summary("time/epoch_s").ci_low == 0.0


def test_size_phrases_never_say_one_times_more():
    assert size_phrase(266_610 / 33_000, digits=1) == "8.1x fewer nonzero parameters"
    assert size_phrase(1 / 1.25) == "1.25x more nonzero parameters"
    assert size_phrase(1.004) == "the same number of nonzero parameters (to 2 decimals)"
    assert size_phrase(0.996) == "the same number of nonzero parameters (to 2 decimals)"
    assert size_phrase(0.96, digits=1) == "the same number of nonzero parameters (to 1 decimals)"


def test_roles_are_options_not_names_in_code():
    assert Roles().proposed == Role("ptsne_moe", (("gating", "ptsne"),))
    with pytest.raises(ValueError, match="expected MODEL"):
        Role.parse("sgmoe:gating")
    # Any model names play the parts: a new model needs no edit in the report.
    tags = {"prune": "none"}
    runs = [run(f"d{s}", s, {"model": "dense2", **tags}, {}, acc=0.90) for s in (0, 1)]
    runs += [
        RunRecord(
            f"n{s}",
            tags={"model": "newmoe", **tags},
            params={"seed": str(s)},
            metrics={"val/acc": a, "test/acc": a, "params/nonzero": 100.0},
        )
        for s, a in ((0, 0.895), (1, 0.90))
    ]
    roles = Roles(Role.parse("newmoe"), Role.parse("dense2:prune=none"), Role.parse("other"))
    (f,) = build_report(runs, roles=roles).findings
    assert f.compression.claim.status == "supported" and f.compression.chosen.model == "newmoe"
    assert f.compression.claim.claim == "compression vs dense dense2"
    assert f.claims[1].reason == "no other runs"
    assert "This model (newmoe) achieves a compression ratio of 90.0 percent (10.0x fewer" in f.sentence


def test_terminal_tables_fit_the_console_with_short_labels_too():
    import io

    from rich.console import Console

    from ssmoe_cli.report.terminal import print_rich

    runs = []
    for model in ("fcl", "sgmoe"):
        for seed in range(3):
            metrics = {"test/acc": 0.9 + seed / 100, "params/nonzero": 266_610.0 + seed, "time/epoch_s": 1.5}
            metrics |= {"params/active_per_sample": 1e5, "compression/ratio_vs_fcl": 1.0, "experts/load_cv2": 0.2}
            runs.append(
                RunRecord(
                    f"{model}{seed}",
                    tags={"model": model, "prune": "none"},
                    params={"seed": str(seed)},
                    metrics=metrics,
                )
            )
    for width in (60, 80, 120):
        console = Console(file=io.StringIO(), width=width, color_system=None)
        print_rich(build_report(runs), console, intervals=True)
        lines = console.file.getvalue().splitlines()
        assert max(map(len, lines)) <= width and "…" not in console.file.getvalue()
        assert all(line[-1] in "┃│┓┩┘" for line in lines if line[:1] in "┃│┏┡└"), width  # never cropped
        assert any("91.00 ± 1.00" in line for line in lines)


def test_html_embeds_plots_and_markdown_links_them_from_its_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    png = tmp_path / "reports" / "x" / "accuracy_vs_nonzero.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG\r\n\x1a\n fake")
    report = build_report([run("a", 0, {"model": "fcl", "prune": "none"}, {})])
    report.plots = [str(png.relative_to(tmp_path))]
    page = render(report, "html")
    assert f'src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"' in page
    assert str(png) not in page and "<li>reports/" not in page
    md = render(report, "markdown", base=tmp_path / "out")
    assert "![accuracy_vs_nonzero](../reports/x/accuracy_vs_nonzero.png)" in md
    assert fmt_value(report.metrics[0], 0.9) == "90.00"
