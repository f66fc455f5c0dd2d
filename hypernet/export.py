"""Offline export at scale: a file of instructions -> one adapter directory each, and a manifest.

`tagi adapter --instructions FILE --out-dir DIR` loads the checkpoint once and generates the
adapters in batches (`TagiModel.adapters`), instead of paying a model load per instruction.

Resumable. Every adapter directory is written with `atomic_directory`, so after a crash a
directory is either whole or absent (a killed process may leave a hidden `.NAME.*` temporary,
which the next run removes). A rerun skips a directory whose `tagi.json` names the expected
adapter id, checkpoint and format and whose weights parse completely; one that names the
expected adapter but does not verify is written again; one holding anything else is refused
unless `overwrite` (it may be someone's work).

`manifest.jsonl` is rewritten whole (atomically) after every batch rather than appended to: a
reader never sees a torn last line, and a rerun need not repair one. It lists every verified
directory of the run in input order (records of earlier runs for other names are kept), so
the cost, a rewrite of a few hundred bytes per adapter per batch, buys a file that is always
exactly what is on disk.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from peft import get_peft_model, set_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from tqdm import tqdm
from transformers import PreTrainedModel

from hypernet.errors import UserError
from hypernet.files import SPIECE, atomic_directory, atomic_write_text, directory_bytes, write_json
from hypernet.io import PEFT_WEIGHTS_FILE, TAGI_EXPORT_FILE, export_peft, peft_lora_config, peft_state_dict
from hypernet.model import Adapter, TagiModel, adapter_id

MANIFEST_FILE = "manifest.jsonl"
MERGED_WEIGHTS_FILE = "model.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Entry:
    """One good line of an instructions file."""

    line: int
    instruction: str
    name: str | None = None
    label: str | None = None
    split: str | None = None
    """Which set the instruction comes from (e.g. training vs held-out wordings); the adapter map
    breaks its similarities down by pairs of splits."""


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def read_instructions(path: Path, label_field: str = "label") -> tuple[list[Entry], list[BadLine]]:
    """A `.jsonl` file holds objects {"instruction": ..., "name", label_field, "split": optional};
    any other file holds one instruction per line. Lines are numbered from 1, as editors do."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read instructions file {path}: {err}") from err
    entries: list[Entry] = []
    bad: list[BadLine] = []
    for number, text in enumerate(lines, start=1):
        if path.suffix != ".jsonl":
            entries.append(Entry(number, text))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            bad.append(BadLine(number, f"invalid JSON ({err.msg})"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
            bad.append(BadLine(number, 'expected an object with a string "instruction"'))
            continue
        fields = {"name": record.get("name"), "label": record.get(label_field), "split": record.get("split")}
        wrong = [key for key, value in fields.items() if value is not None and not isinstance(value, str)]
        if wrong:
            bad.append(BadLine(number, f'"{wrong[0]}" must be a string'))
            continue
        entries.append(Entry(number, record["instruction"], fields["name"], fields["label"], fields["split"]))
    return entries, bad


def accepted_instructions(model: TagiModel, entries: list[Entry]) -> tuple[list[Entry], list[BadLine]]:
    """The entries whose instruction the model takes, and the rest (empty, over the token limit)
    as bad lines, so a batch reports each one before generating anything."""
    good: list[Entry] = []
    bad: list[BadLine] = []
    for entry in entries:
        try:
            model.instruction_ids(entry.instruction)
            good.append(entry)
        except UserError as err:
            bad.append(BadLine(entry.line, str(err)))
    return good, bad


def check_entries(model: TagiModel, entries: list[Entry]) -> tuple[list[tuple[Entry, str]], list[BadLine]]:
    """(entry, directory name) for each entry the model accepts, and the rest as bad lines:
    empty or over the token limit, an unusable name, or a name used by an earlier line."""
    accepted, bad = accepted_instructions(model, entries)
    good: list[tuple[Entry, str]] = []
    first_line: dict[str, int] = {}
    for entry in accepted:
        name = entry.name if entry.name is not None else adapter_id(model.fingerprint, entry.instruction)
        if not _NAME.match(name) or name == MANIFEST_FILE:
            bad.append(BadLine(entry.line, f"name {name!r} is not a plain directory name (letters, digits, . _ -)"))
        elif name in first_line:
            bad.append(BadLine(entry.line, f"name {name!r} is already used on line {first_line[name]}"))
        else:
            first_line[name] = entry.line
            good.append((entry, name))
    return good, bad


def _weights_parse(path: Path) -> bool:
    """safetensors checks that the header's offsets cover the file: a truncated file fails."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return len(list(f.keys())) > 0
    except (SafetensorError, OSError):
        return False


class Exporter:
    """Writes adapters of one model as PEFT directories or, with `merge`, as full HF models
    with the LoRA merged into the base weights (for runtimes that take no adapters)."""

    def __init__(self, model: TagiModel, merge: bool = False) -> None:
        self.model = model
        self.merge = merge
        self.format = "merged" if merge else "peft"
        self._clean_base: PreTrainedModel | None = None

    # ---- verification ------------------------------------------------------------------------

    def recorded_id(self, path: Path) -> str | None:
        """The adapter id a directory says it holds for this checkpoint and format, else None."""
        try:
            info = json.loads((Path(path) / TAGI_EXPORT_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(info, dict) or info.get("checkpoint_fingerprint") != self.model.fingerprint:
            return None
        if info.get("format", "peft") != self.format:
            return None
        return info.get("adapter_id")

    def verified(self, path: Path, expected_id: str) -> bool:
        weights = MERGED_WEIGHTS_FILE if self.merge else PEFT_WEIGHTS_FILE
        return self.recorded_id(path) == expected_id and _weights_parse(Path(path) / weights)

    # ---- writing -----------------------------------------------------------------------------

    def write(self, adapter: Adapter, out: Path, overwrite: bool = False) -> None:
        if not self.merge:
            export_peft(adapter, out, overwrite=overwrite)
            return
        with atomic_directory(out, overwrite=overwrite) as tmp:
            self.merged_model(adapter).save_pretrained(tmp)
            self.model.tokenizer.save_pretrained(tmp)
            source = getattr(self.model.tokenizer, "vocab_file", None)
            if source and Path(source).exists() and not (tmp / SPIECE).exists():
                shutil.copyfile(source, tmp / SPIECE)
            write_json(
                tmp / TAGI_EXPORT_FILE,
                {
                    "format": "merged",
                    "instruction": adapter.instruction,
                    "adapter_id": adapter.adapter_id,
                    "checkpoint_fingerprint": self.model.fingerprint,
                    "input_template": self.model.config.input_template,
                    "note": "The base model with the adapter merged (load it without PEFT). Format inputs with "
                    "input_template; fusion cannot be merged: outputs match `tagi run --no-fusion`.",
                },
            )

    def merged_model(self, adapter: Adapter) -> PreTrainedModel:
        """PEFT's own merge_and_unload on a PeftModel holding exactly what `export_peft` writes."""
        generator = self.model.config.generator
        config = peft_lora_config(generator.rank, generator.alpha, generator.target_modules, self.model.family)
        peft = get_peft_model(copy.deepcopy(self.clean_base()), config)
        set_peft_model_state_dict(peft, peft_state_dict(adapter))
        return peft.merge_and_unload()

    def clean_base(self) -> PreTrainedModel:
        """A plain copy of the base, of the base's own class (ours has LoRA slots injected; its
        class and state-dict keys are unchanged)."""
        if self._clean_base is None:
            base = self.model.base
            clean = type(base)(base.config)
            clean.load_state_dict(base.state_dict())
            self._clean_base = clean.to(dtype=base.dtype).eval()
        return self._clean_base


@dataclass
class ExportResult:
    written: int
    skipped: int
    manifest: Path


def export_batch(
    model: TagiModel,
    entries: list[tuple[Entry, str]],
    out_dir: Path,
    batch_size: int,
    merge: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Write the adapter of each (entry, name) to out_dir/name and list them in the manifest;
    `batch_size` instructions are generated, written and recorded per step."""
    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    out_dir = Path(out_dir)
    exporter = Exporter(model, merge=merge)
    ids = {name: adapter_id(model.fingerprint, entry.instruction) for entry, name in entries}
    todo: list[tuple[Entry, str]] = []
    replace: set[str] = set()
    for entry, name in entries:
        path = out_dir / name
        _remove_stale_temporaries(out_dir, name)
        if not path.exists():
            todo.append((entry, name))
        elif exporter.verified(path, ids[name]):
            continue
        elif exporter.recorded_id(path) == ids[name] or overwrite:
            todo.append((entry, name))
            replace.add(name)
        else:
            raise UserError(
                f"{path} exists and is not the {exporter.format} adapter of line {entry.line} for this checkpoint; "
                "pass --overwrite to replace it"
            )
    manifest = out_dir / MANIFEST_FILE
    names = {name for _, name in entries}
    kept = [record for record in _read_manifest(manifest) if record.get("name") not in names]
    records: dict[str, dict] = {}
    pending = {name for _, name in todo}
    for entry, name in entries:
        if name not in pending:
            records[name] = _record(entry, name, ids[name], out_dir)
    _write_manifest(manifest, kept, entries, records)
    with tqdm(total=len(todo), desc="export", unit="adapter", disable=not progress) as bar:
        for batch in _chunks(todo, batch_size):
            adapters = model.adapters([entry.instruction for entry, _ in batch])
            for (entry, name), adapter in zip(batch, adapters):
                exporter.write(adapter, out_dir / name, overwrite=name in replace)
                records[name] = _record(entry, name, adapter.adapter_id, out_dir)
            _write_manifest(manifest, kept, entries, records)
            bar.update(len(batch))
    return ExportResult(written=len(todo), skipped=len(entries) - len(todo), manifest=manifest)


def _record(entry: Entry, name: str, expected_id: str, out_dir: Path) -> dict:
    record = {
        "name": name,
        "adapter_id": expected_id,
        "instruction": entry.instruction,
        "path": name,
        "bytes": directory_bytes(out_dir / name),
    }
    if entry.label is not None:
        record["label"] = entry.label
    return record


def _write_manifest(path: Path, kept: list[dict], entries: list[tuple[Entry, str]], records: dict[str, dict]) -> None:
    rows = kept + [records[name] for _, name in entries if name in records]
    atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def _read_manifest(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not a manifest this tool wrote ({err.msg}); move it away to start afresh") from err
    return rows


def _remove_stale_temporaries(out_dir: Path, name: str) -> None:
    """What a killed run left of `name` (atomic_directory's `.NAME.*` temporaries). One
    exporter per directory at a time: a concurrent one's temporaries would go too."""
    if out_dir.is_dir():
        for stale in out_dir.glob(f".{name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
