"""Every stage runs a few steps on a micro model and leaves log, plot and checkpoint behind;
no stage reads a held-out task; evaluation JSON has the promised shape."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import training.data as data_module
from hypernet.io import load_checkpoint
from training import pipeline as P
from training.evaluate import METHODS, run_eval
from training.loop import LOG_FILE, PLOT_FILE, STATE_DIR
from training.presets import get_preset

TRAIN_TASKS = 3


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The smoke preset's stages on three training tasks; records every task file read."""
    work = tmp_path_factory.mktemp("work")
    P.write_synthetic(work / "data", 0, get_preset("smoke").suite)
    # A micro training set: a few train tasks, kept in their own directory.
    subset = work / "train_subset"
    subset.mkdir()
    for path in sorted((work / "data" / "train").glob("*.json"))[:: 7][:TRAIN_TASKS]:
        shutil.copy(path, subset / path.name)
    preset = get_preset("smoke")
    preset = replace(preset, teachers=replace(preset.teachers, per="task"))
    read: list[str] = []
    original = data_module.load_task
    patch = pytest.MonkeyPatch()
    patch.setattr(data_module, "load_task", lambda path, max_instances=None: read.append(str(path)) or original(path, max_instances))
    try:
        task_set = P.load_task_set([str(subset)], preset.held_back, preset.seed)
        base = P.stage_base(preset, work, task_set, "cpu", True)
        teachers = P.stage_teachers(preset, work, task_set, base, "cpu", True)
        meta = P.stage_meta_teacher(preset, work, task_set, base, "cpu", True)
        pretrained = P.stage_hypernet(preset, work, task_set, base, "cpu", True)
        final = P.stage_distill(preset, work, task_set, pretrained, meta, teachers, "cpu", True)
        out = work / "out"
        P.package(final, teachers, meta, out, {"test": True}, overwrite=False)
    finally:
        patch.undo()
    return {"work": work, "out": out, "read": read, "subset": subset, "task_set": task_set}


@pytest.mark.parametrize("stage", ["stage0_base", "stage1_meta_teacher/state", "stage2_hypernet", "stage3_distill"])
def test_each_stage_writes_log_plot_and_checkpoint(pipeline_run: dict, stage: str):
    stage_dir = pipeline_run["work"] / stage
    records = [json.loads(line) for line in (stage_dir / LOG_FILE).read_text().splitlines()]
    assert records and all(r["loss"] == r["loss"] for r in records if r["kind"] == "train")  # not NaN
    assert (stage_dir / PLOT_FILE).exists()
    assert (stage_dir / STATE_DIR / "model.safetensors").exists()


def test_teachers_are_peft_directories(pipeline_run: dict):
    from peft import PeftModel

    teachers = pipeline_run["work"] / "stage1_teachers" / "teachers"
    index = json.loads((teachers / "index.json").read_text())
    assert len(index["task_to_teacher"]) == TRAIN_TASKS
    name = next(iter(index["task_to_teacher"].values()))
    base = P.load_checkpoint(pipeline_run["out"]).base  # any base module of the right shape
    from training.teachers import load_base

    model = PeftModel.from_pretrained(load_base(pipeline_run["work"] / "stage0_base" / "model"), teachers / name)
    assert model is not None and base is not None


def test_distill_logs_every_loss_term_and_per_primitive_accuracy(pipeline_run: dict):
    records = [json.loads(line) for line in (pipeline_run["work"] / "stage3_distill" / LOG_FILE).read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert {"ce", "kl", "ins"} <= set(train[-1])
    assert train[-1]["kl"] > 0  # the teacher's distribution, not the student's own
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and "em" in evals[-1] and "em_no_fusion" in evals[-1]
    assert any(k.startswith("em/") for k in evals[-1])


def test_no_stage_reads_held_out_tasks(pipeline_run: dict):
    read = pipeline_run["read"]
    assert read, "the stages read no task files at all?"
    assert all(Path(p).parent == pipeline_run["subset"] for p in read)
    assert not any("unseen" in Path(p).name for p in read)


def test_shipped_directory_loads_and_holds_eval_parts(pipeline_run: dict):
    out = pipeline_run["out"]
    model = load_checkpoint(out)
    assert model.parameter_counts()["generator"] > 0
    assert (out / "meta_teacher" / "config.json").exists()
    assert (out / "teachers" / "index.json").exists()


def test_eval_json_shape_and_absent_not_zero(pipeline_run: dict):
    work, out = pipeline_run["work"], pipeline_run["out"]
    held_out = sorted((work / "data" / "unseen_composition").glob("*.json"))[:2]
    mixed = [str(p) for p in held_out] + [str(sorted(pipeline_run["subset"].glob("*.json"))[0])]
    result = run_eval(out, mixed, "def", max_instances=2, max_new_tokens=6)
    assert {"overall", "by_category", "by_task", "time_ratio_tagi_vs_concat"} <= set(result)
    assert result["time_ratio_tagi_vs_concat"] > 0
    for name in result["by_task"]:
        for method, scores in result["by_task"][name].items():
            assert method in METHODS and set(scores) == {"rougeL", "exact_match"}
    train_name = Path(mixed[-1]).stem
    assert "task_lora_oracle" in result["by_task"][train_name]
    for path in held_out:  # no oracle LoRA for a held-out task: absent, not zero
        assert "task_lora_oracle" not in result["by_task"][path.stem]
        assert {"base_concat", "meta_teacher", "tagi_no_fusion", "tagi", "tagi_wrong_instruction"} <= set(result["by_task"][path.stem])
    assert set(result["overall"]) == set(METHODS)


def test_tapir_distill_runs_in_rounds_and_logs_each_plan(pipeline_run: dict):
    from training.curriculum import CURRICULUM_LOG, CurriculumConfig, read_plans

    work = pipeline_run["work"]
    preset = get_preset("smoke")
    # The smoke teacher is untrained: keep every task (min_teacher_em 0) so the rounds have data.
    curriculum = CurriculumConfig(kind="tapir", rounds=3, probe_instances=2, min_teacher_em=0.0)
    preset = replace(preset, distill=replace(preset.distill, curriculum=curriculum))
    stage = work / "stage3_tapir"
    P.stage_distill(preset, work, pipeline_run["task_set"], work / "stage2_hypernet" / "checkpoint",
                    work / "stage1_meta_teacher" / "model", work / "stage1_teachers" / "teachers", "cpu", True, stage_dir=stage)
    plans = read_plans(stage)
    assert [p["round"] for p in plans] == [0, 1, 2]
    assert all(a["hard_share"] <= b["hard_share"] for a, b in zip(plans, plans[1:]))
    for plan in plans:
        assert set(plan["teacher_em"]) == {t.name for t in pipeline_run["task_set"].tasks}
        assert plan["sampled_mix"] and sum(plan["sampled_mix"].values()) == pytest.approx(1.0)
        assert set(plan["difficulty"]) == set(plan["kept"])
    records = [json.loads(line) for line in (stage / LOG_FILE).read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps[-1] == preset.distill.loop.steps and len(set(steps)) == len(steps)  # one run, no repeated steps
    assert (stage / "checkpoint" / "config.json").exists() and (stage / CURRICULUM_LOG).exists()


def test_curriculum_ablation_scores_both_arms_at_equal_compute(pipeline_run: dict):
    from training.ablation import ABLATION_FILE, card_section, run_ablation

    work, out = pipeline_run["work"], pipeline_run["out"]
    preset = get_preset("smoke")
    curriculum = replace(preset.distill.curriculum, rounds=2, probe_instances=2, min_teacher_em=0.0)
    # L_ins off: the fixture's teachers cover only its three-task subset.
    preset = replace(preset, distill=replace(preset.distill, curriculum=curriculum, use_ins=False))
    report = run_ablation(preset, work, out, sni_dir=None, device="cpu")
    assert set(report["arms"]) == {"uniform", "tapir"}
    assert report["arms"]["uniform"]["examples_seen"] == report["arms"]["tapir"]["examples_seen"] > 0
    assert len(report["arms"]["tapir"]["rounds"]) == 2
    assert set(report["sets"]) == {"synthetic_unseen_composition", "synthetic_unseen_parameter", "synthetic_unseen_paraphrase"}
    for arms in report["sets"].values():
        for summary in arms.values():
            assert summary["worst_category"]["name"] in summary["by_category"]
            assert summary["worst_category"]["exact_match"] <= summary["mean"]["exact_match"] + 1e-9
    assert report["winner"] in ("uniform", "tapir")
    assert json.loads((out / ABLATION_FILE).read_text())["winner"] == report["winner"]
    assert any("Curriculum ablation" in line for line in card_section(report))


def test_tapir_resume_after_an_interruption_equals_a_straight_run(pipeline_run: dict, monkeypatch: pytest.MonkeyPatch):
    import torch

    import training.distill as distill_module
    from training.curriculum import CurriculumConfig, read_plans

    work = pipeline_run["work"]
    preset = get_preset("smoke")
    curriculum = CurriculumConfig(kind="tapir", rounds=3, probe_instances=2, min_teacher_em=0.0)
    preset = replace(preset, distill=replace(preset.distill, curriculum=curriculum))
    args = (preset, work, pipeline_run["task_set"], work / "stage2_hypernet" / "checkpoint", work / "stage1_meta_teacher" / "model",
            work / "stage1_teachers" / "teachers", "cpu", True)
    straight = load_checkpoint(P.stage_distill(*args, stage_dir=work / "tapir_straight"))

    real_train, calls = distill_module.train, []

    def interrupted(*a, **kw):  # the process dies right after round 2 is saved
        result = real_train(*a, **kw)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(distill_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        P.stage_distill(*args, stage_dir=work / "tapir_resumed")
    monkeypatch.setattr(distill_module, "train", real_train)
    resumed = load_checkpoint(P.stage_distill(*args, stage_dir=work / "tapir_resumed"))
    for (name, a), (_, b) in zip(straight.generator.state_dict().items(), resumed.generator.state_dict().items()):
        assert torch.equal(a, b), name
    plans = [read_plans(work / d) for d in ("tapir_straight", "tapir_resumed")]
    assert plans[0] == plans[1]  # same plans (from the same students) and every round's sampled mix
