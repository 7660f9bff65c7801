"""Evaluate an exported model (.onnx with onnxruntime, .mindir with ms.load + nn.GraphCell) on the full dev split
of a task's records, with the same metrics and batching as training-time eval (tail batch padded to the fixed
export batch and sliced off). Usage:

    python run_eval_onnx.py --model_file output/export/td_mr_student.onnx --task MR --data_dir data/mr
    python run_eval_onnx.py --model_file output/export/td_mr_student.mindir --task MR --data_dir data/mr
    python run_eval_onnx.py --model_dir output/export/td_mr --data_dir data/mr     # an exported folder: its task
    python run_eval_onnx.py --model_file output/export/conll.onnx --task CoNLL --data_dir data/conll  # entity F1

Prints `eval acc 0.xxxxxx | <file>` and the model-zoo line `============== acc is 0.xxxxxx`.
"""
import os
import sys

from src.cli import doc_parser
from src.errors import UserError, run_main
from src.dataset import load_eval_split

os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)


def parse_args(argv):
    p = doc_parser(__doc__)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model_file", help=".onnx or .mindir written by export.py")
    which.add_argument("--model_dir", help="exported folder (export.py --export_dir): task, shape and model from it")
    p.add_argument("--task", default=None, help="task name (default MR; --model_dir: the folder's, must agree)")
    p.add_argument("--labels", default=None, help="--task ner / csv: the label names in id order, comma-separated")
    p.add_argument("--data_dir", default="data/mr")
    p.add_argument("--split", default="dev", help="dev = the task's dev split(s); or test, train")
    p.add_argument("--dataset_type", default="tfrecord", help="tfrecord | mindrecord")
    p.add_argument("--batch_size", type=int, default=0, help="0 = the exported batch (from the file / its .json)")
    p.add_argument("--seq_length", type=int, default=0, help="0 = the exported seq length")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (onnxruntime intra-op / MindSpore)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from src.tasks import get_task
    if args.model_dir:
        from src.export_folder import read_export_folder
        folder = read_export_folder(args.model_dir)
        task, model_file = folder.task, folder.model_file
        if args.task and args.task.lower() != task.name.lower():
            raise UserError(f"--task {args.task}: the model in '{args.model_dir}' is for task {task.name}")
    else:
        model_file = args.model_file
        try:
            labels = [x.strip() for x in (args.labels or "").split(",") if x.strip()]
            task = get_task(args.task or "MR", labels or None)
        except ValueError as e:
            raise UserError(f"--task: {e}") from None
    from src import runtime
    from src.export import exported_shape, runner_for
    runtime.init_context("CPU", "graph", threads=args.threads)
    runner = runner_for(model_file, args.threads)
    batch, seq = exported_shape(model_file, runner, args.batch_size or None, args.seq_length or None)
    splits = task.eval_splits if args.split == "dev" else (args.split,)
    eval_sets = {s: load_eval_split(args.data_dir, s, args.dataset_type, seq, task) for s in splits}

    from src.evaluation import evaluate, numpy_logits
    metrics = evaluate(numpy_logits(runner), eval_sets, batch, task)
    rows = sum(len(a["input_ids"]) for a in eval_sets.values())
    print("eval " + ", ".join(f"{k} {v:.6f}" for k, v in metrics.items()) + f" | {rows} rows | {model_file}")
    print(f"============== {task.main_metric} is {metrics[task.main_metric]:.6f}", flush=True)
    return metrics


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
