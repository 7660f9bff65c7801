"""The exported folder: one self-describing folder to ship a model in (a sentence classifier or regressor, a token
tagger or an extractive question-answering model), and its reader.

Layout (every name fixed, so a reader needs only the folder's path):

    model.onnx | model.mindir     the exported graph (src/export.py), with its sidecar model.onnx.json if it has one
    vocab.txt                     the WordPiece vocabulary the model was trained with (one token per line)
    config.json                   the model's BertConfig (Hugging Face style, plus id2label / label2id)
    labels.json                   task, labels in id order, regression flag, main metric, tokenizer settings,
                                  the exported batch and sequence length, the model file's name (FOLDER_VERSION);
                                  a token task also its window_context, a span task its doc_stride and
                                  max_query_length (and null_threshold for SQuAD v2.0 scoring): the settings
                                  run_predict.py featurizes and decodes raw text with (TASK_SETTINGS)
    quant.json                    only for a ternary model: its quantization settings (src/quant.py QuantConfig)
    model.tpack                   only when given: the packed TernaryBERT artefact the graph was exported from
    model_card.md                 a short generated model card (render_model_card)

`write_export_folder` builds the folder in a hidden temp folder beside `out_dir` and renames it into place at the
end, so a failure leaves nothing. `read_export_folder` checks every file and returns an `ExportFolder`; a missing or
malformed file is one UserError naming the file and what was expected. `export_to_folder` runs the normal export
(src/export.py:export_checkpoint) into such a folder (export.py --export_dir).
"""
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Optional, Union

from src.errors import UserError
from src.fileio import atomic_folder, atomic_json, atomic_text, read_errors
from src.outputs import check_output_dir
from src.tasks import TASKS, Task, get_task
from src.tokenization import load_vocab

FOLDER_VERSION = 1
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
QUANT_FILE = "quant.json"
TPACK_FILE = "model.tpack"
CARD_FILE = "model_card.md"
MODEL_FILES = {".onnx": ("model.onnx", "ONNX"), ".mindir": ("model.mindir", "MINDIR")}
# Whether a task's examples are text pairs (GLUE layouts of tools/prepare_data.py); a task not listed (csv) is
# recorded as unknown (null) unless the writer says.
PAIR_TASKS = {"MRPC": True, "STS-B": True, "QQP": True, "MNLI": True, "QNLI": True, "RTE": True,
              "MR": False, "SST-2": False, "CoLA": False}
KIND_TEXT_PAIR = {"token": False, "span": True}     # a tagger reads single texts, a QA model question + context
# Optional labels.json keys of token / span tasks: kind -> {key: type}. Absent keys read as the defaults of
# tools/prepare_data.py (window_context, doc_stride, max_query_length) and 0.0 (null_threshold).
TASK_SETTINGS = {"token": {"window_context": int},
                 "span": {"doc_stride": int, "max_query_length": int, "null_threshold": float}}
# The keys of a model card dict (render_model_card); any other key is an error, so a misspelt one is not dropped.
CARD_KEYS = ("title", "teacher", "recipe", "stages", "metrics", "sizes", "latency", "machine", "command", "commit",
             "notes")
_LABEL_KEYS = {"format_version": int, "task": str, "labels": list, "regression": bool, "num_labels": int,
               "main_metric": str, "metrics": list, "eval_splits": list, "max_seq_length": int,
               "do_lower_case": bool, "batch_size": int, "seq_length": int, "model_file": str, "format": str}


@dataclass(frozen=True)
class ExportFolder:
    """What read_export_folder found: absolute paths (None: the optional file is absent) and settings."""
    path: str
    model_file: str
    vocab_file: str
    config_file: str
    labels_file: str
    sidecar_file: Optional[str]
    quant_file: Optional[str]
    tpack_file: Optional[str]
    card_file: Optional[str]
    task: Task
    text_pair: Optional[bool]         # True: text pairs, False: single texts, None: not recorded
    max_seq_length: int               # tokenizer: truncate to this many tokens (special tokens included)
    do_lower_case: bool
    batch_size: int                   # the exported graph's fixed shape
    seq_length: int
    file_format: str                  # ONNX | MINDIR
    vocab_size: int
    bert_config: dict
    quant: Optional[dict]
    settings: dict                    # token / span tasks: TASK_SETTINGS of labels.json, defaults filled in

    @property
    def labels(self):
        return self.task.labels

    @property
    def regression(self) -> bool:
        return self.task.regression

    @property
    def num_labels(self) -> int:
        return self.task.num_labels


# ---------------------------------------------------------------------------------------------------------- card
def _num(v) -> str:
    """Numbers as the card prints them: ints with thousands separators, floats with 4 decimals."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(rows, columns) -> list:
    out = ["| " + " | ".join(str(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_num(r.get(c, "")) for c in columns) + " |" for r in rows]
    return out


def _keyed_table(d: dict, first: str, unit_column: str) -> list:
    """{name: number} -> a two-column table; {name: {column: number}} -> one row per name."""
    if all(isinstance(v, dict) for v in d.values()):
        columns = list(dict.fromkeys(c for v in d.values() for c in v))
        return _table([{first: k, **v} for k, v in d.items()], [first] + columns)
    return _table([{first: k, unit_column: v} for k, v in d.items()], [first, unit_column])


def check_card(card: Optional[dict]) -> dict:
    """The card dict, checked: only CARD_KEYS; stages a list of dicts; metrics / sizes / latency dicts."""
    card = dict(card or {})
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise UserError(f"model card: unknown key(s) {', '.join(unknown)} (expected {', '.join(CARD_KEYS)})")
    if "stages" in card and not (isinstance(card["stages"], list) and all(isinstance(r, dict)
                                                                          for r in card["stages"])):
        raise UserError("model card: 'stages' must be a list of table rows (dicts)")
    for key in ("metrics", "sizes", "latency"):
        if key in card and not isinstance(card[key], dict):
            raise UserError(f"model card: '{key}' must be a dict (name -> number, or name -> {{column: number}})")
    return card


def render_model_card(card: Optional[dict], labels: dict, files: dict) -> str:
    """Markdown model card. Every number in it comes from `card`, from labels.json (`labels`: shape, tokenizer) or
    from the folder's file sizes (`files`: name -> bytes); none is typed here.

    card keys (all optional): title (str), teacher (str), recipe (str, e.g. "gd -> td1 -> td2 -> export"), stages
    (list of dicts: one table row each, columns in the order they first appear), metrics ({name: number} or
    {model: {metric: number}}), sizes (bytes, same two shapes), latency (milliseconds, same two shapes), machine
    (str), command (str), commit (str), notes (str)."""
    card = check_card(card)
    task = labels["task"]
    head = _kind_of(labels)
    what = {"token": "tagger", "span": "question answering"}.get(head, "classifier")
    out = [f"# {card.get('title') or f'{task} {what}'}", ""]
    if head == "span":
        kind = "extractive QA (start and end logits per position)"
        pair = "question<TAB>context pairs"
    else:
        kind = "regression (one value)" if labels["regression"] else \
            ("tags " if head == "token" else "labels ") + ", ".join(f"`{x}`" for x in labels["labels"]) + \
            (" (in id order, IOB2, one per word)" if head == "token" else " (in id order)")
        pair = {True: "text pairs", False: "single texts", None: "single texts or pairs"}[labels.get("text_pair")]
    settings = ", ".join(f"{k} {_num(labels[k])}" for k in TASK_SETTINGS.get(head, {}) if k in labels)
    out += [f"- task: {task}, {kind}; main metric {labels['main_metric']}; input: {pair}"
            + (f"; {settings}" if settings else ""),
            f"- model file: `{labels['model_file']}` ({labels['format']}), fixed batch {_num(labels['batch_size'])} x "
            f"sequence {_num(labels['seq_length'])}; tokenizer: `{VOCAB_FILE}`, max_seq_length "
            f"{_num(labels['max_seq_length'])}, do_lower_case {_num(labels['do_lower_case'])}"]
    for key, what in (("teacher", "teacher"), ("recipe", "recipe")):
        if card.get(key):
            out.append(f"- {what}: {_num(card[key])}")
    if card.get("stages"):
        columns = list(dict.fromkeys(c for r in card["stages"] for c in r))
        out += ["", "## Stages", ""] + _table(card["stages"], columns)
    if card.get("metrics"):
        out += ["", "## Metrics", ""] + _keyed_table(card["metrics"], "model", "value")
    if card.get("sizes"):
        out += ["", "## Sizes (bytes)", ""] + _keyed_table(card["sizes"], "model", "bytes")
    out += ["", "## Files", ""]
    out += _table([{"file": f"`{n}`", "bytes": b} for n, b in sorted(files.items())], ["file", "bytes"])
    if card.get("latency"):
        out += ["", "## Latency (ms)", ""] + _keyed_table(card["latency"], "setting", "ms")
    repro = [(k, card[k]) for k in ("machine", "command", "commit") if card.get(k)]
    if repro:
        out += ["", "## Reproduce", ""]
        out += [f"- {k}: `{v}`" if k != "machine" else f"- {k}: {_num(v)}" for k, v in repro]
    if card.get("notes"):
        out += ["", str(card["notes"])]
    example = '"question<TAB>context"' if head == "span" else '"some text"'
    out += ["", f"Run it: `python run_predict.py --model_dir <this folder> {example}`; evaluate it: "
                "`python run_eval_onnx.py --model_dir <this folder> --data_dir <records>`.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------- write
def _config_dict(bert_config) -> dict:
    """A BertConfig, a config dict or a config.json path -> the checked config dict."""
    from src.tinybert_model import BertConfig
    what = "bert_config"
    try:
        if isinstance(bert_config, BertConfig):
            cfg = bert_config
        elif isinstance(bert_config, dict):
            cfg = BertConfig.from_dict(bert_config)
        else:
            what = f"model config '{bert_config}'"
            if not os.path.isfile(str(bert_config)):
                raise UserError(f"{what}: not found (expected a config.json)")
            cfg = BertConfig.from_json_file(str(bert_config))
    except (ValueError, TypeError) as e:
        raise UserError(f"{what}: {e}") from None
    return cfg.to_dict()


def task_for(name: str, labels=None, regression: bool = False) -> Task:
    """The Task of a name as the data tools spell it: a GLUE task, MR or CoNLL, csv with its label names in id order
    (or regression), or ner with its tags in id order, as tools/prepare_data.py builds it."""
    csv = str(name).lower() == "csv"
    own_labels = csv or str(name).lower() == "ner"
    if csv and regression and labels:
        raise UserError("--task csv: give --labels or --regression, not both")
    if regression and not csv:
        raise UserError(f"--regression applies to --task csv only (task {name} has its own label set)")
    if labels and not own_labels:
        raise UserError(f"--labels applies to --task csv and ner only (task {name} has its own label set)")
    if csv and not regression and not labels:
        raise UserError("--task csv needs a label list (--labels, comma-separated label strings in id order, e.g. "
                        "neg,pos) or --regression (float labels)")
    try:
        return get_task(name, list(labels) if labels else None, regression)
    except ValueError as e:
        raise UserError(f"--task: {e}") from None


def folder_task_from_flags(export_dir: Optional[str], file_name: Optional[str], task: str, labels: Optional[str],
                           regression: bool, num_labels: int, folder_flags_given) -> Optional[Task]:
    """export.py's flags for an exported folder, checked before any work: the folder's Task (None without
    --export_dir, where the folder-only flags named in `folder_flags_given` are an error)."""
    if export_dir is None:
        if folder_flags_given:
            raise UserError(f"{', '.join(folder_flags_given)}: only with --export_dir (they describe the exported "
                            f"folder)")
        return None
    if file_name is not None:
        raise UserError("--file_name and --export_dir: give one (the folder names its model model.<ext>)")
    if not task:
        raise UserError("--export_dir needs --task (the folder records the task's labels and metric)")
    t = task_for(task, [x.strip() for x in (labels or "").split(",") if x.strip()], regression)
    if num_labels and num_labels != t.num_labels:
        raise UserError(f"--num_labels {num_labels}: task {t.name} has {t.num_labels} label(s)")
    return t


def _task_of(task: Union[Task, str]) -> Task:
    return task if isinstance(task, Task) else task_for(task)


def _kind_of(labels: dict) -> str:
    """The task kind of a labels.json dict: a named task's, token for ner, else classification / regression."""
    name = str(labels["task"]).lower()
    if name in TASKS:
        return TASKS[name].kind
    return "token" if name == "ner" else "regression" if labels["regression"] else "classification"


def task_settings(task: Task, settings: Optional[dict], max_seq_length: int) -> dict:
    """The labels.json settings of a token / span task (TASK_SETTINGS): `settings` checked, the defaults of
    tools/prepare_data.py filled in (null_threshold 0.0, recorded for SQuAD v2.0 scoring only); {} for a
    sentence-level task, where any setting is an error."""
    from src import ner, squad
    from src.tasks import SQUAD_V2_METRICS
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    allowed = TASK_SETTINGS.get(task.kind, {})
    v2 = tuple(task.metrics) == SQUAD_V2_METRICS
    wrong = [k for k in given if k not in allowed or (k == "null_threshold" and not v2)]
    if wrong:
        raise UserError(f"task {task.name} ({task.kind}): {', '.join(wrong)} do(es) not apply (window_context: "
                        f"token tasks; doc_stride, max_query_length: span tasks; null_threshold: SQuAD v2.0 "
                        f"scoring)")
    out = {}
    if task.kind == "token":
        c = int(given.get("window_context", ner.default_window_context(max_seq_length)))
        if c < 0 or 2 * c >= max_seq_length - 2:
            raise UserError(f"window_context {c}: expected 0 <= 2 * window_context < max_seq_length - 2 "
                            f"(= {max_seq_length - 2})")
        out["window_context"] = c
    elif task.kind == "span":
        for key, default in (("doc_stride", squad.DOC_STRIDE), ("max_query_length", squad.MAX_QUERY_LENGTH)):
            value = int(given.get(key, default))
            if value < 1:
                raise UserError(f"{key} {value}: expected a positive number")
            out[key] = value
        if v2:
            thr = float(given.get("null_threshold", 0.0))
            if thr != thr or thr in (float("inf"), float("-inf")):
                raise UserError(f"null_threshold {thr}: expected a finite number")
            out["null_threshold"] = thr
    return out


def _quant_dict(quant) -> Optional[dict]:
    """A QuantConfig, a dict or a quant.json path -> the dict written as quant.json (notation included)."""
    if quant is None:
        return None
    from src.quant import QuantConfig
    if isinstance(quant, QuantConfig):
        return {"notation": quant.notation, **quant.to_dict()}
    if isinstance(quant, dict):
        d = dict(quant)
    else:
        d = _read_json(str(quant), "a quant.json (the ternary model's quantization settings)")
    try:
        q = QuantConfig.from_dict({k: v for k, v in d.items() if k != "notation"})
    except (TypeError, ValueError) as e:
        raise UserError(f"quant settings: {e}") from None
    return {"notation": q.notation, **q.to_dict()}


def _file_sizes(folder: str) -> dict:
    return {n: os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, n))}


def write_export_folder(out_dir: str, model_file: str, vocab_file: str, bert_config, task: Union[Task, str],
                        max_seq_length: int, do_lower_case: bool = True, quant=None, card: Optional[dict] = None,
                        tpack_file: Optional[str] = None, text_pair: Optional[bool] = None,
                        batch_size: Optional[int] = None, seq_length: Optional[int] = None,
                        overwrite: bool = False, settings: Optional[dict] = None) -> dict:
    """Write the exported folder `out_dir` around an exported model; returns labels.json's content plus
    `path` and `files` (name -> bytes).

    model_file: the .onnx / .mindir export.py wrote; its sidecar `<model_file>.json` is copied as
    `model.<ext>.json` when it exists. vocab_file: the WordPiece vocab.txt (its line count must equal the config's
    vocab_size). bert_config: BertConfig, config dict or config.json path of the exported model (num_labels must
    match the task). task: a Task or a task name. max_seq_length / do_lower_case: the tokenizer settings the model
    was trained with (max_seq_length <= the exported seq length; shorter inputs are zero-padded to it).
    quant: QuantConfig, dict or quant.json path (ternary models) -> quant.json. card: the model card dict
    (render_model_card's keys). tpack_file: a packed TernaryBERT artefact copied as model.tpack. text_pair:
    whether inputs are text pairs (default: known for GLUE tasks and MR, else unrecorded). batch_size / seq_length:
    the exported shape, needed only when there is no sidecar (read from the file / sidecar otherwise, and checked
    against it when given). overwrite: replace an existing non-empty `out_dir` (else an error). settings: a token
    or span task's featurizing / decoding settings (TASK_SETTINGS; task_settings fills in the defaults).

    Built in a temp folder beside out_dir and renamed into place at the end: on any error nothing is left."""
    from src.export import OnnxRunner, exported_shape
    if not out_dir:
        raise UserError("export folder: no path given")
    check_output_dir(out_dir, "export folder")
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise UserError(f"export folder '{out_dir}' exists and is not empty: remove it or choose another folder")
    ext = os.path.splitext(str(model_file))[1].lower()
    if ext not in MODEL_FILES:
        raise UserError(f"exported model '{model_file}': expected a .onnx or .mindir file")
    if not os.path.isfile(model_file):
        raise UserError(f"exported model '{model_file}': not found")
    model_name, fmt = MODEL_FILES[ext]
    sidecar = model_file + ".json"
    side = _read_json(sidecar, "the export's sidecar JSON") if os.path.isfile(sidecar) else None
    if side is None and fmt == "ONNX" and not (batch_size and seq_length):
        b, s = exported_shape(model_file, OnnxRunner(model_file), batch_size, seq_length)
    else:
        b, s = exported_shape(model_file, None, batch_size, seq_length)
    t = _task_of(task)
    config = _config_dict(bert_config)
    if config["num_labels"] != t.num_labels:
        raise UserError(f"model config: num_labels {config['num_labels']}, task {t.name} has {t.num_labels} "
                        f"label(s)")
    if side is not None and side.get("num_labels") not in (None, t.num_labels):
        raise UserError(f"'{sidecar}': the model outputs {side['num_labels']} logits, task {t.name} has "
                        f"{t.num_labels} label(s)")
    if side is not None and side.get("head_kind") not in (None, t.head):
        raise UserError(f"'{sidecar}': the model has a {side['head_kind']} head, task {t.name} (a {t.kind} task) "
                        f"needs a {t.head} head")
    _, vocab_lines = load_vocab(vocab_file)
    if vocab_lines != config["vocab_size"]:
        raise UserError(f"vocab file '{vocab_file}' has {vocab_lines} lines, the model config's vocab_size is "
                        f"{config['vocab_size']}: the vocab is not the model's")
    if text_pair is None:
        text_pair = KIND_TEXT_PAIR.get(t.kind, PAIR_TASKS.get(t.name))
    if t.kind in KIND_TEXT_PAIR and bool(text_pair) != KIND_TEXT_PAIR[t.kind]:
        raise UserError(f"task {t.name}: a {t.kind} task takes "
                        f"{'question<TAB>context pairs' if t.kind == 'span' else 'single texts'}, not "
                        f"{'text pairs' if text_pair else 'single texts'} (--text_pair)")
    least = 5 if t.kind == "span" else 3 if text_pair else 2
    if not least <= int(max_seq_length) <= s:
        raise UserError(f"max_seq_length {max_seq_length}: expected {least}..{s} (the exported seq length)")
    if s > config["max_position_embeddings"]:
        raise UserError(f"exported seq length {s} exceeds the config's max_position_embeddings "
                        f"{config['max_position_embeddings']}")
    if tpack_file is not None and not os.path.isfile(tpack_file):
        raise UserError(f"packed model '{tpack_file}': not found")
    qd = _quant_dict(quant)
    card = check_card(card)
    extra = task_settings(t, settings, int(max_seq_length))
    if t.labels:
        config["id2label"] = {str(i): x for i, x in enumerate(t.labels)}
        config["label2id"] = {x: i for i, x in enumerate(t.labels)}
    labels = {"format_version": FOLDER_VERSION, "task": t.name, "labels": list(t.labels),
              "regression": t.regression, "num_labels": t.num_labels, "main_metric": t.main_metric,
              "metrics": list(t.metrics), "eval_splits": list(t.eval_splits),
              "text_pair": None if text_pair is None else bool(text_pair), "max_seq_length": int(max_seq_length),
              "do_lower_case": bool(do_lower_case), "batch_size": b, "seq_length": s, "model_file": model_name,
              "format": fmt, **extra}

    with atomic_folder(out_dir) as tmp:
        shutil.copyfile(model_file, os.path.join(tmp, model_name))
        if side is not None:
            atomic_json(os.path.join(tmp, model_name + ".json"), dict(side, file=model_name), sort_keys=True)
        shutil.copyfile(vocab_file, os.path.join(tmp, VOCAB_FILE))
        atomic_json(os.path.join(tmp, CONFIG_FILE), config, sort_keys=True)
        atomic_json(os.path.join(tmp, LABELS_FILE), labels)
        if qd is not None:
            atomic_json(os.path.join(tmp, QUANT_FILE), qd, sort_keys=True)
        if tpack_file is not None:
            shutil.copyfile(tpack_file, os.path.join(tmp, TPACK_FILE))
        atomic_text(os.path.join(tmp, CARD_FILE), render_model_card(card, labels, _file_sizes(tmp)))
    return dict(labels, path=out_dir, files=_file_sizes(out_dir))


def export_to_folder(export_dir: str, task: Union[Task, str], config_path: str, ckpt_file: str,
                     vocab_file: Optional[str] = None, max_seq_length: Optional[int] = None,
                     do_lower_case: bool = True, file_format: str = "ONNX", batch_size: int = 32,
                     seq_length: int = 64, card: Optional[dict] = None, include_tpack: bool = False,
                     text_pair: Optional[bool] = None, overwrite: bool = False, log=print,
                     settings: Optional[dict] = None, **export_kw) -> dict:
    """export_checkpoint (src/export.py; export_kw: head_type, gelu, width_mult, depth_mult, ternary, int8, nbits,
    device_target, verify) into a temp folder, then write_export_folder around the result. vocab_file default: the
    vocab.txt beside the checkpoint, else bert-base-uncased (src/tokenization.py:default_vocab_file).
    max_seq_length default: seq_length. A ternary model's quant.json comes from its packed artefact's header;
    include_tpack copies the artefact too. settings: a token / span task's settings (write_export_folder).
    Returns write_export_folder's dict with the export's sidecar under `export`."""
    from src.export import check_format, export_checkpoint
    from src.tokenization import default_vocab_file
    t = _task_of(task)
    task_settings(t, settings, int(max_seq_length or seq_length))     # bad settings fail before the export runs
    check_format(file_format, export_kw.get("device_target", "CPU"))
    check_output_dir(export_dir, "--export_dir")
    if os.path.isdir(export_dir) and os.listdir(export_dir) and not overwrite:
        raise UserError(f"--export_dir '{export_dir}' exists and is not empty: remove it or choose another folder")
    if not vocab_file:
        beside = os.path.join(os.path.dirname(os.path.abspath(ckpt_file)), VOCAB_FILE)
        vocab_file = beside if os.path.isfile(beside) else default_vocab_file()
    load_vocab(vocab_file)                                     # a bad vocab fails before the export runs
    ternary = bool(export_kw.get("ternary"))
    if include_tpack and not ternary:
        raise UserError("--include_tpack copies the packed artefact of a --ternary export: add --ternary")
    parent = os.path.dirname(os.path.abspath(export_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    work = os.path.join(parent, f".{os.path.basename(os.path.abspath(export_dir))}.{uuid.uuid4().hex[:12]}.export")
    os.makedirs(work)
    final = os.path.abspath(export_dir)

    def export_log(msg):                     # the export's lines name the file where it will be, not the temp one
        log(str(msg).replace(work, final))
    try:
        info = export_checkpoint(config_path, ckpt_file, os.path.join(work, "model"), file_format, batch_size,
                                 seq_length, t.num_labels, log=export_log, **export_kw)
        quant = None
        if ternary:
            from src.packing import read_header
            quant = read_header(ckpt_file)["quant"]
        out = write_export_folder(export_dir, os.path.join(work, info["file"]), vocab_file, info["model_config"], t,
                                  max_seq_length or seq_length, do_lower_case, quant=quant, card=card,
                                  tpack_file=ckpt_file if include_tpack else None, text_pair=text_pair,
                                  overwrite=overwrite, settings=settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"export folder {out['path']}: " + ", ".join(f"{n} ({b} bytes)" for n, b in sorted(out["files"].items())))
    return dict(out, export=info)


# ---------------------------------------------------------------------------------------------------------- read
def _read_json(path: str, expected: str):
    if not os.path.isfile(path):
        raise UserError(f"'{path}': missing (expected {expected})")
    with read_errors(f"'{path}'", expected), open(path, encoding="utf-8") as f:
        return json.load(f)


def _folder_task(labels: dict, path: str) -> Task:
    name = labels["task"]
    if name.lower() == "ner":
        try:
            return get_task("ner", [str(x) for x in labels["labels"]])
        except ValueError as e:
            raise UserError(f"'{path}': {e}") from None
    known = TASKS.get(name.lower())
    if known is not None:
        if list(known.labels) != labels["labels"] or known.regression != labels["regression"]:
            raise UserError(f"'{path}': task {name} has labels {list(known.labels)} (regression "
                            f"{known.regression}), the file says {labels['labels']} (regression "
                            f"{labels['regression']})")
        return known
    if not labels["regression"] and not labels["labels"]:
        raise UserError(f"'{path}': 'labels' is empty and 'regression' is false (expected the label names in id "
                        f"order)")
    return Task(name, tuple(str(x) for x in labels["labels"]), labels["main_metric"],
                tuple(labels["metrics"]) or (labels["main_metric"],), "regression" if labels["regression"] else
                "classification",
                tuple(labels["eval_splits"]) or ("dev",))


def read_export_folder(path: str) -> ExportFolder:
    """Check every file of an exported folder and return what it holds; one UserError naming the file otherwise."""
    from src.tinybert_model import BertConfig
    if not path:
        raise UserError("--model_dir: no path given")
    folder = os.path.abspath(path)
    if not os.path.isdir(folder):
        raise UserError(f"--model_dir '{path}': not a folder (expected an export folder written by export.py "
                        f"--export_dir)")
    lpath = os.path.join(folder, LABELS_FILE)
    labels = _read_json(lpath, "the folder's task, labels and shapes, written by export.py --export_dir")
    if not isinstance(labels, dict):
        raise UserError(f"'{lpath}': expected a JSON object")
    for key, typ in _LABEL_KEYS.items():
        if key not in labels:
            raise UserError(f"'{lpath}': no '{key}' (expected {typ.__name__})")
        if not isinstance(labels[key], typ) or (typ is int and isinstance(labels[key], bool)):
            raise UserError(f"'{lpath}': '{key}' is {labels[key]!r}, expected {typ.__name__}")
    if labels["format_version"] > FOLDER_VERSION:
        raise UserError(f"'{lpath}': format_version {labels['format_version']} is newer than this code reads "
                        f"({FOLDER_VERSION})")
    if labels.get("text_pair") not in (None, True, False):
        raise UserError(f"'{lpath}': 'text_pair' is {labels['text_pair']!r}, expected true, false or null")
    task = _folder_task(labels, lpath)
    if labels["num_labels"] != task.num_labels:
        raise UserError(f"'{lpath}': num_labels {labels['num_labels']}, its labels give {task.num_labels}")
    for key, typ in TASK_SETTINGS.get(task.kind, {}).items():
        v = labels.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float) if typ is float else int)):
            raise UserError(f"'{lpath}': '{key}' is {v!r}, expected {'a number' if typ is float else 'int'}")
    try:
        settings = task_settings(task, {k: labels.get(k) for k in TASK_SETTINGS.get(task.kind, {})},
                                 labels["max_seq_length"])
    except UserError as e:
        raise UserError(f"'{lpath}': {e}") from None
    for key in ("batch_size", "seq_length", "max_seq_length"):
        if labels[key] < 1:
            raise UserError(f"'{lpath}': '{key}' is {labels[key]}, expected a positive number")
    if labels["max_seq_length"] > labels["seq_length"]:
        raise UserError(f"'{lpath}': max_seq_length {labels['max_seq_length']} exceeds the exported seq_length "
                        f"{labels['seq_length']}")
    model_name = labels["model_file"]
    ext = os.path.splitext(model_name)[1].lower()
    if os.path.basename(model_name) != model_name or ext not in MODEL_FILES:
        raise UserError(f"'{lpath}': model_file '{model_name}', expected a .onnx or .mindir file name in the folder")
    if MODEL_FILES[ext][1] != labels["format"]:
        raise UserError(f"'{lpath}': format {labels['format']} but model_file '{model_name}'")
    model_file = os.path.join(folder, model_name)
    if not os.path.isfile(model_file):
        raise UserError(f"'{model_file}': missing (expected the exported model named in {LABELS_FILE})")

    cpath = os.path.join(folder, CONFIG_FILE)
    config = _read_json(cpath, "the model's BertConfig")
    if not isinstance(config, dict):
        raise UserError(f"'{cpath}': expected a JSON object (the model's BertConfig)")
    try:
        cfg = BertConfig.from_dict(config)
    except (ValueError, TypeError) as e:
        raise UserError(f"'{cpath}': not a valid model config ({e})") from None
    if "num_labels" in config and cfg.num_labels != task.num_labels:
        raise UserError(f"'{cpath}': num_labels {cfg.num_labels}, {LABELS_FILE} has {task.num_labels}")

    vpath = os.path.join(folder, VOCAB_FILE)
    if not os.path.isfile(vpath):
        raise UserError(f"'{vpath}': missing (expected the model's WordPiece vocab, one token per line)")
    _, vocab_lines = load_vocab(vpath)
    if vocab_lines != cfg.vocab_size:
        raise UserError(f"'{vpath}': {vocab_lines} lines, {CONFIG_FILE} has vocab_size {cfg.vocab_size} (the vocab "
                        f"is not the model's)")

    sidecar = model_file + ".json"
    if os.path.isfile(sidecar):
        side = _read_json(sidecar, "the export's sidecar JSON")
        for key in ("batch_size", "seq_length", "num_labels"):
            want = labels[key] if key != "num_labels" else task.num_labels
            if isinstance(side, dict) and side.get(key) not in (None, want):
                raise UserError(f"'{sidecar}': {key} {side[key]}, {LABELS_FILE} has {want}")
        if isinstance(side, dict) and side.get("head_kind") not in (None, task.head):
            raise UserError(f"'{sidecar}': the model has a {side['head_kind']} head, {LABELS_FILE} says task "
                            f"{task.name} (a {task.kind} task, {task.head} head)")
    else:
        sidecar = None
    qpath = os.path.join(folder, QUANT_FILE)
    quant = None
    if os.path.exists(qpath):
        quant = _read_json(qpath, "the ternary model's quantization settings")
        if not isinstance(quant, dict):
            raise UserError(f"'{qpath}': expected a JSON object (the ternary model's quantization settings)")
    opt = {n: os.path.join(folder, n) for n in (TPACK_FILE, CARD_FILE)}
    return ExportFolder(
        path=folder, model_file=model_file, vocab_file=vpath, config_file=cpath, labels_file=lpath,
        sidecar_file=sidecar, quant_file=qpath if quant is not None else None,
        tpack_file=opt[TPACK_FILE] if os.path.isfile(opt[TPACK_FILE]) else None,
        card_file=opt[CARD_FILE] if os.path.isfile(opt[CARD_FILE]) else None,
        task=task, text_pair=labels.get("text_pair"), max_seq_length=labels["max_seq_length"],
        do_lower_case=labels["do_lower_case"], batch_size=labels["batch_size"], seq_length=labels["seq_length"],
        file_format=labels["format"], vocab_size=vocab_lines, bert_config=config, quant=quant, settings=settings)

