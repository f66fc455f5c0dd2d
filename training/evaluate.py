"""`tagi eval`: every method side by side on the same instances, SNI metrics, and timing.

Methods (JSON names):
- base_concat: the frozen base with the instruction concatenated to the input (zero-shot);
- meta_teacher: the meta-trained teacher (Tk-Instruct recipe), instruction concatenated;
- task_lora_oracle: the task's instance-trained PEFT LoRA on the base, input only (only for
  tasks that have one: absent elsewhere, never zero);
- tagi_no_fusion: the generated adapter alone (what a PEFT export reproduces);
- tagi: generated adapter + instruction fusion;
- tagi_fusion_only: fusion with the adapter switched off, so the share of the task the adapter
  itself carries is visible (a PEFT export carries only the adapter);
- tagi_wrong_instruction: the control: each input run (with fusion) with the adapter and
  instruction of ANOTHER task of the set, so a score near `tagi` would mean the adapter
  carries no task;
- tagi_revised (only with `--revise`): the self-correction pass of training.citing on `tagi`'s
  answers: the adapter of the instruction with its category's rubric (the checkpoint's
  rubrics.json; the instruction alone where it has none) reads hypernet.rubric.revision_input(input,
  draft). The JSON's "revise" gives its gain over `tagi` and its cost (generation seconds of the
  second pass over the first's).
A checkpoint trained with its rubrics in the instruction (training.citing.CHECKPOINT_FILE) is
evaluated in that form.
Scores are SNI's official ones (Tk-Instruct's compute_metrics.py, training.data): exact match
after lowercasing, dropping punctuation and collapsing spaces, and rouge_score's stemmed Rouge-L,
each the best over the references, in percent, averaged over a task's instances, then over tasks
(per category and overall). Every prediction can be written as JSONL in Tk-Instruct's
predicted_examples.jsonl shape (plus "Method"), so the official script can rescore our outputs.

Timing: a teacher-forced forward pass over the gold outputs, TAGI (adapter generation
amortised over the task's inputs + adapted forward with fusion) vs instruction
concatenation, on the same inputs; the ratio tracks FLOPs (the paper reports ~0.39x).
Inputs longer than the limit are truncated (counted in the JSON) rather than skipped.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from transformers import PreTrainedModel

from hypernet import files
from hypernet.batching import stack_adapters
from hypernet.config import DEFAULT_MAX_NEW_TOKENS
from hypernet.fusion import InstructionEncoding, concat_instructions
from hypernet.io import load_checkpoint
from hypernet.model import Adapter, TagiModel
from hypernet.rubric import revision_input
from hypernet.targets import LoraWeights
from training.citing import read_checkpoint_rubrics, rubric_instruction
from training.common import (
    encode,
    encode_labels,
    fit_instruction,
    greedy,
    load_base_model,
    primitive_group,
    read_teacher_index,
    shift_right,
    spread,
)
from training.data import (
    Instance,
    PromptFormat,
    Task,
    exact_match,
    format_concat,
    instruction_text,
    label_definition,
    load_tasks,
    read_split,
    rouge_l,
    split_instances,
)
from training.teachers import load_teacher_weights

METHODS = (
    "base_concat",
    "meta_teacher",
    "task_lora_oracle",
    "tagi_no_fusion",
    "tagi_fusion_only",
    "tagi",
    "tagi_wrong_instruction",
)
REVISED = "tagi_revised"
ALL_METHODS = (*METHODS, REVISED)
"""METHODS plus the revise pass, which runs only when asked for (`revise`)."""
TIMING_TASKS = 8
"""How many tasks (the first ones) also time TAGI against instruction concatenation."""
META_TEACHER_DIR = "meta_teacher"
TEACHERS_DIR = "teachers"


def wrong_partner(tasks: list[Task], i: int) -> int:
    """Another task for the control: the next one of a different category if any."""
    n = len(tasks)
    for offset in range(1, n):
        j = (i + offset) % n
        if primitive_group(tasks[j].category) != primitive_group(tasks[i].category):
            return j
    return (i + 1) % n


def _decode(model: TagiModel, tokens: torch.Tensor) -> list[str]:
    return model.tokenizer.batch_decode(tokens, skip_special_tokens=True)


class Evaluator:
    def __init__(
        self,
        checkpoint: Path,
        max_input_tokens: int,
        max_new_tokens: int,
        batch_size: int,
        device: str = "cpu",
        timing_tasks: int = TIMING_TASKS,
    ) -> None:
        self.checkpoint = Path(checkpoint)
        self.model = load_checkpoint(self.checkpoint, device=device)
        self.model.eval()
        self.max_input = max_input_tokens
        self.max_new = max_new_tokens
        self.batch_size = batch_size
        self.truncated = 0
        self.truncated_instructions = 0
        self.timing_tasks = timing_tasks
        meta = self.checkpoint / META_TEACHER_DIR
        self.meta_teacher = load_base_model(meta, device).eval() if (meta / "config.json").exists() else None
        self.teacher_index = read_teacher_index(self.checkpoint / TEACHERS_DIR)
        self.rubrics, self.rubric_in_instruction = read_checkpoint_rubrics(self.checkpoint)
        self.seconds: dict[str, float] = defaultdict(float)
        """Generation seconds per method (the revise pass's cost is its share over tagi's)."""
        self.predictions: list[dict] = []  # the last evaluate()'s, one per instance and method (prediction_record)

    def _fit_instruction(self, text: str) -> str:
        """Cut an instruction to the checkpoint's limit (counted), rather than refuse the task."""
        fitted = fit_instruction(self.model, text)
        self.truncated_instructions += fitted != text
        return fitted

    def _count_truncated(self, texts: list[str]) -> None:
        lengths = [len(ids) for ids in self.model.tokenizer(texts)["input_ids"]]
        self.truncated += sum(length > self.max_input for length in lengths)

    def _batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.model.device) for k, v in encode(self.model.tokenizer, texts, self.max_input).items()}

    @torch.no_grad()
    def _generate(
        self,
        texts: list[str],
        lora: LoraWeights | None,
        instruction: InstructionEncoding | None,
        plain: PreTrainedModel | None = None,
    ) -> list[str]:
        """Greedy outputs of the TagiModel (with `lora` and fusion `instruction`), or of a `plain` base
        (the meta teacher) on the same texts."""
        if plain is not None:
            return greedy(plain, self.model.tokenizer, texts, self.max_input, self.max_new, len(texts))
        tokens = self.model.generate_tokens(self._batch(texts), lora, instruction, self.max_new)
        return _decode(self.model, tokens)

    def run_method(
        self, method: str, inputs: list[str], concat: list[str], adapters: list[Adapter], oracle: LoraWeights | None
    ) -> list[str]:
        out: list[str] = []
        # Every model reads its prompt in the checkpoint's input template, as the meta teacher and
        # the teachers were trained (training.common.BaseText; T5's is the text as it is).
        inputs, concat = self.model.format_inputs(inputs), self.model.format_inputs(concat)
        for s in range(0, len(inputs), self.batch_size):
            e = min(len(inputs), s + self.batch_size)
            if method == "base_concat":
                out += self._generate(concat[s:e], None, None)
            elif method == "meta_teacher":
                out += self._generate(concat[s:e], None, None, plain=self.meta_teacher)
            elif method == "task_lora_oracle":
                out += self._generate(inputs[s:e], oracle.select(torch.zeros(e - s, dtype=torch.long)), None)
            else:
                rows = adapters[s:e]
                lora = stack_adapters([a.weights for a in rows]) if method != "tagi_fusion_only" else None
                fused = concat_instructions([a.instruction_encoding for a in rows]) if method != "tagi_no_fusion" else None
                out += self._generate(inputs[s:e], lora, fused)
        return out

    @torch.no_grad()
    def timing(
        self, inputs: list[str], concat: list[str], outputs: list[str], instruction: str, repeats: int = 3
    ) -> dict[str, float]:
        """Seconds per instance of a teacher-forced forward: TAGI (incl. adapter generation)
        vs instruction concatenation, same inputs and gold outputs; median of repeats."""
        model = self.model
        labels = encode_labels(model.tokenizer, outputs, self.max_new).to(model.device)
        decoder = shift_right(labels)
        plain = {k: v.to(model.device) for k, v in encode(model.tokenizer, model.format_inputs(inputs), self.max_input).items()}
        joined = {k: v.to(model.device) for k, v in encode(model.tokenizer, model.format_inputs(concat), self.max_input).items()}

        def tagi() -> None:
            adapter = model.adapter(instruction)
            n = len(inputs)
            lora = stack_adapters([adapter.weights] * n)
            fused = concat_instructions([adapter.instruction_encoding] * n)
            model(plain["input_ids"], plain["attention_mask"], decoder, lora=lora, instruction=fused)

        def concatenated() -> None:
            model(joined["input_ids"], joined["attention_mask"], decoder)

        result = {}
        for name, fn in (("tagi", tagi), ("concat", concatenated)):
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            result[name] = sorted(times)[len(times) // 2] / len(inputs)
        return result

    def evaluate(self, tasks: list[Task], fmt: PromptFormat, methods: tuple[str, ...] = METHODS) -> dict:
        model = self.model
        # The checkpoint's instruction_template labels the bare text ("Definition: ..."), so the
        # generator reads SNI's prompt; the concatenation baselines get that prompt directly.
        plain = [self._fit_instruction(instruction_text(t, fmt)) for t in tasks]
        rubrics = [self.rubrics[r].text() if (r := primitive_group(t.category)) in self.rubrics else None for t in tasks]
        instructions = [rubric_instruction(i, r) if self.rubric_in_instruction else i for i, r in zip(plain, rubrics)]
        adapters = [model.adapter(i) for i in instructions]
        revisers = [model.adapter(rubric_instruction(i, r)) for i, r in zip(plain, rubrics)] if REVISED in methods else []
        teacher_of = self.teacher_index.get("task_to_teacher", {})
        per_task: dict[str, dict[str, dict[str, float]]] = {}
        self.predictions = []
        times = defaultdict(float)
        timing_instances = 0
        for i, task in enumerate(tasks):
            inputs = [inst.input for inst in task.instances]
            refs = [inst.outputs for inst in task.instances]
            concat = [format_concat(label_definition(instructions[i]), x) for x in inputs]
            self._count_truncated(model.format_inputs(concat))  # the longest inputs of any method
            oracle = None
            if task.name in teacher_of:
                teachers = self.checkpoint / TEACHERS_DIR
                oracle = load_teacher_weights(teachers, [teacher_of[task.name]], model.layout).to(model.device)
            scores = {}
            for method in methods:
                if method == "meta_teacher" and self.meta_teacher is None:
                    continue
                if method == "task_lora_oracle" and oracle is None:
                    continue
                began = time.perf_counter()
                if method == "tagi_wrong_instruction":
                    if len(tasks) < 2:
                        continue
                    rows = [adapters[wrong_partner(tasks, i)]] * len(inputs)
                    predictions = self.run_method("tagi", inputs, concat, rows, None)
                elif method == REVISED:  # run_eval puts tagi before it
                    drafts = [r["Prediction"] for r in self.predictions[-len(inputs) :]]
                    revised = [revision_input(x, d) for x, d in zip(inputs, drafts)]
                    predictions = self.run_method("tagi", revised, concat, [revisers[i]] * len(inputs), None)
                else:
                    predictions = self.run_method(method, inputs, concat, [adapters[i]] * len(inputs), oracle)
                self.seconds[method] += time.perf_counter() - began
                self.predictions += [prediction_record(task, inst, p, method) for inst, p in zip(task.instances, predictions)]
                scores[method] = {
                    "rougeL": 100 * sum(rouge_l(p, r) for p, r in zip(predictions, refs)) / len(refs),
                    "exact_match": 100 * sum(exact_match(p, r) for p, r in zip(predictions, refs)) / len(refs),
                }
            per_task[task.name] = scores
            if i >= self.timing_tasks:
                continue
            sample = slice(0, min(len(inputs), self.batch_size))
            timed = self.timing(inputs[sample], concat[sample], [r[0] for r in refs[sample]], instructions[i])
            n = len(inputs[sample])
            times["tagi"] += timed["tagi"] * n
            times["concat"] += timed["concat"] * n
            timing_instances += n
        categories = {t.name: primitive_group(t.category) for t in tasks}
        return {
            "overall": _average(per_task, list(per_task)),
            "by_category": {
                c: _average(per_task, [t for t in per_task if categories[t] == c]) for c in sorted(set(categories.values()))
            },
            "by_task": per_task,
            "time_ratio_tagi_vs_concat": times["tagi"] / times["concat"] if times["concat"] else None,
            "timing_seconds_per_instance": {k: v / max(1, timing_instances) for k, v in times.items()},
            "format": fmt,
            "tasks": len(tasks),
            "instances": sum(len(t.instances) for t in tasks),
            "truncated_inputs": self.truncated,  # instruction + input texts cut to max_input_tokens
            "truncated_instructions": self.truncated_instructions,
            "timing_tasks": min(len(tasks), self.timing_tasks),
            "metric_scale": "percent",
        }


def prediction_record(task: Task, instance: Instance, prediction: str, method: str) -> dict:
    """One line of Tk-Instruct's predicted_examples.jsonl (Task, Definition, Instance, Prediction), plus
    the method that produced it. The definition is the task's, even for the wrong-instruction control."""
    return {
        "Task": task.name,
        "Definition": [task.definition],
        "Instance": {"id": instance.id, "input": instance.input, "output": list(instance.outputs)},
        "Prediction": prediction,
        "Method": method,
    }


def write_predictions(path: Path, records: list[dict]) -> None:
    """JSONL, one record a line, written atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _average(per_task: dict[str, dict[str, dict[str, float]]], names: list[str]) -> dict[str, dict[str, float]]:
    """Mean over the tasks where a method ran; a method that ran on none is absent."""
    out = {}
    for method in ALL_METHODS:
        rows = [per_task[n][method] for n in names if method in per_task[n]]
        if rows:
            out[method] = {k: sum(r[k] for r in rows) / len(rows) for k in ("rougeL", "exact_match")}
    return out


def select_instances(tasks: list[Task], held_back: int | None, seed: int, max_instances: int | None) -> list[Task]:
    """Optionally only each task's held-back instances (for training tasks), then a prefix."""
    out = []
    for task in tasks:
        instances = task.instances
        if held_back is not None:
            instances = split_instances(task, min(held_back, len(instances)), seed)[1]
        if max_instances is not None:
            instances = instances[:max_instances]
        out.append(replace(task, instances=tuple(instances)))
    return out


def run_eval(
    checkpoint: Path,
    task_paths: list[str],
    fmt: PromptFormat = "def",
    held_back: int | None = None,
    seed: int = 0,
    max_instances: int | None = None,
    max_input_tokens: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 64,
    device: str = "cpu",
    split_file: str | None = None,
    methods: tuple[str, ...] = METHODS,
    timing_tasks: int = TIMING_TASKS,
    predictions_file: Path | None = None,
    max_tasks: int | None = None,
    revise: bool = False,
) -> dict:
    """Evaluate `checkpoint` on the tasks (at most `max_tasks` of them, spread over the list); with
    `predictions_file`, also write every prediction there (write_predictions); with `revise`, also
    the revise pass (tagi_revised, after tagi) and its gain and cost ("revise")."""
    tasks = load_tasks(task_paths)
    if split_file is not None:
        wanted = set(read_split(split_file))
        tasks = [t for t in tasks if t.name in wanted]
    if max_tasks is not None:
        tasks = spread(tasks, max_tasks)
    tasks = select_instances(tasks, held_back, seed, max_instances)
    tasks = [t for t in tasks if t.instances]
    if not tasks:
        raise ValueError("no instances to evaluate")
    limit = max_input_tokens or 1024
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if revise:
        methods = (*[m for m in methods if m != "tagi"], "tagi", REVISED)
    evaluator = Evaluator(checkpoint, limit, max_new_tokens, batch_size, device, timing_tasks=timing_tasks)
    result = evaluator.evaluate(tasks, fmt, methods)
    if revise:
        first, second = result["overall"]["tagi"], result["overall"][REVISED]
        result["revise"] = {
            "gain_exact_match": second["exact_match"] - first["exact_match"],
            "gain_rougeL": second["rougeL"] - first["rougeL"],
            "seconds_first_pass": evaluator.seconds["tagi"],
            "seconds_revise_pass": evaluator.seconds[REVISED],
            "cost_ratio": evaluator.seconds[REVISED] / max(evaluator.seconds["tagi"], 1e-9),
        }
    if predictions_file is not None:
        write_predictions(predictions_file, evaluator.predictions)
    result["checkpoint"] = str(checkpoint)
    result["max_input_tokens"] = limit
    return result


def format_table(result: dict, title: str = "") -> str:
    """Plain-text tables: overall, per category, per task (EM / Rouge-L per method)."""
    methods = [m for m in ALL_METHODS if any(m in row for row in [result["overall"], *result["by_category"].values()])]
    lines = [title] if title else []

    def table(rows: dict[str, dict], label: str) -> None:
        width = max([len(label), *(len(r) for r in rows)]) + 2
        lines.append(f"{label:<{width}}" + "".join(f"{m:>24}" for m in methods))
        for name, row in rows.items():
            cells = "".join(
                f"{'-':>24}" if m not in row else f"{row[m]['exact_match']:>11.1f} / {row[m]['rougeL']:>9.1f}" for m in methods
            )
            lines.append(f"{name:<{width}}" + cells)

    lines.append("exact match / Rouge-L (percent)")
    table({"overall": result["overall"]}, "")
    lines.append("")
    table(result["by_category"], "category")
    if len(result["by_task"]) <= 40:
        lines.append("")
        table(result["by_task"], "task")
    ratio = result.get("time_ratio_tagi_vs_concat")
    if ratio is not None:
        per_instance = result["timing_seconds_per_instance"]
        lines.append(
            f"\ntime per instance, TAGI vs instruction concatenation: {ratio:.2f}x "
            f"({per_instance['tagi'] * 1e3:.2f} ms vs {per_instance['concat'] * 1e3:.2f} ms)"
        )
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    """An evaluation report: atomic and compact (hypernet.files.write_json; reports ship inside the
    size-budgeted checkpoint), creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(path, data, compact=True)
