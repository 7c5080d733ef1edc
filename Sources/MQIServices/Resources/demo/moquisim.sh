#!/bin/sh
# =============================================================================
#  STAND-IN for MOQUI, the GPU Monte Carlo dose engine -- written by `mqi demo`.
#  It simulates nothing: it prints MOQUI-like progress (GPUID, particle
#  upload, batch generation, "Total execution time:"), takes 1-3 s, and
#  writes one stand-in OUTDIR/RTDOSE_beam<n>.dcm per beam folder plus
#  OUTDIR/moqui_tps.in and OUTDIR/moqui_summary.txt.
#  Usage: moquisim.sh --case-dir DIR --out OUTDIR [--gpu N]
#  Environment, for tests:
#    MQI_DEMO_LEDGER=FILE     append "<case_dir> <gpu> <start_ns> <end_ns>" per run
#    MQI_DEMO_FAIL_CASE=NAME  fail with "FATAL ERROR" (exit 3) for the case dir NAME
#    MQI_DEMO_SIM_MS=N        simulate for about N ms per run (default 1500 per case, 750 per beam)
# =============================================================================
set -u

# printf, not echo: dash's echo would mangle backslashes in case names and paths.
say() { printf '%s\n' "$*"; }

usage() {
    say "ERROR: $1" >&2
    say "usage: moquisim.sh --case-dir DIR --out OUTDIR [--gpu N] [--beam N]" >&2
    exit 2
}

case_dir=
out=
gpu=0
only_beam=
while [ $# -gt 0 ]; do
    case $1 in
        --case-dir) [ $# -ge 2 ] || usage "--case-dir needs a value"; case_dir=$2; shift 2 ;;
        --case-dir=*) case_dir=${1#--case-dir=}; shift ;;
        --out) [ $# -ge 2 ] || usage "--out needs a value"; out=$2; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        --gpu) [ $# -ge 2 ] || usage "--gpu needs a value"; gpu=$2; shift 2 ;;
        --gpu=*) gpu=${1#--gpu=}; shift ;;
        --beam) [ $# -ge 2 ] || usage "--beam needs a value"; only_beam=$2; shift 2 ;;
        --beam=*) only_beam=${1#--beam=}; shift ;;
        *) usage "unknown argument: $1" ;;
    esac
done
[ -n "$case_dir" ] || usage "--case-dir is required"
[ -n "$out" ] || usage "--out is required"
case $gpu in
    ''|*[!0-9]*) usage "--gpu must be a GPU number, not '$gpu'" ;;
esac
case $only_beam in
    *[!0-9]*) usage "--beam must be a beam number, not '$only_beam'" ;;
esac
[ -d "$case_dir" ] || { say "ERROR: case directory not found: $case_dir" >&2; exit 2; }

start_ns=$(date +%s%N)
case_name=${case_dir%/}
case_name=${case_name##*/}

# One ledger line per run (tests count runs per case and how many overlapped).
record_run() {
    if [ -n "${MQI_DEMO_LEDGER:-}" ]; then
        printf '%s %s %s %s\n' "$case_dir" "$gpu" "$start_ns" "$(date +%s%N)" >> "$MQI_DEMO_LEDGER"
    fi
}

beam_numbers=
beams=0
for beam_dir in "$case_dir"/*/; do
    info="${beam_dir}PlanInfo.txt"
    [ -f "$info" ] || continue
    beam=$(sed -n 's/^DICOM_BEAM_NUMBER,//p' "$info" | head -n 1 | tr -cd '0-9')
    [ -n "$beam" ] || beam=$((beams + 1))
    [ -z "$only_beam" ] || [ "$beam" = "$only_beam" ] || continue
    beams=$((beams + 1))
    beam_numbers="${beam_numbers:+$beam_numbers,}$beam"
done
if [ "$beams" -eq 0 ]; then
    say "ERROR: no beam folder with PlanInfo.txt${only_beam:+ for beam $only_beam} in $case_dir" >&2
    exit 2
fi
mkdir -p "$out" || { say "ERROR: cannot create output directory $out" >&2; exit 2; }

particles=100000
batches=10
# The communicator renders moqui_tps.in into the case dir after reserving the GPU (the
# step's input_files). Like MOQUI, refuse to run on a GPU we were not given.
# (With --beam: one run per beam, its input file moqui_tps_<beam>.in.)
tps="$case_dir/moqui_tps${only_beam:+_$only_beam}.in"
if [ -f "$tps" ]; then
    tps_gpu=$(sed -n 's/^GPUID *//p' "$tps" | head -n 1 | tr -d '\r ')
    given=${CUDA_VISIBLE_DEVICES:-$gpu}
    if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        # Under Slurm a job addresses the GPUs it was given by ordinal (0..N-1), as CUDA does.
        given=$(echo "$CUDA_VISIBLE_DEVICES" | awk -F, '{ for (i = 0; i < NF; i++) printf "%s%d", (i ? "," : ""), i }')
    fi
    case ",$given," in
        *",$tps_gpu,"*) ;;
        *) say "FATAL ERROR: moqui_tps.in asks for GPUID '$tps_gpu', but this run was given GPU(s) $given" >&2
           record_run
           exit 4 ;;
    esac
    say "Reading input parameters from $tps (GPUID $tps_gpu)"
fi
cat > "$out/moqui_tps${only_beam:+_$only_beam}.in" <<EOF
GPUID $gpu
RandomSeed -1932780356
UseAbsolutePath true
Verbosity 0
ParentDir $case_dir
DicomDir $case_dir
logFilePath $case_dir/interpreted
OutputDir $out
OutputFormat dcm
SimulationType perBeam
BeamNumbers $beam_numbers
ParticlesPerHistory 1
TotalParticles $particles
EOF

say "MOQUI Monte Carlo dose engine (demo STAND-IN: no physics is simulated)"
say "GPUID $gpu"
say "ParentDir $case_dir"
say "OutputDir $out"
say "BeamNumbers $beam_numbers"
if [ -d "$case_dir/interpreted" ]; then
    say "Reading machine log data from $case_dir/interpreted"
else
    say "WARNING: no interpreted log data in $case_dir/interpreted; using the plan only"
fi
sleep 0.1

# About 1.5 s of "simulation" per case, whatever the number of beams; 0.75 s per beam run.
total_ms=1500
[ -z "$only_beam" ] || total_ms=750
total_ms=${MQI_DEMO_SIM_MS:-$total_ms}
pause_ms=$((total_ms / (beams * batches)))
[ "$pause_ms" -ge 1 ] || pause_ms=1
pause=$(printf '%d.%03d' $((pause_ms / 1000)) $((pause_ms % 1000)))
done_batches=0

for beam_dir in "$case_dir"/*/; do
    info="${beam_dir}PlanInfo.txt"
    [ -f "$info" ] || continue
    beam=$(sed -n 's/^DICOM_BEAM_NUMBER,//p' "$info" | head -n 1 | tr -cd '0-9')
    [ -n "$beam" ] || beam=1
    [ -z "$only_beam" ] || [ "$beam" = "$only_beam" ] || continue
    name=$(sed -n 's/^BEAM_NAME,//p' "$info" | head -n 1 | tr -d '\r')
    gantry=$(sed -n 's/^GANTRY_ANGLE,//p' "$info" | head -n 1 | tr -d '\r')
    say "Beam $beam ($name, gantry $gantry deg)"
    say "Uploading particles with batch.. : Particle count --> $particles with $batches batches"
    if [ "${MQI_DEMO_FAIL_CASE:-}" = "$case_name" ]; then
        say "FATAL ERROR: CUDA error: an illegal memory access was encountered (beam $beam, GPU $gpu) [demo fault injected by MQI_DEMO_FAIL_CASE]" >&2
        record_run
        exit 3
    fi
    # Batches are numbered across all beams of the case (a simplification of MOQUI,
    # which counts per beam), so progress_pattern gives the case's progress.
    k=1
    while [ "$k" -le "$batches" ]; do
        say "Generating particles for ($((done_batches + k)) of $((batches * beams)) batches)"
        sleep "$pause"
        k=$((k + 1))
    done
    done_batches=$((done_batches + batches))
    dose="$out/RTDOSE_beam$beam.dcm"
    {
        dd if=/dev/zero bs=128 count=1 2>/dev/null
        printf 'DICM'
        printf 'MQI demo stand-in RTDOSE: beam %s, GPU %s, %s particles, not a real dose\n' "$beam" "$gpu" "$particles"
    } > "$dose" || { say "ERROR: cannot write $dose" >&2; exit 2; }
    say "Writing dose to $dose"
done

end_ns=$(date +%s%N)
elapsed_ms=$(((end_ns - start_ns) / 1000000))
elapsed=$(printf '%d.%03d' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)))
{
    say "MOQUI demo stand-in summary"
    say "case_dir $case_dir"
    say "gpu $gpu"
    say "beams $beam_numbers"
    say "particles_per_beam $particles"
    say "batches_per_beam $batches"
    say "total_execution_time_s $elapsed"
} > "$out/moqui_summary${only_beam:+_beam$only_beam}.txt"
record_run
say "Total execution time: $elapsed s"
exit 0
