#!/bin/sh
# STAND-IN for nvidia-smi, written by `mqi demo`: prints made-up telemetry for the demo's
# GPUs in the format of `nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,
# memory.total,temperature.gpu --format=csv,noheader,nounits`. No GPU is involved.
GPUS="0 1"
for id in $GPUS; do
    echo "$id, GPU-00000000-0000-0000-0000-00000000000$((id % 10)), DEMO STAND-IN GPU (not real), $(( $(od -An -N1 -tu1 /dev/urandom) % 40 )), $(( 100 + $(od -An -N1 -tu1 /dev/urandom) )), 81559, $(( 30 + $(od -An -N1 -tu1 /dev/urandom) % 15 ))"
done
