#!/usr/bin/env bash
# Benchmarks and GPU tests on one GPU machine, in phases; every figure lands in OUT as JSON.
#   bash benchmarks/h200.sh OUT PHASE...
# phases: gputests kernels gemv profile serveprofile stack inprocess peer lmdeploy report pack
# `stack` serves a random-weight Llama-3-8B-shaped model (bf16, --load-format dummy) through the
# three gRPC services and drives it with benchmarks/serve.py; `inprocess` runs the same workloads
# on the in-process engine (no gRPC); `peer` runs transformers' generate (PEER_DIR/hf_generate.py,
# the peer script kept outside the repo) on the same shapes. WORKLOADS overrides the workload list
# as "name:num_prompts:input_len:output_len:max_concurrency" items.
set -u
OUT=${1:?usage: h200.sh OUT PHASE...}; shift
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ! python3 -c "import grpc_health, grpc_reflection" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
MODEL=${MODEL:-/tmp/llama3-8b-shape}
PEER_DIR=${PEER_DIR:-.peers}
WORKLOADS=${WORKLOADS:-"b1:4:128:256:1 c64:128:128:256:64 c128:128:128:256:128"}
SERVE_FLAGS=${SERVE_FLAGS:-"--load-format dummy --dtype bfloat16 --gpu-memory-utilization 0.95 --max-model-len 4096 --max-num-seqs 512 --max-num-batched-tokens 8192 --max-graph-batch-size 512"}

cpu_times() {  # CPU seconds (user + system) of every Sluice service process, one line each
  for pid in $(pgrep -f "services.cli|services\.(tokenizer|scheduler|worker)"); do
    awk -v pid="$pid" '{printf "%s %.2f ", pid, ($14 + $15) / 100}' "/proc/$pid/stat" 2>/dev/null
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80
  done
}

run_workloads() {  # $1 = backend, rest = extra flags
  local backend=$1; shift
  for w in $WORKLOADS; do
    IFS=: read -r name n inp outp conc <<<"$w"
    [ "$backend" = grpc ] && { echo "before $name"; cpu_times; } >>"$OUT/stack_cpu.txt"
    timeout ${WORKLOAD_TIMEOUT:-240} python3 -m benchmarks.serve --backend "$backend" --num-prompts "$n" --input-len "$inp" \
      --output-len "$outp" --max-concurrency "$conc" --num-warmups 2 --no-progress \
      --label "$backend-$name" --out "$OUT/serve_${backend}_${name}.json" "$@" \
      2>&1 | tail -n 32
    [ "$backend" = grpc ] && { echo "after $name"; cpu_times; } >>"$OUT/stack_cpu.txt"
  done
}

for phase in "$@"; do
  echo "=== $phase $(date +%T)"
  case $phase in
    gputests)
      timeout 420 python3 -m pytest -q -m gpu ${GPU_TESTS:-tests} -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 30 ;;
    kernels)
      timeout 240 python3 -m benchmarks.kernels --out "$OUT/kernels_attention.json" 2>&1 | tail -n 40
      timeout 120 python3 -m benchmarks.kernels_elementwise --out "$OUT/kernels_elementwise.json" 2>&1 | tail -n 30 ;;
    gemv)  # the decode GEMV against cuBLAS at the linear shapes, with a sweep of its tile configurations
      timeout 420 python3 -m benchmarks.kernels_gemv ${GEMV_FLAGS:-} --out "$OUT/kernels_gemv.json" 2>&1 | tail -n 40 ;;
    stack)
      python3 -m benchmarks.models llama3-8b "$MODEL" >/dev/null
      # shellcheck disable=SC2086
      python3 -m services.cli serve --model "$MODEL" $SERVE_FLAGS --log-level INFO >"$OUT/stack.log" 2>&1 &
      stack=$!
      for _ in $(seq 600); do grep -q "Sluice is ready" "$OUT/stack.log" && break; sleep 0.5; done
      grep "Sluice is ready" "$OUT/stack.log" || { tail -n 40 "$OUT/stack.log"; kill $stack; continue; }
      python3 -m services.cli generate "The river" --max-tokens 16 --temperature 0 2>&1 | tail -n 2
      run_workloads grpc --model "$MODEL" --metrics-url http://localhost:9402/metrics \
        --metrics-url http://localhost:9403/metrics
      curl -s localhost:9402/metrics | grep -E "^sluice_scheduler_(step_seconds|preemptions)" > "$OUT/scheduler_metrics.txt"
      curl -s localhost:9403/metrics | grep -E "^sluice_worker_(gpu_|step_seconds|jit_)" > "$OUT/worker_metrics.txt"
      kill -TERM $stack; wait $stack ;;
    inprocess)
      python3 -m benchmarks.models llama3-8b "$MODEL" >/dev/null
      # shellcheck disable=SC2086
      run_workloads inprocess --model "$MODEL" $SERVE_FLAGS ;;
    peer)
      timeout 420 python3 "$PEER_DIR/hf_generate.py" ${PEER_PLAN:-llama3-8b:1:128:256 llama3-8b:64:128:256 llama3-8b:128:128:256} \
        2>/dev/null | tee "$OUT/hf_generate.jsonl" ;;
    profile)
      python3 -m benchmarks.models llama3-8b "$MODEL" >/dev/null
      timeout 240 python3 -m benchmarks.profile_decode "$MODEL" --batch ${PROFILE_BATCH:-1 64} --context ${PROFILE_CONTEXT:-384} \
        $(for s in ${PROFILE_STEPS:-0:0:8:1024 512:1024:7:1024}; do echo --step "$s"; done) --out "$OUT/profile_decode${PROFILE_TAG:-}.json" 2>&1 | grep -v Warning | tail -n 120 ;;
    serveprofile)  # the GPU timeline of in-process serving: what a decode step does beyond the graph
      python3 -m benchmarks.models llama3-8b "$MODEL" >/dev/null
      for b in ${SERVE_PROFILE_BATCH:-1 64}; do
        timeout 240 python3 -m benchmarks.profile_serving "$MODEL" --batch "$b" --steps 32 \
          --out "$OUT/profile_serving_b$b.json" --trace "$OUT/trace_serving_b$b.json" 2>&1 | grep -v Warning | tail -n 45
      done ;;
    lmdeploy)  # LMDeploy's PyTorch engine (the peer script's `full` plan), from wheels in LMD_DIR
      LMD=${LMD_DIR:-.lmd}
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lmd-site "$LMD"/*.whl \
        && tar xzf "$LMD"/lmdeploy_site.tgz -C /tmp/lmd-site \
        && PYTHONPATH="$PYTHONPATH:/tmp/lmd-site" timeout 480 python3 "$PEER_DIR/lmdeploy_pytorch.py" full \
          2>"$OUT/lmdeploy.log" | tee "$OUT/lmdeploy.jsonl"
      tail -n 5 "$OUT/lmdeploy.log" ;;
    report)
      python3 -m benchmarks.report "$OUT" --markdown-out "$OUT/report.md" ;;
    pack)  # one archive instead of many files (the device returns a limited number of files)
      tar czf /tmp/h200-results.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete \
        && mv /tmp/h200-results.tgz "$OUT/results.tgz" ;;
    *) echo "unknown phase $phase" ;;
  esac
done
echo "=== done $(date +%T)"
