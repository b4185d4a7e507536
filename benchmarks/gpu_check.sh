#!/usr/bin/env bash
# The GPU check: what must work on a GPU node before a user's first GPU run, in one command.
#
#   benchmarks/gpu_check.sh OUT_DIR            # on a GPU machine; about 8 minutes on one GPU
#   benchmarks/gpu_check.sh OUT_DIR --dry-run  # on CPUs: every step, tiny, except what needs CUDA
#
# Steps (each logs to OUT_DIR/<n>-<name>.log; OUT_DIR/summary.txt gets one line per step; the
# script exits non-zero on the first failure):
#   1 env        nvidia-smi, torch / CUDA / NCCL / DeepSpeed versions, ds_report
#   2 demo       configs/digits-lt.yaml as shipped (num_workers: auto), macro-F1 printed
#   3 zero       ZeRO 0, 1, 2, 3 in bf16, and ZeRO-1 in fp16 once, 2 epochs each, on a small Transformer
#   4 offload    offload: cpu at ZeRO-2 and ZeRO-3 (DeepSpeed's own AdamW section in deepspeed.json, so it
#                steps with DeepSpeedCPUAdam); tests/unit/test_offload.py builds that optimizer in-process
#   5 mfu        GPT-2 medium's 24 layers (d=1024) with a 4k vocabulary (~306M parameters, bf16) through `raydeep train`:
#                tokens/s and MFU from its metrics.jsonl; then benchmarks/gpu_mfu.py (the bare step)
#   6 sweep      a 3-trial sweep (trials share the GPU only if gpus_per_worker says so)
#
# Python: $RAYDEEP_PYTHON if set, else .venv-gpu (made once, from pyproject.toml WITHOUT the CPU
# constraints file, so pip brings the CUDA build of torch; with --system-site-packages, so an
# image's own CUDA torch is used when it has one), else with --dry-run the CPU .venv.
set -euo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]}
DRY=${2:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/summary.txt"

if [[ -n "${RAYDEEP_PYTHON:-}" ]]; then PY=$RAYDEEP_PYTHON
elif [[ "$DRY" == "--dry-run" ]]; then PY=$ROOT/.venv/bin/python
else
  if [[ ! -x .venv-gpu/bin/python ]]; then
    python3 -m venv --system-site-packages .venv-gpu
    .venv-gpu/bin/pip install -q -e ".[test,lora]"
  fi
  PY=$ROOT/.venv-gpu/bin/python
fi
RD=("$PY" -m raydeep.cli)
export PYTHONUNBUFFERED=1

step() {  # step N NAME COMMAND...: run, log, one summary line; stop the check on failure
  local n=$1 name=$2; shift 2
  local log="$OUT/$n-$name.log" t0=$SECONDS
  if "$@" > "$log" 2>&1; then
    echo "ok    $n $name ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
  else
    echo "FAIL  $n $name ($((SECONDS - t0)) s): see $log" | tee -a "$OUT/summary.txt"
    tail -20 "$log"
    exit 1
  fi
}

if [[ "$DRY" == "--dry-run" ]]; then
  TINY="num_classes=4&seq_len=128&vocab_size=1024&imbalance_ratio=1&seed=0"
  EPOCHS=1; LM=(--set model.path="$OUT/lm-model-tiny")
  SMALL=(--set "data.train=datasets://synthetic-text/train?rows=256&$TINY" --set "data.val=datasets://synthetic-text/val?rows=256&$TINY")
else
  EPOCHS=2; SMALL=(); LM=(--set model.path="$OUT/lm-model")
fi

env_report() {
  if [[ "$DRY" != "--dry-run" ]]; then nvidia-smi; fi
  "$PY" - <<'EOF'
import deepspeed, ray, torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("nccl", torch.cuda.nccl.version(), "device", torch.cuda.get_device_name(), "capability",
          torch.cuda.get_device_capability())
print("deepspeed", deepspeed.__version__, "ray", ray.__version__, "transformers", transformers.__version__)
from raydeep.trainers.engine import cpu_adam_problem
print("cpu_adam (offload's optimizer op):", cpu_adam_problem() or "prebuilt or buildable here")
EOF
  if [[ "$DRY" != "--dry-run" ]]; then "$(dirname "$PY")/ds_report"; fi
}
step 1 env env_report

step 2 demo "${RD[@]}" train configs/digits-lt.yaml --run-dir "$OUT/runs/demo" --set run.epochs=$((EPOCHS * 5))
grep -h 'best val/macro_f1' "$OUT/2-demo.log" | tee -a "$OUT/summary.txt" || true

zero_stages() {
  local precisions=(bf16)
  [[ "$DRY" == "--dry-run" ]] && precisions=(fp32)  # CPU workers: fp16 is refused at load, bf16 is slow
  for p in "${precisions[@]}"; do
    for z in 0 1 2 3; do
      "${RD[@]}" train benchmarks/text-small.yaml --run-dir "$OUT/runs/zero$z-$p" --set run.epochs=$EPOCHS \
        --set deepspeed.zero_stage=$z --set deepspeed.precision=$p --set scaling.num_workers=auto "${SMALL[@]}"
    done
  done
  if [[ "$DRY" != "--dry-run" ]]; then
    "${RD[@]}" train benchmarks/text-small.yaml --run-dir "$OUT/runs/zero1-fp16" --set run.epochs=$EPOCHS \
      --set deepspeed.zero_stage=1 --set deepspeed.precision=fp16 --set scaling.num_workers=auto
  fi
}
step 3 zero zero_stages

offload() {
  # DeepSpeedCPUAdam from raydeep's config, the LR schedule driving it and a resume (the op runs on the
  # host whatever the accelerator, so this part is the same on CPUs; it builds cpu_adam once, ~1-3 min)
  "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_offload.py
  if [[ "$DRY" == "--dry-run" ]]; then
    # on CPU workers offload is refused at load, with one line: check that instead
    ! "${RD[@]}" train benchmarks/text-small.yaml --run-dir "$OUT/runs/offload-cpu" \
        --set scaling.use_gpu=false --set deepspeed.zero_stage=2 --set deepspeed.offload=cpu
    return
  fi
  for z in 2 3; do
    "${RD[@]}" train benchmarks/text-small.yaml --run-dir "$OUT/runs/offload$z" --set run.epochs=$EPOCHS \
      --set deepspeed.zero_stage=$z --set deepspeed.offload=cpu --set scaling.num_workers=auto
    "$PY" - "$OUT/runs/offload$z/deepspeed.json" <<'EOF'
import json, sys
ds = json.load(open(sys.argv[1]))
assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu", ds["zero_optimization"]
assert ds["optimizer"]["type"] in ("AdamW", "Adam"), ds.get("optimizer")  # DeepSpeed builds DeepSpeedCPUAdam
print("offload:", sys.argv[1], "optimizer", ds["optimizer"])
EOF
  done
}
step 4 offload offload

mfu() {
  # a decoder through raydeep's own loop: documents of words, prepared as LM blocks
  "$PY" - "$OUT" "$DRY" <<'EOF'
import json, random, sys
from pathlib import Path
from transformers import GPT2Config
out, dry = Path(sys.argv[1]), sys.argv[2] == "--dry-run"
words = [f"w{i}" for i in range(2000)]
rng = random.Random(0)
(out / "corpus").mkdir(exist_ok=True)
for d in range(40 if dry else 400):
    (out / "corpus" / f"doc{d}.txt").write_text(" ".join(rng.choice(words) for _ in range(2000)))
shape = dict(n_embd=64, n_layer=2, n_head=2) if dry else dict(n_embd=1024, n_layer=24, n_head=16)
cfg = GPT2Config(vocab_size=4096, n_positions=1024, bos_token_id=None, eos_token_id=None, **shape)
cfg.architectures = ["GPT2LMHeadModel"]
model_dir = out / ("lm-model-tiny" if dry else "lm-model")
model_dir.mkdir(exist_ok=True)
cfg.to_json_file(model_dir / "config.json")
EOF
  local block=1024; [[ "$DRY" == "--dry-run" ]] && block=128
  "${RD[@]}" data prepare --input "$OUT/corpus" --format text-dirs --task lm --block-size $block \
    --train-tokenizer bpe --vocab-size 4000 --output "$OUT/lm-data" --overwrite
  "${RD[@]}" train configs/causal-lm.yaml --run-dir "$OUT/runs/mfu" --set run.epochs=1 "${LM[@]}" \
    --set data.train="$OUT/lm-data/train" --set data.val="$OUT/lm-data/val" --set data.batch_size=8 \
    --set deepspeed.precision=auto --set scaling.num_workers=auto
  "$PY" - "$OUT/runs/mfu" "$DRY" <<'EOF'
import json, sys
from pathlib import Path
run, dry = Path(sys.argv[1]), sys.argv[2] == "--dry-run"
m = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
params = {"dry": 2 * 64 * 64 * 12 + 4096 * 64, "real": 24 * 12 * 1024 ** 2 + 4096 * 1024}["dry" if dry else "real"]
flops = 6 * params * m["train/tokens_per_s"]
print(f"raydeep train: {m['train/tokens_per_s']:,.0f} tokens/s, ~{params / 1e6:.0f}M matmul parameters, "
      f"MFU {flops / 989e12:.3f} of an H100/H200's 989 TFLOP/s bf16 (6N flops per token; attention not counted)")
EOF
  if [[ "$DRY" == "--dry-run" ]]; then "$PY" benchmarks/gpu_mfu.py --device cpu --tiny
  else "$PY" benchmarks/gpu_mfu.py; fi
}
step 5 mfu mfu
grep -h 'raydeep train: .* tokens/s' "$OUT/5-mfu.log" | tee -a "$OUT/summary.txt" || true

sweep() {
  "${RD[@]}" tune configs/sweep-digits-lt.yaml --run-dir "$OUT/runs/sweep" --set tune.search.num_samples=3 \
    --set run.epochs=$((EPOCHS * 2)) --set "tune.scheduler={name: none}"
}
step 6 sweep sweep
echo "gpu_check: all steps passed; logs and runs in $OUT" | tee -a "$OUT/summary.txt"
