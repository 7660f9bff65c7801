"""onnxruntime CPU sessions as this project runs exported models (parity checks, run_eval_onnx.py, benchmarks).

Two settings differ from onnxruntime's defaults; the exported file itself stays standard ONNX, and a CPU deployment
should pass the same two (docs/export.md):

- `disabled_optimizers=["SkipLayerNormFusion"]`: that fusion merges each residual Add with the LayerNormalization
  after it into one SkipLayerNormalization kernel, which on the CPU execution provider (onnxruntime 1.32) is 3-5.5x
  slower than the two kernels it replaces (benchmarks/investigations/bench_ort_settings.py --study skip_layernorm).
- `session.set_denormal_as_zero`: the padded keys' -10000 mask sends softmax's exp into the denormal range, where
  x86 arithmetic is many times slower (a masked [16, 12, 128, 128] softmax: 3.7-4.1 ms instead of 0.5 ms;
  benchmarks/investigations/bench_ort_settings.py --study denormal). Values below 1.2e-38 become 0, which no
  logit can see. onnxruntime also sets the flags on the thread that creates the session, and they stay set there
  after the session is gone.

Imports onnxruntime only (no MindSpore), so benchmark child processes start quickly.
"""

ORT_CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
ORT_CPU_SESSION_CONFIG = {"session.set_denormal_as_zero": "1"}


def ort_session(path: str, threads: int = 0, optimized_model_filepath: str = "",
                disabled_optimizers=ORT_CPU_DISABLED_OPTIMIZERS, session_config=None, profile_prefix: str = ""):
    """onnxruntime CPU session: `session_config` entries (default ORT_CPU_SESSION_CONFIG), all graph optimizations
    except `disabled_optimizers` (benchmarks pass () / {} to measure onnxruntime's defaults); `threads` intra-op
    threads (0 = onnxruntime's default); `profile_prefix`: record onnxruntime's per-node profile into
    <prefix>_<date>.json (the session's end_profiling() returns the path)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if optimized_model_filepath:
        opts.optimized_model_filepath = optimized_model_filepath
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    for key, value in (ORT_CPU_SESSION_CONFIG if session_config is None else session_config).items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))
