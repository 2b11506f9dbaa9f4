#!/bin/sh
# Run a command as if on an AVX2-only CPU, on a machine with AVX-512 or AMX:
#   bench/avx2_only.sh python bench/default_run.py --cold
#
# - /proc/cpuinfo is replaced (in a private mount namespace) by a copy without its avx512* and amx* flags, so
#   `--dtype auto` picks float32 as it does on an AVX2-only CPU and manifests record cpu_level "avx2";
# - PyTorch's own kernels (ATEN_CPU_CAPABILITY), oneDNN (ONEDNN_MAX_CPU_ISA) and MKL (MKL_ENABLE_INSTRUCTIONS)
#   are limited to AVX2.
#
# It approximates such a machine; it is not one. The clock, caches and memory stay this machine's: on the 2-core
# AMD EPYC (AVX-512-BF16) where it was written, a 2048^3 float32 matrix product ran at 165 GFLOP/s under it
# against 129 GFLOP/s on the 2-core AVX2-only AMD EPYC of bench/README.md, so matrix-bound stages there take
# about a quarter longer than here. Needs the right to make a mount namespace (root, or `unshare -rm`).
set -e
[ $# -gt 0 ] || { echo "usage: bench/avx2_only.sh COMMAND [ARG...]" >&2; exit 2; }
flags=$(mktemp)
trap 'rm -f "$flags"' EXIT
sed -e 's/ avx512[a-z0-9_]*//g' -e 's/ amx[a-z0-9_]*//g' /proc/cpuinfo > "$flags"
unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$flags" \
    env MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "$@"
