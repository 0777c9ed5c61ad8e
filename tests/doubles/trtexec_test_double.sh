#!/bin/sh
# A TEST DOUBLE of NVIDIA's trtexec, for the SSH plumbing of TensorRT boards only: it builds no engine.
#
# tests/integration/test_tensorrt_board.py runs it on a loopback sshd "board" in place of JetPack's
# /usr/src/tensorrt/bin/trtexec. It checks the arguments edgeconv passes, writes a stand-in engine file of
# 4096 bytes where --saveEngine says, keeps its argument list beside it (<engine>.argv) for the test, and
# prints the performance summary of a real trtexec run: TensorRT 10.3.0 (JetPack 6) on a Jetson, ResNet-50
# with --fp16, from a public log; only the command line differs. TRTEXEC_DOUBLE_FAIL=1 makes it fail as
# trtexec does when the ONNX parser rejects a model.
onnx=; engine=; int8=
for arg in "$@"; do
  case "$arg" in
    --onnx=*) onnx=${arg#--onnx=} ;;
    --saveEngine=*) engine=${arg#--saveEngine=} ;;
    --int8) int8=yes ;;
  esac
done
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b17] # trtexec $*"
if [ -z "$onnx" ] || [ ! -f "$onnx" ] || [ -z "$engine" ] || [ -z "$int8" ]; then
  echo "[05/13/2025-10:36:10] [E] test double: expected --onnx=<existing file> --int8 --saveEngine=<path>"
  echo "&&&& FAILED TensorRT.trtexec [TensorRT v100300] [b17] # trtexec $*"
  exit 1
fi
if [ "${TRTEXEC_DOUBLE_FAIL:-}" = 1 ]; then
  echo "[05/13/2025-10:36:10] [E] [TRT] ModelImporter.cpp:949: ERROR: test double: parsing failed"
  echo "[05/13/2025-10:36:10] [E] Failed to parse onnx file"
  echo "&&&& FAILED TensorRT.trtexec [TensorRT v100300] [b17] # trtexec $*"
  exit 1
fi
head -c 4096 /dev/zero > "$engine"
printf '%s\n' "$@" > "$engine.argv"
cat <<'LOG'
[05/13/2025-10:36:43] [I] Engine built in 27.6053 sec.
[05/13/2025-10:36:46] [I] === Performance summary ===
[05/13/2025-10:36:46] [I] Throughput: 318.007 qps
[05/13/2025-10:36:46] [I] Latency: min = 3.12671 ms, max = 3.15479 ms, mean = 3.14068 ms, median = 3.14062 ms, percentile(90%) = 3.14587 ms, percentile(95%) = 3.14771 ms, percentile(99%) = 3.15039 ms
[05/13/2025-10:36:46] [I] Enqueue Time: min = 0.844238 ms, max = 2.05505 ms, mean = 0.887139 ms, median = 0.872437 ms, percentile(90%) = 0.932861 ms, percentile(95%) = 0.953735 ms, percentile(99%) = 1.0658 ms
[05/13/2025-10:36:46] [I] H2D Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[05/13/2025-10:36:46] [I] GPU Compute Time: min = 3.12671 ms, max = 3.15479 ms, mean = 3.14068 ms, median = 3.14062 ms, percentile(90%) = 3.14587 ms, percentile(95%) = 3.14771 ms, percentile(99%) = 3.15039 ms
[05/13/2025-10:36:46] [I] D2H Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[05/13/2025-10:36:46] [I] Total Host Walltime: 3.00622 s
[05/13/2025-10:36:46] [I] Total GPU Compute Time: 3.00249 s
[05/13/2025-10:36:46] [I]
LOG
echo "&&&& PASSED TensorRT.trtexec [TensorRT v100300] [b17] # trtexec $*"
