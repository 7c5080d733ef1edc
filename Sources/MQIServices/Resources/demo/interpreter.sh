#!/bin/sh
# =============================================================================
#  STAND-IN for the real MOQUI log interpreter -- written by `mqi demo`.
#  It interprets nothing: it walks the case layout (beam folders holding
#  PlanInfo.txt and NN_*.ptn layer logs), prints the lines the real
#  interpreter prints, writes small CSV files into <case-dir>/interpreted/
#  and exits 0 after about half a second.
#  Fails with exit status 2 and an "ERROR:" line when the case has no beam
#  folder with a PlanInfo.txt.
#  Usage: interpreter.sh --case-dir DIR [--gpu N]
# =============================================================================
set -u

# printf, not echo: dash's echo would mangle backslashes in case names and paths.
say() { printf '%s\n' "$*"; }

usage() {
    say "ERROR: $1" >&2
    say "usage: interpreter.sh --case-dir DIR [--gpu N]" >&2
    exit 2
}

case_dir=
gpu=0
while [ $# -gt 0 ]; do
    case $1 in
        --case-dir) [ $# -ge 2 ] || usage "--case-dir needs a value"; case_dir=$2; shift 2 ;;
        --case-dir=*) case_dir=${1#--case-dir=}; shift ;;
        --gpu) [ $# -ge 2 ] || usage "--gpu needs a value"; gpu=$2; shift 2 ;;
        --gpu=*) gpu=${1#--gpu=}; shift ;;
        *) usage "unknown argument: $1" ;;
    esac
done
[ -n "$case_dir" ] || usage "--case-dir is required"
[ -d "$case_dir" ] || { say "ERROR: case directory not found: $case_dir" >&2; exit 2; }

say "MQI log interpreter (demo stand-in) 1.0"
say "Case directory: $case_dir"
say "Using GPU $gpu${CUDA_VISIBLE_DEVICES:+ (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)}"
for plan in "$case_dir"/RP*.dcm; do
    [ -f "$plan" ] && say "Reading RT plan ${plan##*/}"
done
sleep 0.2

beams=0
for beam_dir in "$case_dir"/*/; do
    [ -f "${beam_dir}PlanInfo.txt" ] && beams=$((beams + 1))
done
if [ "$beams" -eq 0 ]; then
    say "ERROR: no PlanInfo.txt found in any beam folder of $case_dir" >&2
    exit 2
fi
say "Found $beams beam folder(s)"

out="$case_dir/interpreted"
mkdir -p "$out" || { say "ERROR: cannot create $out" >&2; exit 2; }
summary="$out/beams.csv"
say "beam_number,field_number,beam_name,layers,spots,source_folder" > "$summary"
total_layers=0
for beam_dir in "$case_dir"/*/; do
    info="${beam_dir}PlanInfo.txt"
    [ -f "$info" ] || continue
    folder=${beam_dir%/}
    folder=${folder##*/}
    beam=$(sed -n 's/^DICOM_BEAM_NUMBER,//p' "$info" | head -n 1 | tr -cd '0-9')
    [ -n "$beam" ] || { say "ERROR: $info has no DICOM_BEAM_NUMBER" >&2; exit 2; }
    field=$(sed -n 's/^TCSC_FIELD_NUMBER,//p' "$info" | head -n 1 | tr -d '\r,')
    name=$(sed -n 's/^BEAM_NAME,//p' "$info" | head -n 1 | tr -d '\r,')
    say "Reading PlanInfo.txt for beam $beam ($name, TCSC field $field, folder $folder)"
    csv="$out/beam${beam}_spots.csv"
    say "layer,time_us,x_mm,y_mm,mu,energy_mev" > "$csv"
    layers=0
    for ptn in "${beam_dir}"*.ptn; do
        [ -f "$ptn" ] || continue
        layers=$((layers + 1))
        grep -v '^#' "$ptn" | sed "s/^/$layers,/" >> "$csv"
    done
    spots=$(($(wc -l < "$csv") - 1))
    say "Parsed $layers layers ($spots spots)"
    say "Writing CSV $csv"
    say "$beam,$field,$name,$layers,$spots,$folder" >> "$summary"
    total_layers=$((total_layers + layers))
    sleep 0.1
done
say "Writing CSV $summary"
sleep 0.1
say "Interpretation finished: $beams beam(s), $total_layers layers"
exit 0
