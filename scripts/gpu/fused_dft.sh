#!/usr/bin/env bash
# The FFT conv's transforms each in one kernel (kernels/dft_forward.py, dft_inverse.py; Paths.fft_fused_forward,
# fft_fused_inverse) on a lent GPU, one call each:
#   bash scripts/gpu/fused_dft.sh convs             build, the GPU tests of the kernels, the GEMM and the FFT conv;
#                                                   each transform alone, fused against cuFFT's passes (every FFT conv
#                                                   of fp8, batches 1 and 8; the tiling sweep at batch 1); the FFT
#                                                   convs alone (rows fft_fused_*)
#   bash scripts/gpu/fused_dft.sh generate ENCODER  fp8 at batch 1 with both switches off and on, both orders; batch
#                                                   8 streamed
#   bash scripts/gpu/fused_dft.sh first ENCODER     build, the GPU tests, each transform alone at batches 1 and 8,
#                                                   then generate's timings: one call where machines are scarce
#   bash scripts/gpu/fused_dft.sh profile ENCODER   fp8's batch-1 profile with both switches off, then on
# Logs and CSV rows to $OUT. Set DND_FAST_COMMIT in the command (the machine's .git can be stale).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD DND_FAST_TUNE=known
bash scripts/gpu/build.sh "$OUT" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
tests_and_transforms() {
  timeout 200 python3 -m pytest -q -x tests/test_dft_transforms.py tests/test_complex_gemm.py tests/test_fft_conv.py \
    -k "dft or fused or inverse or same_conv or pairs or complex or bad" 2>&1 | tail -6 | tee "$OUT/tests.log"
  timeout 200 python3 benchmarks/gpu_dft_transforms.py --batches 1,8 --csv "$OUT/dft_transforms.csv" 2>&1 \
    | tee "$OUT/dft_transforms.log" | grep "|"
}
case "$1" in
  first) tests_and_transforms; bash "$0" generate "$2" ;;
  convs)
    tests_and_transforms
    timeout 150 python3 benchmarks/gpu_dft_transforms.py --batches 1 --only L0.1w,L7.ch --sweep \
      --csv "$OUT/dft_transforms.csv" > "$OUT/dft_sweep.log" 2>&1
    grep "|" "$OUT/dft_sweep.log"
    timeout 150 python3 benchmarks/gpu_fft_conv.py --batches 1 --only L0.1w,L7.ch --csv "$OUT/fft_conv.csv" 2>&1 \
      | tee "$OUT/fft_conv.log" | grep -E "fused|^\| " ;;
  generate)
    for order in "" --vary-on-first; do
      timeout 200 python3 benchmarks/gpu_generate.py --encoder "$2" --batches 1 --precisions fp8 \
        --fp8-paths ends_fft --stream 0 --reps 20 --vary fft_fused_forward,fft_fused_inverse $order \
        --csv "$OUT/generate.csv" 2>&1 | grep -v "Loading weights" | tee -a "$OUT/generate.log" \
        | grep "^| 1 .*cuda graph"
    done
    timeout 150 python3 benchmarks/gpu_generate.py --encoder "$2" --batches 8 --precisions fp8 --fp8-paths ends_fft \
      --stream 64 --reps 5 --vary fft_fused_inverse,fft_fused_forward --csv "$OUT/generate.csv" 2>&1 \
      | grep -v "Loading weights" | tee -a "$OUT/generate.log" | grep "^| 8 " ;;
  profile)
    for on in "" fft_fused_forward,fft_fused_inverse; do
      python3 benchmarks/gpu_generate_profile.py --encoder "$2" --batch 1 --precision fp8 --on "$on" 2>&1 \
        | grep -v "Loading weights" > "$OUT/profile${on:+_fused}.log"
      grep -E "^\| |Self CUDA" "$OUT/profile${on:+_fused}.log" | head -40 | cut -c1-60,120-175
    done ;;
  *) echo "usage: $0 convs | generate ENCODER | first ENCODER | profile ENCODER" >&2; exit 2 ;;
esac
