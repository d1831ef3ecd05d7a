"""The world model's training recipe: every stage after the runs it reads, comparisons at equal budgets."""

from __future__ import annotations

from pathlib import Path

from magic141.engine.train.__main__ import stages


def test_the_recipe_runs_every_stage_after_the_runs_it_reads(tmp_path):
    order = stages(tmp_path, ["--threads", "2"], "multimodal")
    names = [name for name, _, _ in order]
    for i, (_, _, argv) in enumerate(order):
        for flag in ("--vae-run", "--teacher-run", "--probe-run", "--init-run"):
            if flag in argv:
                assert Path(argv[argv.index(flag) + 1]).name in names[:i]
        assert "--threads" in argv
    curves = {name: argv for name, _, argv in order if name.startswith(("curve-", "ablation-"))}
    assert {f"curve-{task}-s{seed}" for task in ("i2v", "t2v") for seed in (0, 1, 2)} <= set(curves)
    budgets = {tuple(argv[argv.index(flag) + 1] for flag in ("--iterations", "--batch", "--eval-clips"))
               for argv in curves.values()}
    assert len(budgets) == 1  # finding (ii) and the ablations compare equal budgets
    assert all(argv[argv.index("--physics") + 1] == "multimodal" for name, _, argv in order
               if "--physics" in argv)
