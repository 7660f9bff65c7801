"""What the run modules share: the models and data a run builds from its config, the eval function of a model,
the Trainer's schedule. Each run module reads build -> fit -> report; the pieces it builds come from here."""
from src.checkpoint import load_into
from src.dataset import load_eval_sets, load_split
from src.errors import UserError
from src.evaluation import evaluate
from src.runtime import fused_kernels
from src.tinybert_model import LogitsOnly, build_classifier, load_bert_config
from src.trainer import Schedule

TASK_INPUTS = ["input_ids", "segment_ids", "input_mask", "label_ids"]


def classifier_config(cfg, path: str, what: str, task):
    """A BertConfig from a config.json, with the task's label count and the run's kernel choice."""
    return load_bert_config(path, what, num_labels=task.num_labels, fused_cpu_kernels=fused_kernels(cfg))


def teacher_classifier(cfg, task, ckpt=None, what: str = "teacher.ckpt"):
    """(config, classifier) of `teacher:`; loaded from `ckpt` unless it is None (an empty path is an error)."""
    tcfg = classifier_config(cfg, cfg.teacher.config, "teacher.config", task)
    teacher = build_classifier(tcfg, cfg.teacher.head_type, task.head)
    if ckpt is not None:
        load_into(teacher, ckpt, what, strict=True)
    return tcfg, teacher


def eval_data(cfg, task, log):
    """The run's eval split(s) (the task's dev splits, MNLI matched + mismatched, or eval.split), sizes logged."""
    eval_sets = load_eval_sets(cfg, task)
    for s, a in eval_sets.items():
        log.info(f"{s} eval dataset size: {len(a['input_ids'])}")
    return eval_sets


def train_data(cfg, task, log):
    train = load_split(cfg.data.dir, "train", cfg.data.dataset_type, cfg.data.max_seq_length, task)
    log.info(f"train dataset size: {len(train['input_ids'])}")
    return train


def eval_buckets(cfg):
    """The length buckets of the run's eval batches: data.length_buckets when eval.length_buckets is true, else None
    (every batch at data.max_seq_length)."""
    return list(cfg.data.length_buckets) if cfg.eval.length_buckets else None


def logits_eval(model, eval_sets, batch_size: int, task, train_cells=(), length_buckets=None):
    """fn() -> metrics of `model` on `eval_sets` in inference mode; `train_cells` are put back in training mode."""
    net = LogitsOnly(model)

    def run():
        net.set_train(False)
        metrics = evaluate(net, eval_sets, batch_size, task, length_buckets)
        for c in train_cells:
            c.set_train(True)
        return metrics
    return run


def schedule(sched, lr) -> Schedule:
    """The Trainer's Schedule of a phase section (`train:`, `td1:`, ...) and its LR schedule."""
    return Schedule(epochs=sched.epochs, max_steps=sched.max_steps, lr_value=lr.value)


def keep_outputs_on_error(fn, *args, **kwargs):
    """Steps after training: a UserError there keeps the run's checkpoints and log (output_guard keep_outputs)."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        e.keep_outputs = True
        raise

