#!/usr/bin/env bash
# The pipeline behind the committed CPU results (kept for reproducibility), run alone on the machine:
#   1. (PROFILE_AGAIN=1) re-profile the Qwen pair: the servers' policies decide with the cached profile,
#      and the simulator must use the same one; (RECORD=1) re-record the pair's acceptance
#      (12 prompts per category, another seed than the sweep's);
#   2. the request-rate sweep, every server tracing its steps (step_logs/<policy>.jsonl);
#      UNLOADED=<ms> reuses an earlier sweep's SLO calibration (REPEATS="dir ..." are earlier runs
#      of the same sweep, validated together with it);
#   3. the pair's acceptance on the sweep's own prompts, recorded per prompt (acceptance_qwen_prompts);
#   4. the servers' steps against the profile; the simulator replaying every point of the sweep(s),
#      calibrated with the logged host time (host), also each run's pass speed (speed), or a fit of
#      every logged pass (passes), drawing acceptance per category (the records of step 1) or per
#      prompt and position (step 3);
#   5. the paper-scale study.
set -euo pipefail
PY=${PY:-.venv/bin/python}
SWEEP=${SWEEP:-benchmarks/results/sweep_rate}
PROFILE=benchmarks/results/sim_validation/profile_qwen.json
if [[ "${PROFILE_AGAIN:-}" == 1 ]]; then
  $PY -m adaserve.cli profile --model qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --refresh --out $PROFILE
fi
if [[ "${RECORD:-}" == 1 ]]; then
  $PY -m adaserve.cli simulate record --num-prompts 12 --output-tokens 64 --seed 1 --out benchmarks/results/acceptance_qwen.jsonl
fi
$PY -m adaserve.cli bench sweep --variable rate --values 0.08,0.16,0.32,0.64 --num-requests 16 --output-tokens 48 \
    --policies none,chunked,chain:4,static-tree,dynamic-tree,smartspec,adaserve ${UNLOADED:+--unloaded-tpot-ms $UNLOADED} \
    --out-dir $SWEEP --step-log-dir $SWEEP/step_logs
PROMPTS=benchmarks/results/acceptance_qwen_prompts.jsonl
$PY -m adaserve.cli simulate record --from-bench $SWEEP/none_rate_*.json --out $PROMPTS \
    --record-policy dynamic-tree:16:8:8,dynamic-tree:16:6:8
$PY benchmarks/step_log_vs_cost_model.py $SWEEP/step_logs/*.jsonl --profile $PROFILE --out $SWEEP/step_log_vs_cost_model.json
# host: every sweep (ALL="dir ..." = all runs of it); speed/passes: the runs whose step logs count
# padding (PADDED="dir ...", default: this sweep and REPEATS).
VALIDATE="$PY -m adaserve.cli simulate validate --cost profile:$PROFILE"
$VALIDATE --bench-dir ${ALL:-${REPEATS:-} $SWEEP} --calibration host --out-dir benchmarks/results/sim_validation/host
$VALIDATE --bench-dir ${ALL:-${REPEATS:-} $SWEEP} --calibration host --acceptance recorded:$PROMPTS \
    --out-dir benchmarks/results/sim_validation/host_prompts
for how in speed passes; do
  $VALIDATE --bench-dir ${PADDED:-${REPEATS:-} $SWEEP} --calibration $how --acceptance recorded:$PROMPTS \
      --out-dir benchmarks/results/sim_validation/$how
done
$VALIDATE --bench-dir ${PADDED:-${REPEATS:-} $SWEEP} --calibration passes --out-dir benchmarks/results/sim_validation/passes_category
$PY benchmarks/sim_paper_scale.py --rates 2,4,6,8,12 --num-requests 600 \
    --timing-policies none,chunked,chain:4,static-tree,dynamic-tree,smartspec,adaserve
