#!/usr/bin/env bash
# The wheels an offline CUDA machine (Python 3.12, torch 2.11, transformers 5.17, peft and accelerate preinstalled)
# needs for the Unsloth backend and for tmplcheck itself, into DIR, trimmed small. Kept here (not only in the shared
# copy this started from) so the repository alone can prepare a GPU run; it adds what tmplcheck's own dependencies
# need there: llama-cpp-python's diskcache and typing-extensions, jsonschema and its helpers, rich, click, gguf.
# usage: gpu-wheels.sh DIR
set -euo pipefail
dir=${1:?usage: gpu-wheels.sh DIR}
mkdir -p "$dir"
PY=${PYTHON:-python3}
plat=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# Unsloth 2026.10.9 and what it imports on the GPU path. It declares transformers <= 5.17 and trl <= 1.15: by default
# the machine's transformers (5.17) and trl 1.15.0; GPU_TRL=1.16.0 GPU_TRANSFORMERS=5.24.0 carry the versions the CPU
# environment resolves instead (+13 MB, with huggingface_hub GPU_HF_HUB, default 2.4.0; not yet run on a GPU).
"$PY" -m pip download -q --disable-pip-version-check "${plat[@]}" -d "$dir" \
  unsloth==2026.10.9 unsloth-zoo==2026.10.9 "trl==${GPU_TRL:-1.15.0}" 'datasets==4.8.5' 'dill<0.4.2' \
  'multiprocess<0.70.20' tyro docstring-parser typeguard msgspec cut_cross_entropy bitsandbytes==0.50.2 \
  ${GPU_TRANSFORMERS:+"transformers==$GPU_TRANSFORMERS" "huggingface_hub==${GPU_HF_HUB:-2.4.0}"}
# tmplcheck's own dependencies that such a machine may lack (never numpy, torch or transformers: those are its own)
"$PY" -m pip download -q --disable-pip-version-check "${plat[@]}" -d "$dir" \
  diskcache 'typing-extensions>=4.5' 'gguf>=0.10' pyyaml 'jsonschema>=4.18' 'jsonschema-specifications>=2023.03.6' \
  'referencing>=0.28.4' 'rpds-py>=0.25' 'attrs>=22.2' 'rich>=13' 'markdown-it-py>=2.2' mdurl 'pygments>=2.13' \
  'click>=8.1' pytest pluggy iniconfig
# Unsloth's wheel carries a web studio (~80 MB unpacked) that training never imports; bitsandbytes carries one
# CUDA library per toolkit: the machine has CUDA 13, so keep those.
zip -q -d "$dir"/unsloth-2026.10.9-*.whl 'studio/*' || true
zip -q -d "$dir"/bitsandbytes-0.50.2-*.whl 'bitsandbytes/libbitsandbytes_cuda1[12]*.so' 'bitsandbytes/libbitsandbytes_cpu.so' || true
du -sh "$dir"
