"""Task table: label sets, task kind and the metric that selects the best checkpoint.

One place for everything that differs between tasks, so data converters, metrics, heads and logs agree.
Label order follows GLUE / HF `transformers` processors (MNLI: contradiction, entailment, neutral; CoNLL-2003:
O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC as in the HF `conll2003` dataset).

Kinds: "classification" (one label per row, label_ids int[1]), "regression" (one float per row, label_ids
float[1]), "token" (one tag per word, label_ids int[max_seq_length]: the tag id on the first word piece of each
word, -1 on every other position, which the loss and the metrics ignore; `sentence_id` int[1] ties the windows of
a long sentence together), "span" (extractive question answering: label_ids int[2], the start and end
positions of the answer's word pieces in the row, (0, 0) = [CLS] for no answer in the row; `feature_id` int[1]
ties a row to the features sidecar that decoding reads, src/squad.py describes both).
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

from src.errors import UserError


@dataclass(frozen=True)
class Task:
    name: str                      # canonical name as users write it (SST-2, MNLI, MR, ...)
    labels: Tuple[str, ...]        # label strings in id order; () for regression
    main_metric: str               # metric logged as "The best acc is X" and used to keep the best checkpoint
    metrics: Tuple[str, ...]       # every metric reported per eval
    kind: str = "classification"  # one of KINDS
    eval_splits: Tuple[str, ...] = ("dev",)   # MNLI has dev_matched and dev_mismatched

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task kind '{self.kind}': expected one of {', '.join(KINDS)}")

    @property
    def regression(self) -> bool:
        return self.kind == "regression"

    @property
    def token_level(self) -> bool:
        return self.kind == "token"

    @property
    def head(self) -> str:
        """The model head of the task: "token" (one output per position), "span" (start and end logits per
        position) or "sequence" (one per row)."""
        return self.kind if self.kind in ("token", "span") else "sequence"

    @property
    def num_labels(self) -> int:
        if self.kind == "span":
            return 2                                        # start and end logits per position
        return 1 if self.regression else len(self.labels)


KINDS = ("classification", "regression", "token", "span")
IGNORE_LABEL = -1        # label_ids value of a position that has no label (token tasks)


_BIN = ("0", "1")
_ENT2 = ("entailment", "not_entailment")
CONLL_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
_ENTITY_METRICS = ("f1", "precision", "recall")   # entity level, conlleval semantics
# SQuAD scores (src/squad.py): v2 "f1" / "exact" at the no-answer threshold of best F1 on the split
SQUAD_METRICS = ("f1", "exact")
SQUAD_V2_METRICS = ("f1", "exact", "f1_thresh0", "exact_thresh0", "has_ans_f1", "has_ans_exact", "no_ans_exact",
                    "null_threshold")

TASKS = {
    t.name.lower(): t for t in [
        Task("MR", _BIN, "acc", ("acc",)),
        Task("SST-2", _BIN, "acc", ("acc",)),
        Task("CoLA", _BIN, "mcc", ("mcc", "acc")),
        Task("MRPC", _BIN, "f1", ("f1", "acc")),
        Task("QQP", _BIN, "f1", ("f1", "acc")),
        Task("STS-B", (), "pearson", ("pearson", "spearman"), kind="regression"),
        Task("MNLI", ("contradiction", "entailment", "neutral"), "acc", ("acc",),
             eval_splits=("dev_matched", "dev_mismatched")),
        Task("QNLI", _ENT2, "acc", ("acc",)),
        Task("RTE", _ENT2, "acc", ("acc",)),
        Task("CoNLL", CONLL_LABELS, "f1", _ENTITY_METRICS, kind="token"),
        Task("SQuAD", (), "f1", SQUAD_METRICS, kind="span"),
        Task("SQuAD-v2", (), "f1", SQUAD_V2_METRICS, kind="span"),
        Task("CoNLL-MRC", (), "f1", SQUAD_V2_METRICS, kind="span"),   # CoNLL-2003 as questions, v2 scoring
    ]
}


def get_task(name: str, labels: Optional[List[str]] = None, regression: bool = False) -> Task:
    """Look a task up by name (case-insensitive). "csv" is the user's own data: `labels` (label strings in id order)
    make it a classification task ("ner": a token classification task with those tags); `regression=True` (and no
    labels) a regression task on float labels: one output, MSE, Pearson / Spearman as for STS-B.
    For the named tasks `regression=True` is only valid where the task is a regression task (STS-B); False keeps
    the task's own kind. The messages name the config keys (task.labels, task.regression)."""
    key = str(name).lower()
    if key == "csv":
        if regression:
            if labels:
                raise ValueError(f"task csv with task.regression true takes no task.labels (got {list(labels)}): "
                                 f"a regression task has float labels; for classification set task.regression "
                                 f"false")
            return Task("csv", (), "pearson", ("pearson", "spearman"), kind="regression")
        if not labels:
            raise ValueError("task csv needs a label list (task.labels), e.g. ['neg', 'pos']; an empty list is only "
                             "valid with task.regression true (float labels)")
        return Task("csv", tuple(str(x) for x in labels), "acc", ("acc", "f1") if len(labels) == 2 else ("acc",))
    if key == "ner":
        if regression:
            raise ValueError("task.regression true: task ner is token classification (one tag per word)")
        if not labels:
            raise ValueError("task ner needs its tag list (task.labels) in id order, e.g. ['O', 'B-PER', "
                             "'I-PER']: tools/prepare_data.py --task ner prints it and writes it to labels.txt in "
                             "its output directory")
        return Task("ner", tuple(str(x) for x in labels), "f1", _ENTITY_METRICS, kind="token")
    if key not in TASKS:
        raise ValueError(f"unknown task '{name}': expected one of {', '.join(t.name for t in TASKS.values())}, csv, "
                         f"ner")
    task = TASKS[key]
    if regression and not task.regression:
        raise ValueError(f"task.regression true: task {task.name} is classification (labels "
                         f"{', '.join(task.labels)}); regression applies to task csv (your own float labels) and "
                         f"STS-B")
    return task


def task_from_config(cfg):
    """The Task of `cfg.task` (name; labels or regression for task csv); an unknown name is a UserError naming
    task.name, a bad combination of the keys one naming them."""
    name = str(cfg.task.name).lower()
    try:
        return get_task(cfg.task.name, list(cfg.task.labels) or None, cfg.task.regression)
    except ValueError as e:
        raise UserError(str(e) if name in ("csv", "ner") or name in TASKS else f"task.name: {e}") from None
