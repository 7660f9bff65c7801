"""onnxruntime int8 dynamic quantization of one ONNX file (weights int8 per tensor, activations quantized at run
time). Needs the `onnx` package (requirements.txt); bench_export.py runs this file in its own process, with the first
python of `--quant_python`, this one, .venv-bench's that can import it.

    python benchmarks/ort_quantize.py in.onnx out.onnx
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv):
    if len(argv) != 2:
        print("usage: ort_quantize.py IN.onnx OUT.onnx", file=sys.stderr)
        return 2
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from src.fileio import atomic_path
    src, dst = argv
    with atomic_path(dst) as tmp:
        quantize_dynamic(src, tmp, weight_type=QuantType.QInt8)
    print(f"quantized {src} -> {dst} ({os.path.getsize(dst)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
