"""Side-by-side with peers: kfac-mem, kronfluence and a reference-style PyTorch hook pipeline.

Run from the repository root as modules (`python -m benchmarks.peers.<script>`):
  agreement     A, G against kronfluence and the reference-style pipeline; edited W against the
                reference-style heap + dense reconstruction (same factors)
  bench_peers   collection / eigendecomposition / edit time and peak RSS, the three pipelines
                interleaved in one run, each stage in a fresh process
  bench_select  curvature-mass selection against heap walks on an 11008x4096 spectrum

Shared pieces: `fixtures` (HF model directories and token windows, built once in a work
directory), `measure` (timers, RSS, compile-time listener, JSON lines), one module per pipeline
(`ours`, `kron`, `reference_style`) and `worker` (one stage of one pipeline in a fresh process).
"""
