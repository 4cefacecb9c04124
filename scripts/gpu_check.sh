#!/usr/bin/env bash
# The CUDA check: what a CPU-only machine cannot test. On a CUDA machine, in under 8 minutes:
#   1. the pytest tests marked `cuda` (AMP bf16/fp16 training, the out-of-memory split);
#   2. a 2-rank torchrun (nccl) run of `asr train` on a small generated corpus, stopped and resumed
#      with --resume (needs 2 GPUs; with one it says so and skips);
#   3. training throughput (audio seconds per second), fp32 and bf16, for the default ModelConfig and
#      the LibriSpeech configuration (scripts/benchmark.py train --device cuda).
# Prints one summary table. Without CUDA it says that no GPU is present and exits 0.
#
# Usage: scripts/gpu_check.sh [--python PATH]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ "${1:-}" = "--python" ] && PY=$2
[ -x "$PY" ] || PY=python3

gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
if [ "$gpus" = "0" ]; then
  echo "gpu_check: no GPU present (torch.cuda.is_available() is False): nothing to check"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -a rows
row() { rows+=("| $1 | $2 | $3 |"); }
t0=$SECONDS

# 1. tests marked cuda
if timeout 240 "$PY" -m pytest -q -m cuda tests/test_cuda.py > "$work/pytest.log" 2>&1; then
  row "pytest -m cuda" ok "$(tail -n 1 "$work/pytest.log")"
else
  row "pytest -m cuda" FAIL "$(tail -n 1 "$work/pytest.log") (log: $work/pytest.log)"
  cp "$work/pytest.log" /tmp/gpu_check_pytest.log
fi

# 2. 2-rank nccl training with --resume
if [ "$gpus" -ge 2 ]; then
  "$PY" - "$work/data" <<'PYEOF' > "$work/data.log" 2>&1
import json, sys
from pathlib import Path
import numpy as np
import soundfile as sf
from asr.tokenizer import Tokenizer
root = Path(sys.argv[1]); (root / "wav").mkdir(parents=True)
rng = np.random.default_rng(0)
words = "one two three four five six seven eight nine zero".split()
texts, lines = [], []
for i in range(64):
    text = " ".join(rng.choice(words, size=rng.integers(1, 4))).upper()
    audio = (0.1 * rng.standard_normal(int(16000 * rng.uniform(0.8, 2.0)))).astype("float32")
    path = root / "wav" / f"u{i:03d}.wav"
    sf.write(path, audio, 16000)
    texts.append(text)
    lines.append(json.dumps({"id": f"u{i:03d}", "audio": str(path), "duration": len(audio) / 16000, "text": text}))
(root / "train.jsonl").write_text("\n".join(lines) + "\n")
Tokenizer.train(texts, root / "tok", vocab_size=20, model_type="unigram")
PYEOF
  common=(--config recipes/mini/conf/quick.yaml --train-manifest "$work/data/train.jsonl"
          --valid-manifest "$work/data/train.jsonl" --tokenizer "$work/data/tok.model" --exp-dir "$work/ddp"
          -o train.max_duration=8 -o train.dev_wer_utts=4 -o train.checkpoint_every_steps=5)
  launch=("$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m asr train)
  if timeout 120 "${launch[@]}" "${common[@]}" -o train.max_steps=10 > "$work/ddp1.log" 2>&1 \
     && timeout 120 "${launch[@]}" "${common[@]}" -o train.max_steps=20 --resume > "$work/ddp2.log" 2>&1; then
    row "torchrun 2 ranks nccl + --resume" ok "$(grep -o 'training done.*' "$work/ddp2.log" | tail -n 1)"
  else
    row "torchrun 2 ranks nccl + --resume" FAIL "see /tmp/gpu_check_ddp.log"
    cat "$work"/data.log "$work"/ddp*.log > /tmp/gpu_check_ddp.log 2>/dev/null
  fi
else
  row "torchrun 2 ranks nccl + --resume" skipped "needs 2 GPUs, found $gpus (NCCL cannot put 2 ranks on one GPU)"
fi

# 3. throughput
if timeout 240 "$PY" scripts/benchmark.py train --device cuda --processes 1 --steps 4 --ls-max-duration 60 \
     --json "$work/bench.json" > "$work/bench.log" 2>&1; then
  while IFS= read -r line; do row "throughput" ok "$line"; done < <("$PY" - "$work/bench.json" <<'PYEOF'
import json, sys
for r in json.load(open(sys.argv[1]))["train"]["rows"]:
    print(f"{r['config']} {r['dtype']}: {r['audio_seconds_per_second']:.0f} s audio/s, "
          f"{100 * r['fraction_of_peak']:.1f}% of {r['dtype']} mm peak, x{r.get('step_speedup_vs_fp32', 1):.2f} vs fp32")
PYEOF
)
else
  row "throughput" FAIL "see /tmp/gpu_check_bench.log"
  cp "$work/bench.log" /tmp/gpu_check_bench.log
fi

echo
echo "gpu_check: $gpus GPU(s): $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))'), $((SECONDS - t0)) s"
echo "| check | result | detail |"
echo "|---|---|---|"
printf '%s\n' "${rows[@]}"
printf '%s\n' "${rows[@]}" | grep -q "| FAIL |" && exit 1
exit 0
