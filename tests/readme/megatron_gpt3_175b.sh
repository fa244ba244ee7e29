#!/usr/bin/env bash
# A Megatron-LM launch of GPT-3 175B as Narayanan et al. (2021) and Korthikanti et al. (2022)
# trained it on 1024 A100s (128 nodes of 8): tensor parallel 8 inside a node, 16 pipeline stages
# of 2 virtual stages each (interleaved 1F1B), data parallel 8 with the distributed optimizer,
# sequence parallelism and selective recompute. README.md's worked example imports it:
#   build/loom import megatron tests/readme/megatron_gpt3_175b.sh --cluster dgx-a100 --gpus 1024
# loom reads no tokenizer files, so the vocabulary is given as --vocab-size (GPT-2's BPE).
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1
torchrun --nproc_per_node 8 --nnodes 128 --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port 6000 \
  pretrain_gpt.py \
  --num-layers 96 \
  --hidden-size 12288 \
  --num-attention-heads 96 \
  --seq-length 2048 \
  --max-position-embeddings 2048 \
  --vocab-size 50257 \
  --micro-batch-size 1 \
  --global-batch-size 1536 \
  --tensor-model-parallel-size 8 \
  --pipeline-model-parallel-size 16 \
  --num-layers-per-virtual-pipeline-stage 3 \
  --sequence-parallel \
  --use-distributed-optimizer \
  --recompute-granularity selective \
  --bf16 \
  --lr 6.0e-5 \
  --min-lr 6.0e-6 \
  --lr-decay-style cosine \
  --weight-decay 0.1 \
  --clip-grad 1.0 \
  --train-iters 500000 \
  --data-path my-gpt3_00_text_document \
  --save-interval 1000
