#!/usr/bin/env bash
# Regenerate every figure and table of REPRODUCTION.md:  bash scripts/reproduce.sh
# Each step is skipped when its outputs exist (FORCE=1 reruns them all).  Times: 2 CPU cores, nothing else running.
#   0  shipped model (experiment=default_model, ~55 min; skipped when zf/weights/zfnet_imagenette.pt exists)
#   1  Fig. 4 snapshots copied to zf/weights/evolution                                            (seconds)
#   2  the main job, Fig. 2: scripts/run.py -m layer=1,2,3,4,5 (one cached mining pass)            (~1.5 min)
#   3  the experiments on the shipped model (scripts/run.py experiment=...) -> outputs/reproduce/<name>, the sanity
#      check, and layers 1-5 with the three methods for zf stats                                    (~12 min)
#   4  Fig. 6 reduced-budget runs: fig6_zf_small, fig6_noclip, fig6_alexnet_conv1, and fig6_paper_scale[_noclip]
#      (the paper's input scale and SGD)                                                            (~18 min)
#   5  Table 3 sweep: 9 ablation jobs, 2 at a time                                                 (~10 min)
#   6  filters (Fig. 6) and the Table 3 collector, which read the runs of 4 and 5
#   7  the real ImageNet VGG-16 trunk: Fig. 2 (conv2_2-conv5_3, all val images), Table 1, Fig. 5, the sanity
#      check on conv4_3                                                                             (~50 min)
#   8  figures copied (downscaled) to docs/figures/
set -euo pipefail
cd "$(dirname "$0")/.."
export PROJECT_ROOT="$PWD"
PY=${PY:-.venv/bin/python}
OUT=outputs/reproduce
FORCE=${FORCE:-0}
mkdir -p "$OUT"

say() { printf '\n=== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
done_() { [ "$FORCE" != 1 ] && [ -e "$1" ]; }

# 0. the shipped model
if done_ zf/weights/zfnet_imagenette.pt; then say "shipped model: exists, skipped"
else say "shipped model"; $PY scripts/train.py experiment=default_model hydra.run.dir=outputs/train/default_model; fi

# 1. Fig. 4 snapshots (the shipped run's features_epochNNN.pt)
if [ "$FORCE" != 1 ] && ls zf/weights/evolution/features_epoch*.pt >/dev/null 2>&1; then say "snapshots: exist, skipped"
else
  say "snapshots -> zf/weights/evolution"
  mkdir -p zf/weights/evolution
  cp outputs/train/default_model/checkpoints/features_epoch*.pt zf/weights/evolution/
fi

# 2. the main job, Fig. 2 (one mining pass, cached, serves all five layers)
if done_ "$OUT/topk/.done"; then say "main job: exists, skipped"
else
  say "main job: layers 1-5"
  $PY scripts/run.py -m layer=1,2,3,4,5 hydra.sweep.dir="$OUT/topk" && touch "$OUT/topk/.done"
fi

# 3. experiments; a step's marker is written only when it succeeds
run_step() {  # name, then scripts/run.py arguments
  local name=$1; shift
  if done_ "$OUT/$name/.done"; then say "$name: exists, skipped"; return; fi
  say "$name"
  $PY scripts/run.py "$@" hydra.run.dir="$OUT/$name" && touch "$OUT/$name/.done"
}

run_step evolution experiment=evolution
run_step probe experiment=probe
run_step methods experiment=methods
run_step occlusion experiment=occlusion
run_step invariance experiment=invariance
run_step correspondence experiment=correspondence
run_step sanity experiment=sanity layer=4
# how readable the projections of layers 1-5 are, for the three methods (zf stats: image dependence, edge alignment)
run_step zf_methods "layer=[1,2,3,4,5]" units=overview compare_methods=true
$PY scripts/projection_stats.py "$OUT/zf_methods" | tee "$OUT/zf_methods/projection_stats.md"

# 4. Fig. 6 reduced-budget training runs (fixed run dirs: outputs/train/<name>)
for e in fig6_zf_small fig6_noclip fig6_alexnet_conv1 fig6_paper_scale fig6_paper_scale_noclip; do
  if done_ "outputs/train/$e/history.json"; then say "$e: exists, skipped"
  else say "$e"; $PY scripts/train.py experiment=$e; fi
done

# 5. Table 3 sweep (outputs/ablation/sweep/<variant>; unfinished jobs resume from their last.pt)
n=$(find outputs/ablation/sweep -name history.json 2>/dev/null | wc -l || true)
if [ "$FORCE" != 1 ] && [ "$n" -ge 9 ]; then say "ablation sweep: 9 jobs done, skipped"
else say "ablation sweep ($n/9 done)"; $PY scripts/train.py -m experiment=ablation; fi

# 6. the experiments that read the training runs above
run_step ablation_table experiment=ablation_table
run_step filters experiment=filters

# 7. the real ImageNet VGG-16 trunk (Fig. 2, Table 1, Fig. 5), when its weights are there (ZF_VGG16 overrides)
VGG=${ZF_VGG16:-../shared/models/vgg16_imagenet_features.pth}
if [ -f "$VGG" ]; then
  run_step vgg16_fig2 model=vgg16 model.weights="$VGG" "layer=[conv2_2,conv3_3,conv4_3,conv5_3]" "mine_layers=[]" \
    units=overview compare_methods=true batch_size=32
  run_step vgg16_correspondence experiment=correspondence model=vgg16 model.weights="$VGG" \
    "correspondence.layers=[[4,output],[5,output]]"
  run_step vgg16_invariance experiment=invariance model=vgg16 model.weights="$VGG" "invariance.layers=[[1,output],[5,output]]"
  run_step vgg16_sanity experiment=sanity model=vgg16 model.weights="$VGG" layer=conv4_3 "mine_layers=[]" data.limit=200 \
    "sanity.modes=[cascade]" sanity.n_units=4 batch_size=32
  $PY scripts/projection_stats.py "$OUT/vgg16_fig2" | tee "$OUT/vgg16_fig2/projection_stats.md"
  $PY scripts/methods_figure.py "$OUT/vgg16_fig2"   # -> figures/methods_overview.png, copied to docs below
else say "VGG-16 trunk: $VGG not found, skipped"; fi

# 8. figures for REPRODUCTION.md
say "docs/figures"
$PY scripts/docs_figures.py
say "done: results in $OUT, figures in docs/figures (REPRODUCTION.md quotes them)"
