"""The compression pipeline's stages that train nothing and run in its own process: vocab (vocabulary pruning of
the model handed on, then packing) and export (the deployable folder). Each returns (Model handed on, metrics)."""
import os

from src.errors import UserError
from src.runs.compress_stages import Model



def eval_records(cfg, model: Model) -> str:
    """The records the model is evaluated on: the vocab stage's re-tokenized eval splits for a pruned vocab."""
    return os.path.join(os.path.dirname(model.vocab), "data") if model.vocab else cfg.data.dir


def export_step(cfg, model: Model, stage_dir: str, teacher: Model, log):
    """The deployable folder (src/export_folder.py) of the model handed on, in export.format at export.batch_size x
    export.seq_length, then that file evaluated on the dev split(s) with onnxruntime (what a deployment computes)."""
    from src.export_folder import export_to_folder
    from src.tasks import task_from_config
    from src.tokenization import default_vocab_file
    ternary = model.kind == "ternary"
    if cfg.export.format != "fp32" and not ternary:
        raise UserError(f"export.format {cfg.export.format}: needs a TernaryBERT model, and the export stage's input "
                        f"{model.dir} is fp32 (add the ternary stage, or set export.format fp32)")
    if ternary and not model.packed:
        raise UserError(f"export stage: {model.dir} has no packed artefact (model.tpack); run the ternary stage "
                        f"with pack.after_train true, or the vocab stage")
    from src.runs.compress_report import FORMAT_FLAGS
    flags = FORMAT_FLAGS[cfg.export.format] if ternary else FORMAT_FLAGS["fp32"]
    task = task_from_config(cfg)
    export_to_folder(stage_dir, task, model.config, model.packed if ternary else model.ckpt,
                     vocab_file=model.vocab or cfg.teacher.vocab or default_vocab_file(),
                     max_seq_length=cfg.data.max_seq_length, batch_size=cfg.export.batch_size,
                     seq_length=cfg.export.seq_length, include_tpack=ternary, overwrite=True, log=log.info,
                     settings=span_settings(cfg, task), head_type=cfg.teacher.head_type, ternary=ternary, **flags)
    metrics = evaluate_folder(cfg, stage_dir, eval_records(cfg, model), task)
    log.info("exported model eval " + ", ".join(f"{k} {v:.6f}" for k, v in metrics.items())
             + f" | {os.path.join(stage_dir, 'model.onnx')}")
    out = Model(os.path.join(stage_dir, "config.json"), os.path.join(stage_dir, "model.onnx"), model.kind,
                os.path.join(stage_dir, "model.tpack") if ternary else "", os.path.join(stage_dir, "vocab.txt"))
    return out, metrics


def span_settings(cfg, task) -> dict:
    """A span task's doc_stride and max_query_length as its records were made (the dev features sidecar of
    data.dir, written by tools/prepare_data.py --task squad), for run_predict to featurize raw text alike; {} for
    other tasks or when the sidecar is absent (the folder then records prepare_data's defaults)."""
    if task.kind != "span":
        return {}
    import json
    from src.squad import features_file
    path = features_file(cfg.data.dir, task.eval_splits[0])
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}                          # a bad sidecar is reported by the evaluation that reads it next
    return {k: doc[k] for k in ("doc_stride", "max_query_length")
            if isinstance(doc, dict) and isinstance(doc.get(k), int) and not isinstance(doc.get(k), bool)}


def evaluate_folder(cfg, folder: str, data_dir: str, task) -> dict:
    """Metrics of an exported folder's model file on the task's dev split(s) of `data_dir` (onnxruntime, the
    exported batch; run_eval_onnx.py computes the same)."""
    from src.evaluation import evaluate, numpy_logits
    from src.export import runner_for
    from src.export_folder import read_export_folder
    f = read_export_folder(folder)
    return evaluate(numpy_logits(runner_for(f.model_file, cfg.threads)),
                    _eval_sets(cfg, data_dir, task, f.seq_length), f.batch_size, task)


def vocab_step(cfg, model: Model, stage_dir: str, teacher: Model, log):
    """Vocabulary pruning (src/vocab_prune.py): the pieces of the training rows (+ vocab.top_n of vocab.corpus,
    + every single-character piece) kept, the model's word-embedding rows remapped, vocab.txt written; the eval
    splits re-encoded with the pruned vocab into <stage>/data (what run_eval_onnx and the export stage read); a
    TernaryBERT model packed again (model.tpack) and that packed model evaluated on the re-encoded dev split(s)."""
    import tempfile
    from src.fileio import atomic_json
    from src.tasks import task_from_config
    from src.tokenization import BertTokenizer, default_vocab_file
    from src import vocab_prune as vp
    task = task_from_config(cfg)
    vocab_file = model.vocab or cfg.teacher.vocab or default_vocab_file()
    tokens = vp.read_vocab_tokens(vocab_file)
    from src.tinybert_model import load_bert_config
    size = load_bert_config(model.config, "vocab stage input config").vocab_size
    if size != len(tokens):
        raise UserError(f"vocab {vocab_file}: {len(tokens):,} tokens, but the model {model.config} has vocab_size "
                        f"{size:,}; expected the vocab it and the records were made with (teacher.vocab)")
    train = vp.read_rows(cfg.data.dir, "train", cfg.data.dataset_type)
    corpus = vp.read_rows(cfg.vocab.corpus, "train", cfg.data.dataset_type) if cfg.vocab.top_n else None
    parts = {}
    keep = vp.kept_ids_of_rows(tokens, train, corpus, cfg.vocab.top_n, cfg.vocab.single_chars, parts)
    log.info(f"vocab: {len(keep):,} of {len(tokens):,} pieces kept (training text {len(parts['train']):,}, "
             f"top {cfg.vocab.top_n} of the corpus {len(parts['corpus_top_n']):,}, single characters "
             f"{len(parts['single_char']):,}, special {len(parts['special'])})")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(stage_dir))) as src_dir:
        for name, path in (("config.json", model.config), ("best.ckpt", model.ckpt)):    # prune_model_dir's names
            os.symlink(os.path.abspath(path), os.path.join(src_dir, name))
        if model.kind == "ternary":
            for name in ("best_quant.ckpt", "quant.json"):
                os.symlink(os.path.abspath(os.path.join(model.dir, name)), os.path.join(src_dir, name))
        report = vp.prune_model_dir(src_dir, stage_dir, keep, tokens)
    pruned = BertTokenizer(os.path.join(stage_dir, "vocab.txt"))
    data_out, stats = os.path.join(stage_dir, "data"), {}
    for split in task.eval_splits + ("test",):
        try:
            rows = vp.read_rows(cfg.data.dir, split, cfg.data.dataset_type, vp.ROW_COLUMNS + ("label_ids",))
        except UserError:
            if split == "test":
                continue                                   # a task without a test split
            raise
        new, stats[split] = vp.reencode(rows, tokens, keep, pruned, cfg.data.max_seq_length)
        _write_split(cfg, data_out, split, new)
        log.info(f"vocab: {split} re-encoded: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                            for k, v in stats[split].items()))
    atomic_json(os.path.join(stage_dir, vp.REPORT), {**report, "splits": stats}, sort_keys=True)
    vocab = os.path.join(stage_dir, "vocab.txt")
    if model.kind != "ternary":
        from src.checkpoint import load_into
        from src.evaluation import evaluate
        from src.tinybert_model import LogitsOnly, build_classifier, load_bert_config
        net = build_classifier(load_bert_config(os.path.join(stage_dir, "config.json"), "pruned config",
                                                num_labels=task.num_labels), cfg.teacher.head_type)
        load_into(net, os.path.join(stage_dir, "best.ckpt"), "pruned checkpoint", strict=True)
        net = LogitsOnly(net)
        net.set_train(False)
        metrics = evaluate(net, _eval_sets(cfg, data_out, task), 64, task)
        out = Model(os.path.join(stage_dir, "config.json"), os.path.join(stage_dir, "best.ckpt"), vocab=vocab)
    else:
        from src.runs.ternary import pack_run
        from src.packing import read_header
        codec = read_header(model.packed)["codec"] if model.packed else "2bit"      # as the ternary run packed
        res = pack_run(stage_dir, codec, cfg.data.max_seq_length, cfg.teacher.head_type, log=log,
                       eval_sets=_eval_sets(cfg, data_out, task), eval_batch=64, task=task)
        metrics = {k: v for k, v in res.items() if k in task.metrics}
        out = Model(os.path.join(stage_dir, "config.json"), os.path.join(stage_dir, "best.ckpt"), "ternary",
                    os.path.join(stage_dir, "model.tpack"), vocab)
    log.info("vocab: pruned model eval " + ", ".join(f"{k} {v:.6f}" for k, v in metrics.items()))
    return out, metrics


def _eval_sets(cfg, data_dir: str, task, seq: int = 0) -> dict:
    """The task's dev split(s) of `data_dir` at `seq` (0 = data.max_seq_length)."""
    from src.dataset import load_eval_split
    return {s: load_eval_split(data_dir, s, cfg.data.dataset_type, seq or cfg.data.max_seq_length, task)
            for s in task.eval_splits}


def _write_split(cfg, data_dir: str, split: str, rows: dict):
    from src.records import write_records, write_schema
    os.makedirs(data_dir, exist_ok=True)
    columns = {k: (str(v.dtype), v.shape[1]) for k, v in rows.items()}
    from src.dataset import RECORD_EXT
    n = write_records(os.path.join(data_dir, split + RECORD_EXT[cfg.data.dataset_type]),
                      ({k: v[i].tolist() for k, v in rows.items()} for i in range(len(rows["input_ids"]))), columns,
                      cfg.data.dataset_type)
    write_schema(os.path.join(data_dir, f"{split}_schema.json"), columns, n, cfg.data.dataset_type)


STEPS = {"vocab": vocab_step, "export": export_step}
