"""`tagi train --base`: stages 1-3 on a local Hugging Face T5 and Super-Natural Instructions.

One sni-smoke run (configs/sni-smoke.yaml: a micro random-initialised T5 from `tagi init-base` and
the SNI subset shipped in data/sni) goes end to end through the CLI in this process; the other
tests reuse its work directory so that each trains only the stage it is about.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from support import recipe_file

import hypernet
from hypernet.cli import main
from hypernet.errors import UserError
from training.data import SNI_DIR, read_split
from training.distill import lambda_ins
from training.hypernet_pretrain import TextCorpus
from training.presets import CONFIGS_DIR, DistillConfig, SniConfig, get_preset, load_recipe
from training.stages import DONE, GIVEN, STAGE

SMOKE = CONFIGS_DIR / "sni-smoke.yaml"
SPLIT = SNI_DIR / "splits" / "subset"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("own") / "base"
    assert main(["init-base", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def trained(base: Path) -> dict[str, Path]:
    """The sni-smoke run: `tagi train --recipe configs/sni-smoke.yaml --base DIR`, with its evaluation."""
    root = base.parent
    out, work = root / "out", root / "work"
    argv = ["train", "--recipe", str(SMOKE), "--base", str(base), "--sni", str(SNI_DIR)]
    assert main([*argv, "--out", str(out), "--work", str(work), "--threads", "1"]) == 0
    return {"base": base, "out": out, "work": work, "argv": argv}


def _work_from(trained: dict[str, Path], work: Path, *stages: str) -> Path:
    """A work directory holding the given base, the SNI store and copies of these finished stages."""
    shutil.copytree(trained["work"] / "data", work / "data")
    for name in ("base", *stages):
        shutil.copytree(trained["work"] / STAGE[name].directory, work / STAGE[name].directory)
    return work


def test_sni_smoke_trains_stages_1_to_3_on_the_given_base_and_scores_the_test_split(trained):
    out, work = trained["out"], trained["work"]
    # no stage 0: the base directory is recorded, not built
    assert json.loads((work / "stage0_base" / GIVEN).read_text())["result"] == str(trained["base"].resolve())
    assert not (work / "stage0_base" / "model").exists()
    for name in ("teachers", "meta-teacher", "hypernet-pretrain", "distill"):
        assert (work / STAGE[name].directory / DONE).exists(), name
    # the training tasks are the split's, one teacher per category
    train_tasks = read_split(SPLIT / "train_tasks.txt")
    info = json.loads((out / "pipeline.json").read_text())
    assert info["train_tasks"] == train_tasks and info["base"] == {"path": str(trained["base"].resolve())}
    index = json.loads((out / "teachers" / "index.json").read_text())
    assert sorted(index["task_to_teacher"]) == sorted(train_tasks) and index["per"] == "category"
    # the packaged checkpoint loads around the given base and makes adapters
    model = hypernet.load(out)
    base_config = json.loads((trained["base"] / "config.json").read_text())
    assert model.base.config.d_model == base_config["d_model"] and model.config.instruction_encoder.kind == "base"
    assert model.adapter("Return the first two elements of the list.").weights is not None
    # eval.json: the split's test tasks, the first test_instances of each, in def+2pos
    result = json.loads((out / "eval.json").read_text())
    assert set(result) == {"sni_test"}
    sni_test = result["sni_test"]
    test_tasks = read_split(SPLIT / "test_tasks.txt")
    assert sorted(sni_test["by_task"]) == sorted(test_tasks) and sni_test["format"] == "def+2pos"
    assert sni_test["instances"] == len(test_tasks) * get_preset("sni-smoke").sni.test_instances
    assert "tagi" in sni_test["overall"] and "meta_teacher" in sni_test["overall"]
    # stage 3 weighed L_ins by sigmoid(L_ins), as the recipe asks
    records = [json.loads(line) for line in (work / "stage3_distill" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert steps
    for r in steps:
        assert r["lambda_ins"] == pytest.approx(1 / (1 + math.exp(-r["ins"])), rel=1e-5)
        assert r["loss"] == pytest.approx(r["ce"] + 5.0 * r["kl"] + r["lambda_ins"] * r["ins"], rel=1e-4)


def test_a_given_meta_teacher_replaces_training_one(trained, tmp_path: Path, capsys):
    given = trained["work"] / "stage1_meta_teacher" / "model"
    work = _work_from(trained, tmp_path / "work", "teachers", "hypernet-pretrain")
    out = tmp_path / "out"
    argv = [*trained["argv"], "--work", str(work), "--threads", "1", "--no-eval"]
    assert main([*argv, "--out", str(out), "--meta-teacher", str(given)]) == 0
    stage = work / "stage1_meta_teacher"
    assert sorted(p.name for p in stage.iterdir()) == [GIVEN]  # recorded; no state, no log: nothing trained
    assert json.loads((stage / GIVEN).read_text()) == {"stage": "meta-teacher", "result": str(given.resolve())}
    assert (work / "stage3_distill" / DONE).exists()
    assert (out / "meta_teacher" / "model.safetensors").read_bytes() == (given / "model.safetensors").read_bytes()
    assert json.loads((out / "pipeline.json").read_text())["meta_teacher_given"] == str(given.resolve())
    # the later stages learned from that teacher: the same work directory without it is refused
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "meta-teacher" in err and str(given.resolve()) in err and "\n" not in err


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_stage_2_reads_a_corpus_file(trained, tmp_path: Path, kind: str, capsys):
    documents = [f"document {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(6)]
    corpus = tmp_path / f"corpus.{kind}"
    if kind == "txt":
        corpus.write_text("\n\n".join(documents) + "\n")  # blank lines are not documents
    else:
        corpus.write_text("".join(json.dumps({"text": d, "url": "x"}) + "\n" for d in documents))
    assert list(TextCorpus(corpus)) == documents
    work = _work_from(trained, tmp_path / "work")
    argv = ["train", "hypernet-pretrain", "--recipe", str(SMOKE), "--work", str(work), "--sni", str(SNI_DIR)]
    assert main([*argv, "--corpus", str(corpus), "--steps", "1", "--threads", "1"]) == 0
    done = json.loads((work / "stage2_hypernet" / DONE).read_text())
    assert done["config"]["hypernet_pretrain"]["corpus"] == str(corpus.resolve())
    # the stage reads the file: a document that is not text stops it with one line naming the file
    broken = tmp_path / f"broken.{kind}"
    broken.write_bytes(b"\xff\xfe not utf-8\n" if kind == "txt" else b'{"title": "no text field"}\n')
    capsys.readouterr()
    argv[argv.index("--work") + 1] = str(_work_from(trained, tmp_path / "work2"))
    assert main([*argv, "--corpus", str(broken), "--steps", "1", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(broken) in err and "\n" not in err


def test_text_corpus_refuses_an_empty_file(tmp_path: Path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match="holds no text"):
        TextCorpus(empty)


def _model_dir(path: Path, config: dict, files: tuple[str, ...] = ("tokenizer_config.json", "model.safetensors")) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    for name in files:
        (path / name).write_text("{}")
    return path


@pytest.mark.parametrize(
    "config, files, message",
    [
        ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, None, "is a bert model"),
        ({"model_type": "umt5"}, None, "is a umt5 model"),
        ({"model_type": "t5"}, ("model.safetensors",), "has no tokenizer"),
        ({"model_type": "t5"}, ("spiece.model", "pytorch_model.bin"), "has no safetensors weights"),
    ],
)
def test_a_base_tagi_cannot_train_is_refused_in_one_line(tmp_path: Path, capsys, config, files, message):
    base = _model_dir(tmp_path / "base", config, *([files] if files else []))
    argv = ["train", "--recipe", str(SMOKE), "--base", str(base), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tagi: error: --base") and message in err and "\n" not in err
    assert not (tmp_path / "w").exists()  # refused before any stage


def test_the_recipe_and_base_must_agree(tmp_path: Path, base: Path, capsys):
    out = ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")]
    assert main(["train", "--recipe", str(SMOKE), *out]) == 2
    assert "pass --base DIR" in capsys.readouterr().err
    assert main(["train", "--preset", "smoke", "--base", str(base), *out]) == 2
    assert "use a recipe with an `sni` section" in capsys.readouterr().err
    assert main(["train", "--recipe", str(SMOKE), "--base", str(tmp_path / "nowhere"), *out]) == 2
    assert "no such directory" in capsys.readouterr().err
    # a given meta teacher must speak the base's vocabulary (L_kl compares token distributions)
    other = _model_dir(tmp_path / "other", {"model_type": "t5", "vocab_size": 32128})
    assert main(["train", "--recipe", str(SMOKE), "--base", str(base), "--meta-teacher", str(other), *out]) == 2
    assert "has a vocabulary of 32128 tokens" in capsys.readouterr().err
    assert main(["train", "--preset", "smoke", "--meta-teacher", str(other), *out]) == 2
    assert "--meta-teacher needs --base" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nsni:\n  prompt_format: def+3pos\n", "sni.prompt_format: must be one of"),
        ("name: x\nsni:\n  splt: default\n", "sni.splt: unknown key"),
        ("name: x\nsni:\n  split: ../elsewhere\n", "split must be a directory name"),
        ("name: x\nsni:\n  max_instances_per_task: 0\n", "max_instances_per_task must be >= 1"),
        ("name: x\nsni:\n  test_instances: many\n", "sni.test_instances: must be int"),
        ("name: x\nsni: [default]\n", "sni: must be a mapping of SniConfig fields"),
        ("name: x\ndistill:\n  lambda_ins: sigmod\n", "distill.lambda_ins: must be float or 'sigmoid'"),
        ("name: x\ndistill:\n  lambda_ins: -1\n", "lambda_ins must be >= 0"),
        ("name: x\nhypernet_pretrain:\n  corpus: 3\n", "hypernet_pretrain.corpus: must be str"),
    ],
)
def test_bad_own_base_fields_are_refused_naming_the_field(tmp_path: Path, text: str, message: str):
    with pytest.raises(UserError, match="recipe.yaml") as info:
        load_recipe(recipe_file(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_own_base_fields_take_their_defaults_and_values(tmp_path: Path):
    assert load_recipe(recipe_file(tmp_path, "name: x\n")).sni is None  # the synthetic world
    recipe = load_recipe(recipe_file(tmp_path, "name: x\nsni: {}\ndistill:\n  lambda_ins: sigmoid\n"))
    assert recipe.sni == SniConfig() and recipe.prompt_format == "def+2pos" and recipe.distill.lambda_ins == "sigmoid"
    recipe = load_recipe(recipe_file(tmp_path, "name: x\nsni: {split: subset, prompt_format: def}\ndistill:\n  lambda_ins: 2\n"))
    assert recipe.sni.split == "subset" and recipe.prompt_format == "def"
    assert recipe.distill.lambda_ins == 2.0 and isinstance(recipe.distill.lambda_ins, float)


@pytest.mark.parametrize("name", ["t5-lm-adapt-base", "t5-xl"])
def test_the_paper_recipes_hold_the_papers_settings(name: str):
    recipe = get_preset(name)
    assert recipe.sni is not None and recipe.sni.split == "default" and recipe.prompt_format == "def+2pos"
    assert recipe.generator.rank == 32 and recipe.generator.target_modules == ("q", "v") and recipe.instruction_encoder == "base"
    distill = recipe.distill
    assert distill.lambda_kl == 5.0 and distill.lambda_ins == "sigmoid"
    assert (distill.max_input_tokens, distill.max_output_tokens) == (1024, 128)
    assert (recipe.teachers.max_input_tokens, recipe.teachers.max_output_tokens) == (1024, 128)
    loop = distill.loop
    assert (loop.optimizer, loop.lr, loop.steps, loop.batch_size) == ("adamw", 1e-4, 20000, 16)
    assert loop.warmup_steps == 0.02 * loop.steps
    assert loop.gradient_checkpointing == (name == "t5-xl")
    assert loop.batch_size % loop.micro_batch_size == 0 and loop.micro_batch_size < loop.batch_size  # accumulation on 1 GPU


def test_sigmoid_lambda_ins_is_a_weight_not_a_term_of_the_objective():
    ins = torch.tensor(0.7, requires_grad=True)
    weight = lambda_ins(DistillConfig(lambda_ins="sigmoid"), ins)
    (weight * ins).backward()
    assert float(weight) == pytest.approx(1 / (1 + math.exp(-0.7)))
    assert float(ins.grad) == pytest.approx(float(weight))  # d(w * L)/dL = w: the weight is not differentiated
    assert lambda_ins(DistillConfig(lambda_ins=2.0), ins) == 2.0


def test_a_def_2pos_prompt_over_the_limit_is_cut_and_counted_a_definition_is_not(trained):
    from dataclasses import replace

    from training.common import load_task_set
    from training.distill import Distillation, Teachers

    model = hypernet.load(trained["out"])
    model.config = replace(model.config, max_instruction_tokens=48)
    tasks = load_task_set([SNI_DIR / "tasks" / f"{name}.json" for name in read_split(SPLIT / "train_tasks.txt")[:3]], 2, 0)
    config, no_teachers = DistillConfig(use_kl=False, use_ins=False), Teachers(None, None, [])
    work = Distillation(model, tasks, tasks.train, config, no_teachers, "def+2pos")
    assert len(work.cut) == 3  # every def+2pos prompt of these tasks is longer than 48 tokens
    assert list(work.cut.values()) == work.instructions
    for full, fitted in work.cut.items():
        assert full.startswith(fitted) and len(model.tokenizer(model.format_instruction(fitted))["input_ids"]) <= 48
    assert Distillation(model, tasks, tasks.train, config, no_teachers).cut == {}  # "def": a definition is never cut


def test_init_base_options_have_help():
    import argparse

    from hypernet.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    options = [a for a in sub.choices["init-base"]._actions if a.option_strings and a.dest != "help"]
    assert {"--out", "--sni", "--split", "--preset", "--seed"} <= {o for a in options for o in a.option_strings}
    assert all(a.help for a in options)
