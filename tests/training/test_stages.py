"""Every stage runs a few steps on a micro model and leaves log, plot and checkpoint behind;
no stage reads a held-out task; evaluation JSON has the promised shape."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import training.data as data_module
from hypernet.io import load_checkpoint
from training import pipeline as P
from training.common import load_task_set, primitive_group
from training.evaluate import METHODS, run_eval
from training.loop import LOG_FILE, PLOT_FILE, STATE_DIR
from training.presets import LOOPS, get_path, get_preset, replace_path, with_steps
from training.stages import STAGE, StageInputs, run_all, run_stage

TRAIN_TASKS = 3


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The smoke preset's stages on three training tasks; records every task file read."""
    work = tmp_path_factory.mktemp("work")
    P.write_synthetic(work / "data", 0, get_preset("smoke").suite)
    # A micro training set: a few train tasks, kept in their own directory.
    subset = work / "train_subset"
    subset.mkdir()
    for path in sorted((work / "data" / "train").glob("*.json"))[::7][:TRAIN_TASKS]:
        shutil.copy(path, subset / path.name)
    preset = get_preset("smoke")
    preset = replace(preset, teachers=replace(preset.teachers, per="task"))
    # Every loss logged, and the meta teacher and stage 2 on all (~60) training pairs per step, so
    # that their few steps show learning above the noise of which examples a batch drew.
    for path in LOOPS:
        preset = replace_path(preset, path, replace(get_path(preset, path), log_every=1))
    for path in ("teachers.meta_loop", "hypernet_pretrain.loop"):
        preset = replace_path(preset, path, replace(get_path(preset, path), batch_size=64))
    read: list[str] = []
    original = data_module.load_task
    patch = pytest.MonkeyPatch()
    patch.setattr(
        data_module, "load_task", lambda path, max_instances=None: read.append(str(path)) or original(path, max_instances)
    )
    try:
        task_set = load_task_set([str(subset)], preset.held_back, preset.seed)
        results = run_all(preset, work, task_set, device="cpu")
        out = work / "out"
        P.package(results["distill"], results["teachers"], results["meta-teacher"], out, {"test": True}, overwrite=False)
    finally:
        patch.undo()
    return {"work": work, "out": out, "read": read, "subset": subset, "task_set": task_set, "preset": preset, "results": results}


@pytest.mark.parametrize("stage", ["stage0_base", "stage1_meta_teacher/state", "stage2_hypernet", "stage3_distill"])
def test_each_stage_writes_log_plot_and_checkpoint(pipeline_run: dict, stage: str):
    import math

    stage_dir = pipeline_run["work"] / stage
    records = [json.loads(line) for line in (stage_dir / LOG_FILE).read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) >= 2 and all(math.isfinite(x) for x in losses)  # not NaN, not infinite
    # It learns: the last loss is clearly below the first (the untrained model's), beyond the few
    # percent that drawing other examples moves an untrained model's loss.
    assert losses[-1] < 0.97 * losses[0], losses
    assert (stage_dir / PLOT_FILE).exists()
    assert (stage_dir / STATE_DIR / "model.safetensors").exists()


def test_teachers_are_peft_directories(pipeline_run: dict):
    """Each teacher loads with real PEFT, and our LoRA math on the same base (the loader stage 3
    and the evaluation use, at the teacher's own alpha/r) gives PEFT's outputs."""
    from peft import PeftModel

    from training.common import load_base_model
    from training.teachers import load_teacher_weights

    teachers = pipeline_run["work"] / "stage1_teachers" / "teachers"
    index = json.loads((teachers / "index.json").read_text())
    assert set(index["task_to_teacher"]) == {t.name for t in pipeline_run["task_set"].tasks}
    assert len(set(index["task_to_teacher"].values())) == TRAIN_TASKS  # per="task": one each
    ours = load_checkpoint(pipeline_run["results"]["distill"]).eval()  # its base is stage 0's
    pairs = pipeline_run["task_set"].train[:4]
    batch = ours.tokenizer([p.input for p in pairs], padding=True, return_tensors="pt")
    decoder = ours.tokenizer([p.output for p in pairs], padding=True, return_tensors="pt")["input_ids"]
    decoder = torch.cat([torch.zeros_like(decoder[:, :1]), decoder[:, :-1]], dim=1)  # T5: start token, shifted right
    with torch.no_grad():
        plain = ours(batch["input_ids"], batch["attention_mask"], decoder)
        for name in sorted(set(index["task_to_teacher"].values())):
            base = load_base_model(pipeline_run["work"] / "stage0_base" / "model")
            peft_model = PeftModel.from_pretrained(base, teachers / name).eval()
            theirs = peft_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder
            ).logits
            lora = load_teacher_weights(teachers, [name], ours.layout).select(torch.zeros(len(pairs), dtype=torch.long))
            mine = ours(batch["input_ids"], batch["attention_mask"], decoder, lora=lora)
            assert (theirs - plain).abs().max() > 1e-4, name  # the teacher changes the outputs at all
            torch.testing.assert_close(mine - plain, theirs - plain, rtol=1e-3, atol=1e-6)


def test_distill_logs_every_loss_term_and_per_primitive_accuracy(pipeline_run: dict):
    import math

    records = [json.loads(line) for line in (pipeline_run["work"] / "stage3_distill" / LOG_FILE).read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train
    for record in train:  # every term of L = L_ce + lambda1 L_kl + lambda2 L_ins, at every logged step
        for term in ("loss", "ce", "kl", "ins"):
            assert term in record and math.isfinite(record[term]), (term, record)
        assert record["kl"] > 0  # the teacher's distribution, not the student's own
        assert record["ins"] > 0  # a generated update is never exactly its teacher's
        config = pipeline_run["preset"].distill
        expected = record["ce"] + config.lambda_kl * record["kl"] + config.lambda_ins * record["ins"]
        assert record["loss"] == pytest.approx(expected, rel=1e-4), record  # the terms are the loss
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and "em" in evals[-1] and "em_no_fusion" in evals[-1]
    groups = {g for g in pipeline_run["task_set"].categories()}
    for record in evals:
        assert {k.removeprefix("em/") for k in record if k.startswith("em/")} == groups
        assert all(0 <= record[k] <= 1 for k in record if k.startswith("em"))


def test_no_stage_reads_held_out_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The pipeline's own selection (what `tagi train` hands every stage) is the whole train
    split and nothing else; held-out task files are never opened."""
    from training.data import read_split
    from training.suite import SPLITS

    read: list[Path] = []
    original = data_module.load_task
    monkeypatch.setattr(
        data_module, "load_task", lambda path, max_instances=None: read.append(Path(path)) or original(path, max_instances)
    )
    task_set = P.work_task_set(get_preset("smoke"), tmp_path)
    data = tmp_path / "data"
    splits = {split: set(read_split(data / "splits" / f"{split}.txt")) for split in SPLITS}
    names = {t.name for t in task_set.tasks}
    assert names == splits["train"] and len(task_set.tasks) == len(splits["train"])
    for split in SPLITS[1:]:
        assert splits[split] and not names & splits[split], split
    assert sorted(p.parent for p in read) == [data / "train"] * len(splits["train"])


def test_stages_open_no_task_file_beyond_their_task_set(pipeline_run: dict):
    """The stages (run_all on a task set) take their tasks from the set they are handed only."""
    assert pipeline_run["read"] and all(Path(p).parent == pipeline_run["subset"] for p in pipeline_run["read"])


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
        expected = {"base_concat", "meta_teacher", "tagi_no_fusion", "tagi", "tagi_wrong_instruction"}
        assert expected <= set(result["by_task"][path.stem])
    assert set(result["overall"]) == set(METHODS)


def test_tapir_distill_runs_in_rounds_and_logs_each_plan(pipeline_run: dict):
    from training.curriculum import CURRICULUM_LOG, CurriculumConfig, read_plans

    work = pipeline_run["work"]
    preset = get_preset("smoke")
    # The smoke teacher is untrained: keep every task (min_teacher_em 0) so the rounds have data.
    curriculum = CurriculumConfig(kind="tapir", rounds=3, probe_instances=2, min_teacher_em=0.0)
    preset = replace(preset, distill=replace(preset.distill, curriculum=curriculum))
    stage = work / "stage3_tapir"
    run_stage(STAGE["distill"], preset, StageInputs(pipeline_run["task_set"], pipeline_run["results"], "cpu", True), stage)
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


HELD_OUT_GROUPS = 2
"""Primitive groups (one task each) kept per held-out synthetic set in an ablation's work directory
(see ablation_work): two, so that a set's worst group and its mean can differ."""
SCORED_TOKENS = 12
"""Tokens an ablation generates per answer when it scores an arm (default 64): the barely trained
arms here write to the limit every time, and score near zero at any length. Most synthetic answers
fit (median about 5 tokens with the smoke tokenizer); what these tests check is the report."""


def ablation_work(pipeline_run: dict, name: str, stages: tuple[str, ...]) -> Path:
    """A work directory for an ablation: the fixture's finished `stages`, and its synthetic data cut
    to what the ablation's checks read. An ablation trains on the whole train split and scores TAGI
    on every synthetic set by generating up to 64 tokens per task and method, so the cost is the task
    count (natural_wording alone holds ~150 tasks): here the train split is the fixture's three-task
    subset (the tasks its teachers were trained on) and each held-out set keeps the first task of each of
    its first groups. Every set is still there and still scored; the split files list what is kept."""
    work = pipeline_run["work"].parent / name
    for part in stages:
        shutil.copytree(pipeline_run["work"] / part, work / part)
    source, data = pipeline_run["work"] / "data", work / "data"
    (data / "splits").mkdir(parents=True)
    for split_file in sorted((source / "splits").glob("*.txt")):
        split = split_file.stem
        if split == "train":
            kept = sorted(pipeline_run["subset"].glob("*.json"))
        else:
            first_of_group: dict[str, Path] = {}
            for path in sorted((source / split).glob("*.json")):
                first_of_group.setdefault(primitive_group(data_module.load_task(path).category), path)
            kept = list(first_of_group.values())[:HELD_OUT_GROUPS]
        (data / split).mkdir()
        for path in kept:
            shutil.copy(path, data / split / path.name)
        (data / "splits" / split_file.name).write_text("".join(f"{p.stem}\n" for p in kept))
    return work


def test_curriculum_ablation_scores_both_arms_at_equal_compute(pipeline_run: dict):
    from training.ablation import ABLATION_FILE, card_section, run_ablation

    out = pipeline_run["out"]
    preset = get_preset("smoke")
    curriculum = replace(preset.distill.curriculum, rounds=2, probe_instances=2, min_teacher_em=0.0)
    # L_ins off (a cheaper stage 3: the schedules are what is compared). The fixture's own stage 3
    # (L_ins on) is then another config, not this ablation's uniform arm: a work directory without it.
    preset = replace(preset, distill=replace(preset.distill, curriculum=curriculum, use_ins=False))
    work = ablation_work(pipeline_run, "ablation_work", ("stage1_teachers", "stage1_meta_teacher", "stage2_hypernet"))
    report = run_ablation(preset, work, out, sni_dir=None, device="cpu", max_new_tokens=SCORED_TOKENS)
    assert set(report["arms"]) == {"uniform", "tapir"}
    assert report["arms"]["uniform"]["examples_seen"] == report["arms"]["tapir"]["examples_seen"] > 0
    assert len(report["arms"]["tapir"]["rounds"]) == 2
    from training.pipeline import SYNTH_SETS

    assert set(report["sets"]) == {name for name, split in SYNTH_SETS.items() if split != "train"}
    for arms in report["sets"].values():
        for summary in arms.values():
            assert summary["worst_category"]["name"] in summary["by_category"]
            assert summary["worst_category"]["exact_match"] <= summary["mean"]["exact_match"] + 1e-9
    assert report["winner"] in ("uniform", "tapir")
    assert json.loads((out / ABLATION_FILE).read_text())["winner"] == report["winner"]
    assert any("Curriculum ablation" in line for line in card_section(report))


def test_encoder_ablation_reruns_stages_2_and_3_per_arm_at_equal_compute(pipeline_run: dict):
    from training.ablation import ENCODER_ARMS, ENCODER_FILE, encoder_card_section, run_encoder_ablation
    from training.pipeline import SYNTH_SETS

    out = pipeline_run["out"]
    preset = get_preset("smoke")
    preset = replace(preset, distill=replace(preset.distill, use_ins=False))  # as in the curriculum ablation
    # Stage 2 cut to 4 steps (every arm alike): each arm still trains its own stages 2 and 3.
    preset = replace_path(preset, "hypernet_pretrain.loop", with_steps(preset.hypernet_pretrain.loop, 4))
    work = ablation_work(pipeline_run, "encoder_ablation_work", ("stage0_base", "stage1_teachers", "stage1_meta_teacher"))
    report = run_encoder_ablation(preset, work, out, steps=2, device="cpu", max_instances=2, max_new_tokens=SCORED_TOKENS)
    arms = report["arms"]
    assert list(arms) == list(ENCODER_ARMS)
    assert {a["examples_seen"] for a in arms.values()} == {2 * preset.distill.loop.batch_size}
    default, pooled, base = (arms[name]["parameters"] for name in ENCODER_ARMS)
    # the pooled arm lacks exactly the attention; the base arm has no external encoder and no projection
    assert (
        pooled["generator"] < default["generator"]
        and pooled["instruction_encoder_frozen"] == default["instruction_encoder_frozen"] > 0
    )
    assert base["instruction_encoder_frozen"] == base["fusion_projection"] == 0 < default["fusion_projection"]
    for name in ENCODER_ARMS:  # each arm trained its own stages 2 and 3
        assert (Path(arms[name]["stage_dir"]) / "stage3_distill" / "checkpoint" / "config.json").exists()
    assert set(report["sets"]) == set(SYNTH_SETS)
    for row in report["sets"].values():
        assert set(row) == set(ENCODER_ARMS)
    written = json.loads((out / ENCODER_FILE).read_text())
    assert written["distill_steps"] == 2 and written["max_new_tokens"] == SCORED_TOKENS  # the shortened scoring is on record
    assert any("Instruction encoder ablation" in line for line in encoder_card_section(report))


def test_citing_ablation_merges_arms_and_reuses_the_recipes_own_stage_3(pipeline_run: dict):
    from training.ablation import CITING_FILE, citing_card_section, run_citing_ablation
    from training.citing import CitingConfig
    from training.pipeline import SYNTH_SETS

    out = pipeline_run["out"]
    preset = get_preset("smoke")
    curriculum = replace(preset.distill.curriculum, rounds=2, probe_instances=2, min_teacher_em=0.0)
    citing = CitingConfig(sample_per_round=4)  # small rounds; every arm of this recipe records it
    preset = replace(preset, distill=replace(preset.distill, curriculum=curriculum, use_ins=False, citing=citing))
    work = ablation_work(pipeline_run, "citing_ablation_work", ("stage1_teachers", "stage1_meta_teacher", "stage2_hypernet"))
    steps = preset.distill.loop.steps
    # Two processes' worth: one arm each, the second merged into the first's citing.json.
    run_citing_ablation(
        preset, work, out, steps=steps, device="cpu", max_instances=2, arms=("citing",), max_new_tokens=SCORED_TOKENS
    )
    report = run_citing_ablation(
        preset, work, out, steps=steps, device="cpu", max_instances=2, arms=("uniform",), max_new_tokens=SCORED_TOKENS
    )
    assert list(report["arms"]) == ["uniform", "citing"]
    # uniform at the recipe's budget is the recipe's own stage 3: trained (or reused) in the pipeline's directory
    assert report["arms"]["uniform"]["stage_dir"] == str(work / "stage3_distill")
    assert report["arms"]["citing"]["stage_dir"] == str(work / "ablate_citing" / "citing")
    assert report["arms"]["uniform"]["examples_seen"] == report["arms"]["citing"]["examples_seen"] == steps * 8
    assert report["arms"]["uniform"]["citing_rounds"] == [] and len(report["arms"]["citing"]["citing_rounds"]) == 2
    held_out = {name for name, split in SYNTH_SETS.items() if split != "train"}
    assert set(report["sets"]) == held_out
    for row in report["sets"].values():
        assert set(row) == {"uniform", "citing"} and row["uniform"]["instances"] == row["citing"]["instances"] > 0
        assert "exact_match" in row["citing"]["revised"]["mean"] and row["citing"]["revise"]["cost_ratio"] > 0
    means = report["synthetic_mean_exact_match"]
    versus = report["vs_uniform"]["citing"]
    assert versus["gain"] == pytest.approx(means["citing"] - means["uniform"], abs=0.01) and versus["noise"] > 0
    assert report["winner"] == ("citing" if versus["gain"] > versus["noise"] else "uniform")
    assert json.loads((out / CITING_FILE).read_text())["arms"].keys() == report["arms"].keys()
    card = "\n".join(citing_card_section(report))
    assert "Budget: the recipe's own" in card and "Gain over uniform" in card


def test_citing_winner_must_clear_the_noise():
    from training.ablation import _winner

    assert _winner({"tapir": {"gain": 3.0, "noise": 5.0}, "citing": {"gain": -1.0, "noise": 5.0}}) == "uniform"
    assert _winner({"tapir": {"gain": 6.0, "noise": 5.0}, "citing": {"gain": 9.0, "noise": 10.0}}) == "tapir"
    assert _winner({"tapir": {"gain": 6.0, "noise": 5.0}, "citing": {"gain": 9.0, "noise": 8.0}}) == "citing"  # largest gain


def _trained_state(stage_dir: Path) -> dict[str, dict]:
    """Every loop state's trained tensors and every log (without wall-clock times) under a stage directory."""
    from safetensors.torch import load_file

    states = {str(p.relative_to(stage_dir)): load_file(p) for p in sorted(stage_dir.rglob(f"{STATE_DIR}/model.safetensors"))}
    logs = {
        str(p.relative_to(stage_dir)): [
            {k: v for k, v in json.loads(line).items() if k != "time"} for line in p.read_text().splitlines()
        ]
        for p in sorted(stage_dir.rglob(LOG_FILE))
    }
    return {"states": states, "logs": logs}


def _assert_same_training(a: dict, b: dict) -> None:
    import torch

    assert a["states"].keys() == b["states"].keys() and a["states"]
    for path in a["states"]:
        assert a["states"][path].keys() == b["states"][path].keys()
        for name in a["states"][path]:
            assert torch.equal(a["states"][path][name], b["states"][path][name]), (path, name)
    assert a["logs"] == b["logs"]  # every step once, with the straight run's losses and evaluations


# (stage, steps done when the process dies): each between two of its saves, so the replay path runs.
KILLS = [("base", 6), ("teachers", 3), ("meta-teacher", 5), ("hypernet-pretrain", 3), ("distill", 5)]


@pytest.mark.parametrize("stage, killed_after", KILLS)
def test_a_stage_killed_between_saves_resumes_bit_exact(pipeline_run: dict, kill_at_step, stage: str, killed_after: int):
    work, preset = pipeline_run["work"], pipeline_run["preset"]
    row = STAGE[stage]
    assert get_path(preset, row.loop).checkpoint_every < killed_after < get_path(preset, row.loop).steps or stage == "teachers"
    straight = work / row.directory
    if stage == "teachers":  # the smoke teachers save every step: give them room between saves
        teacher_loop = replace(preset.teachers.teacher_loop, steps=4, checkpoint_every=2)
        preset = replace(preset, teachers=replace(preset.teachers, teacher_loop=teacher_loop))
        straight = work / "resume_teachers_straight"
        run_stage(row, preset, StageInputs(pipeline_run["task_set"], pipeline_run["results"], "cpu", True), straight)
    inputs = StageInputs(pipeline_run["task_set"], pipeline_run["results"], "cpu", True)
    resumed = work / f"resume_{stage}"
    with pytest.raises(kill_at_step(killed_after)):
        run_stage(row, preset, inputs, resumed)
    run_stage(row, preset, inputs, resumed)
    _assert_same_training(_trained_state(straight), _trained_state(resumed))


def test_tapir_killed_mid_round_resumes_bit_exact(pipeline_run: dict, kill_at_step):
    from training.curriculum import CurriculumConfig, read_plans, round_ends

    work = pipeline_run["work"]
    preset = get_preset("smoke")
    curriculum = CurriculumConfig(kind="tapir", rounds=3, probe_instances=2, min_teacher_em=0.0)
    preset = replace(preset, distill=replace(preset.distill, curriculum=curriculum))
    # Rounds end at steps 2, 4, 6; the last save before the kill is step 3's, inside round 2, and
    # the process dies inside round 3, after planning it: the resumed run replays into round 3.
    assert round_ends(preset.distill.loop.steps, 3) == [2, 4, 6] and preset.distill.loop.checkpoint_every == 3
    inputs = StageInputs(pipeline_run["task_set"], pipeline_run["results"], "cpu", True)
    straight = load_checkpoint(run_stage(STAGE["distill"], preset, inputs, work / "tapir_straight"))
    with pytest.raises(kill_at_step(5)):
        run_stage(STAGE["distill"], preset, inputs, work / "tapir_resumed")
    assert len(read_plans(work / "tapir_resumed")) == 3
    resumed = load_checkpoint(run_stage(STAGE["distill"], preset, inputs, work / "tapir_resumed"))
    for (name, a), (_, b) in zip(straight.generator.state_dict().items(), resumed.generator.state_dict().items()):
        assert torch.equal(a, b), name
    _assert_same_training(_trained_state(work / "tapir_straight"), _trained_state(work / "tapir_resumed"))
    plans = [read_plans(work / d) for d in ("tapir_straight", "tapir_resumed")]
    assert plans[0] == plans[1]  # same plans (from the same students) and every round's sampled mix


def test_a_finished_stage_is_reused_and_a_changed_config_refused(pipeline_run: dict):
    from hypernet.errors import UserError

    work, preset = pipeline_run["work"], pipeline_run["preset"]
    inputs = StageInputs(pipeline_run["task_set"], pipeline_run["results"], "cpu", True)
    before = (work / "stage2_hypernet" / "checkpoint" / "generator.safetensors").stat().st_mtime_ns
    result = run_stage(STAGE["hypernet-pretrain"], preset, inputs, work / "stage2_hypernet")
    assert result == work / "stage2_hypernet" / "checkpoint"
    assert (work / "stage2_hypernet" / "checkpoint" / "generator.safetensors").stat().st_mtime_ns == before  # not retrained
    changed = replace(preset, hypernet_pretrain=replace(preset.hypernet_pretrain, segment_tokens=5))
    with pytest.raises(UserError, match=r"another config \(hypernet_pretrain\.segment_tokens 6 -> 5\)"):
        run_stage(STAGE["hypernet-pretrain"], changed, inputs, work / "stage2_hypernet")
