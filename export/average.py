"""Two exported classifiers as one ONNX graph that averages their served probabilities.

    python -m export.average A.onnx B.onnx --out AB.onnx
    python -m export.average A.onnx B.onnx --name NAME [--repo model_repository]

Both inputs must be classifiers of this repository's contract (uint8 NHWC `classifier_input`,
calibrated probabilities `classifier_output`, the same class order). The result has that contract
too, so `python -m training evaluate AB.onnx --shift` scores the two-model ensemble exactly as the
served one would average them (the mean of the two calibrated outputs), without a server. With
`--name` the mean is calibrated again on the validation split (a temperature, class offsets only
with `--class-offsets`, the "not sure" threshold: export/calibrate.py, export/threshold.py), the
test split and the non-waste pictures are scored, and it is published like any exported classifier (classifier
config, both ensembles, `export.json` naming both members and their sha256). One graph rather
than a Triton ensemble of two classifier models: one batcher, one runtime call per batch and one
version to pin, for the same mean.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper

from contract import CLASSIFIER_INPUT as INPUT
from contract import EXPORT_RECORD
from contract import CLASSIFIER_OUTPUT as OUTPUT
from export.__main__ import add_calibration_arguments

log = logging.getLogger(__name__)


def averaged(first: onnx.ModelProto, second: onnx.ModelProto) -> onnx.ModelProto:
    """One model whose output is (first(x) + second(x)) / 2 for the shared input x."""
    for name, model in (("first", first), ("second", second)):
        if [i.name for i in model.graph.input] != [INPUT] or [o.name for o in model.graph.output] != [OUTPUT]:
            raise ValueError(f"{name} model is not a classifier of this repository ({INPUT} -> {OUTPUT})")
    a = compose.add_prefix(first, "a_")
    b = compose.add_prefix(second, "b_")
    # One graph: both bodies read the same input; their outputs meet in a mean node.
    nodes = list(a.graph.node) + list(b.graph.node) + [
        helper.make_node("Mean", ["a_" + OUTPUT, "b_" + OUTPUT], [OUTPUT], name="average_probabilities")]
    graph = helper.make_graph(nodes, "averaged_classifiers", [first.graph.input[0]], [first.graph.output[0]],
                              initializer=list(a.graph.initializer) + list(b.graph.initializer),
                              value_info=list(a.graph.value_info) + list(b.graph.value_info))
    for node in graph.node:
        node.input[:] = [INPUT if name in ("a_" + INPUT, "b_" + INPUT) else name for name in node.input]
    opsets = {o.domain: o.version for o in (*first.opset_import, *second.opset_import)}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = max(first.ir_version, second.ir_version)
    onnx.checker.check_model(model)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path, help="a served classifier's model.onnx")
    parser.add_argument("second", type=Path)
    parser.add_argument("--out", type=Path, help="only write the averaged ONNX here (no calibration, no publishing)")
    parser.add_argument("--name", help="publish as this model (ensembles NAME and NAME_tta) in --repo")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--work", type=Path, help="calibrated graph and evaluation files (default: runs/NAME)")
    parser.add_argument("--manifest", default="training/splits/garbage12_seed42.csv")
    parser.add_argument("--data-dir", default="../shared/data/garbage12")
    add_calibration_arguments(parser)
    args = parser.parse_args(argv)
    if bool(args.out) == bool(args.name):
        parser.error("give exactly one of --out and --name")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    model = averaged(onnx.load(args.first), onnx.load(args.second))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, args.out)
        log.info("wrote %s: mean of %s and %s", args.out, args.first, args.second)
        return 0

    from export.__main__ import export_variant, publish
    from training.dataset import load_split, resolve_classes

    work = args.work or Path("runs") / args.name
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "model_averaged.onnx"
    onnx.save(model, raw)
    classes = resolve_classes("", args.manifest)
    splits = load_split(args.manifest, args.data_dir, 0, classes)
    members = [{"model": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                **{k: v for k, v in json.loads((path.parent / EXPORT_RECORD).read_text()).items()
                   if k in ("source_run", "version", "name")}}
               for path in (args.first, args.second) if (path.parent / EXPORT_RECORD).is_file()]
    base = {"averaged_members": members, "backbone": "mean of two classifiers in one graph",
            "params": sum(int(np.prod(t.dims)) for t in model.graph.initializer)}
    # The members were calibrated one by one; their mean is calibrated again, on validation only.
    args.no_calibrate = False
    served, record = export_variant(raw, work, "pair", splits, classes, args, base)
    target = publish(served, args.repo, args.name, record, classes)
    log.info("published %s", target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
