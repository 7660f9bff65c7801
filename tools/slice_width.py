"""Slice a width-adaptive supernet (run_ofa_width.py) into a plain, physically smaller sub-model.

    python tools/slice_width.py --ckpt output/ofa_mr/supernet.ckpt --width_mult 0.6666666666666666 \\
        --output_dir output/ofa_mr/sub_w0.667

Writes <output_dir>/model.ckpt (a BertForSequenceClassification with the leading heads / FFN neurons of every
layer) and <output_dir>/config.json (per-layer `layer_num_heads` / `layer_intermediate_sizes`). It reloads with the
normal strict loader and gives the supernet's logits at that width. --config defaults to the config.json beside
--ckpt. Active heads = round(H * width_mult), FFN = round(F * width_mult); --depth_mult keeps round(L * d) layers
(layer floor(i / d), DynaBERT), renumbered in the sub-model.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)

from src.cli import doc_parser  # noqa: E402
from src.errors import UserError, run_main  # noqa: E402


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--ckpt", required=True, help="supernet checkpoint (BertForSequenceClassification names)")
    p.add_argument("--config", default=None, help="supernet config.json (default: the one beside --ckpt)")
    p.add_argument("--width_mult", required=True, help="width in (0, 1], e.g. 0.6666666666666666")
    p.add_argument("--depth_mult", default="1.0", help="depth in (0, 1] (DynaBERT: round(L*d) layers kept)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--head_type", default="auto", choices=["auto", "dense", "relu_pooler"],
                   help="auto (default) = the head the supernet checkpoint records (dense when it records none); "
                        "recorded in the sub-model's checkpoint for export.py")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    values = {}
    for flag in ("width_mult", "depth_mult"):
        try:
            values[flag] = float(getattr(args, flag))
        except ValueError:
            raise UserError(f"--{flag}: expected a number in (0, 1], got {getattr(args, flag)!r}") from None
    width, depth = values["width_mult"], values["depth_mult"]
    config = args.config or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "config.json")
    import mindspore as ms
    ms.set_device("CPU")
    from src.width import slice_checkpoint
    ckpt, conf = slice_checkpoint(args.ckpt, config, width, args.output_dir, args.head_type, depth_mult=depth)
    print(f"sub-model at width {width:g}, depth {depth:g}: {ckpt} + {conf}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
