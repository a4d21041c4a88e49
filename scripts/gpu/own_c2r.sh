#!/usr/bin/env bash
# The inverse FFT on its own cuFFT plan (kernels/inverse_fft.py, Paths.fft_own_c2r) on a lent GPU, one call each:
#   bash scripts/gpu/own_c2r.sh convs             build, the GPU tests of the plan, the GEMM and the FFT conv, the
#                                                 FFT convs alone (row fft_torch_c2r), the batch-1 GEMMs' tilings
#   bash scripts/gpu/own_c2r.sh generate ENCODER  fp8 at batch 1 with the switch off and on, both orders; batch 8
#                                                 streamed; the batch-1 profile
# Logs and CSV rows to $OUT. Set DND_FAST_COMMIT in the command (the machine's .git can be stale).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD DND_FAST_TUNE=known
bash scripts/gpu/build.sh "$OUT" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
case "$1" in
  convs)
    timeout 240 python3 -m pytest -q -x tests/test_inverse_fft.py tests/test_complex_gemm.py tests/test_fft_conv.py \
      -k "inverse or plan or graph or switch or bad or same_conv or pairs or complex" 2>&1 | tail -6 \
      | tee "$OUT/tests.log"
    python3 benchmarks/gpu_fft_conv.py --batches 1 --only L0.1w,L7.ch --csv "$OUT/fft_conv.csv" 2>&1 \
      | tee "$OUT/fft_conv.log" | grep -v "^\['"
    python3 benchmarks/gpu_complex_bmm.py --batches 1 --csv "$OUT/complex_bmm.csv" 2>&1 \
      | tee "$OUT/complex_bmm.log" | grep -E "pairs|1\.00x" | grep "|" | cut -c1-160 ;;
  generate)
    for order in "" --vary-on-first; do
      python3 benchmarks/gpu_generate.py --encoder "$2" --batches 1 --precisions fp8 --fp8-paths ends_fft,ends_fft \
        --stream 0 --reps 20 --vary fft_own_c2r $order --csv "$OUT/generate.csv" 2>&1 \
        | grep -v "Loading weights" | tee -a "$OUT/generate.log" | grep "^| 1 .*cuda graph"
    done
    python3 benchmarks/gpu_generate.py --encoder "$2" --batches 8 --precisions fp8 --fp8-paths ends_fft \
      --stream 64 --reps 10 --csv "$OUT/generate.csv" 2>&1 | grep -v "Loading weights" | tee -a "$OUT/generate.log" \
      | grep "^| 8 "
    python3 benchmarks/gpu_generate_profile.py --encoder "$2" --batch 1 --precision fp8 2>&1 \
      | grep -v "Loading weights" > "$OUT/profile.log"
    sed -n 4,20p "$OUT/profile.log"
    grep -E "Self CUDA|kernel|fft|copy|Memcpy" "$OUT/profile.log" | cut -c1-60,120-175 ;;
  *) echo "usage: $0 convs | generate ENCODER" >&2; exit 2 ;;
esac
