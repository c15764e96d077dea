"""The benchmark's rows, declared as data: what each row measures, on which repository, how.

`benchmarks/run.py` executes this plan and `benchmarks/report.py` turns the results into
BENCHMARKS.md. Adding a row is one entry here; a repository variant is a set of
`export.model_repository.write_repository` options, never an edit of a committed config.
Comparisons against code of an earlier commit are not part of the plan: their results stay in
BENCHMARKS.md's git history.
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: Row 1 / 6a sweep: images per `session.run` and ORT intra-op threads. 8 is the classifier's
#: preferred batch in the server, so the bound (rows B, Bi: the sweep's best single-thread point)
#: is also measured at the batch the server forms.
BATCHES = (1, 4, 8, 16, 32)
THREADS = (1, 2)
#: Row 3 sweep: requests the bulk scorer keeps in flight.
IN_FLIGHT = (1, 4, 8, 16, 32)
#: `--quick` (a smoke run): fewer sweep points.
QUICK_BATCHES = (1, 16)
QUICK_IN_FLIGHT = (1, 16)


@dataclass(frozen=True)
class Variant:
    """A repository the Triton rows run on.

    Parameters
    ----------
    key : str
        Name the rows refer to.
    what : str
        What differs from the committed configs.
    model : {"fp32", "int8", "pair", "pair_int8"}
        Which classifier file it serves ("pair", "pair_int8": the accurate two-network
        `effnet_lite0_pair` and its INT8 twin; a variant and its rows are left out when the
        repository has no such model).
    options : dict
        Keyword options of `export.model_repository.write_repository`.
    servers : int
        Servers started on it (scale-out rows need two).
    cache_bytes : int
        The servers' response cache (`--cache-config local,size=N`); 0: none, so repeated photos
        are recomputed, as every throughput row needs.
    """

    key: str
    what: str
    model: str = "fp32"
    options: dict = field(default_factory=dict)
    servers: int = 1
    cache_bytes: int = 0


VARIANTS = (
    Variant("on", "the committed configs", servers=2),
    Variant("off", "dynamic batching off in every model", options={"common": {"batching": False}}),
    Variant("int8", "the committed configs, INT8 classifier", model="int8"),
    Variant("delay5", "batcher delay 5 ms in the classifier, 1 ms in preprocess",
            options={"classifier": {"max_queue_delay_us": 5000}, "preprocess": {"max_queue_delay_us": 1000}}),
    Variant("delay05", "batcher delay 0.5 ms in the classifier, 1 ms in preprocess",
            options={"classifier": {"max_queue_delay_us": 500}, "preprocess": {"max_queue_delay_us": 1000}}),
    Variant("one2", "1 classifier instance with 2 ORT threads",
            options={"classifier": {"instances": 1, "threads": 2}}),
    Variant("pref32", "classifier batches up to 32 (preferred 8, 16, 32)",
            options={"classifier": {"preferred_batch_sizes": (8, 16, 32)}}),
    # Issue 16: the OpenVINO backend on the same ONNX files (bf16 where the CPU has it), and a
    # server with the response cache for the duplicate-photo job.
    Variant("ov", "classifier on the openvino backend", options={"classifier": {"backend": "openvino"}}),
    Variant("ov_int8", "INT8 classifier on the openvino backend", model="int8",
            options={"classifier": {"backend": "openvino"}}),
    Variant("cache", "the committed configs, server response cache 16 MiB", cache_bytes=16 << 20),
    # Issue 14's opt-in accurate model: what its second network costs, served the same way.
    Variant("pair", "the committed configs, the accurate pair's classifier (effnet_lite0_pair)", model="pair"),
    Variant("pair_int8", "the committed configs, the pair's INT8 twin (effnet_lite0_pair_int8)", model="pair_int8"),
)


@dataclass(frozen=True)
class LocalRow:
    """An in-process row (no server).

    ``kind`` "files": decode + letterbox with the server's imaging code, then `session.run`;
    "preprocess": the imaging code alone, one image per call. ``batch``/``threads`` may be "best"
    (row 1's best point) and ``threads`` "single" (row 1's best at batch 1). ``photos`` "phone"
    uses the images enlarged to 12 MP; ``draft`` False decodes JPEGs at full size.
    """

    label: str
    key: str
    what: str
    kind: str
    batch: object = 1
    threads: object = 1
    photos: str = "dataset"
    draft: bool = True


@dataclass(frozen=True)
class TritonRow:
    """A row through a tritonserver started on `variant`.

    ``loop`` "scorer" runs the bulk scorer's code path (`score_folder` with a `Classifier`);
    "shm" / "message" a plain gRPC loop with the input in system shared memory / in the message;
    "raw" a plain asyncio tritonclient loop with ``per_request`` photos per request ("raw_command":
    the same loop as a whole process, `python -m benchmarks.raw_loop`); "command"
    `python -m waste_client score` as a whole process with ``args`` (with ``before``, the client
    package of that commit, taken with `git archive`, with its own defaults); "duplicates" the same
    command on a job with 10% exact duplicate photos (fresh bytes each round).
    """

    label: str
    key: str
    what: str
    variant: str
    in_flight: int = 16
    protocol: str = "grpc"
    tta: bool = False
    servers: int = 1
    loop: str = "scorer"
    photos: str = "dataset"
    per_request: int = 1
    args: tuple = ()
    before: str = ""


#: Rows 1c and 6c: the single-thread classifier of row 1 / 6a on every core at once (the server's
#: instances at full load), at the best single-thread batch of that sweep.
EVERY_CORE_ROWS = (("1c", "1", "ORT in-process, decoded pixels, every core busy"),
                   ("6c", "6a", "INT8 ORT in-process, decoded pixels, every core busy"))

#: Rows 1 and 6a: ORT on pre-decoded pixels, swept over BATCHES x THREADS.
PIXEL_SWEEPS = (("1", "fp32", "ORT in-process, decoded pixels"),
                ("6a", "int8", "INT8 ORT in-process, decoded pixels"))

#: Issue 16: OpenVINO on the same pre-decoded pixels (rows 1o, 6o), swept over OPENVINO_BATCHES x THREADS,
#: and ONNX Runtime with the OpenVINO execution provider (row 1v, FP32; a separate venv, skipped without it).
OPENVINO_SWEEPS = (("1o", "fp32", "OpenVINO in-process, decoded pixels"),
                   ("6o", "int8", "INT8 OpenVINO in-process, decoded pixels"))
OPENVINO_BATCHES = (1, 16)
ORT_OPENVINO_ROW = ("1v", "ORT + OpenVINO execution provider in-process, decoded pixels")

LOCAL_PLAN = (
    LocalRow("2", "2", "ORT in-process, decode+letterbox+infer", "files", "best", "best"),
    LocalRow("2b", "2b", "ORT in-process, decode+infer, one image at a time", "files", 1, "single"),
    LocalRow("2c", "2c", "ORT in-process, decode+infer, one image at a time, the server's 1 thread", "files", 1, 1),
    LocalRow("2p", "2p", "preprocess code alone (decode, trim, letterbox)", "preprocess"),
    LocalRow("2d", "2d", "preprocess code alone, 12 MP photos (JPEG draft mode)", "preprocess", photos="phone"),
    LocalRow("2d0", "2d0", "the same without draft mode (full-size decode)", "preprocess", photos="phone",
             draft=False),
)


def sweep(in_flights) -> tuple:
    """Row 3: the bulk scorer on the committed configs at each in-flight count."""
    return tuple(TritonRow(f"grpc {n} in flight", "3", "Triton bulk scorer", "on", n) for n in in_flights)


_REFERENCE = "Triton bulk scorer (reference for the rows below)"
#: Measured together in interleaved rounds; ratios between Triton rows compare rows of this plan.
TRITON_PLAN = (
    TritonRow("on16", "3r", _REFERENCE, "on", 16),
    TritonRow("on32", "3r", _REFERENCE, "on", 32),
    TritonRow("http", "3", "Triton bulk scorer", "on", 16, protocol="http"),
    TritonRow("on1", "3s", "Triton, one request in flight", "on", 1),
    TritonRow("tta", "5", "Triton TTA (2 views)", "on", 16, tta=True),
    TritonRow("off16", "4", "Triton, dynamic batching off", "off", 16),
    # INT8 finishes each request sooner, so it may need more in flight to keep both cores busy:
    # the INT8 target compares each model at its better of 16 and 32 in flight.
    TritonRow("int8", "6b", "INT8 Triton bulk scorer", "int8", 16),
    TritonRow("int8_32", "6b", "INT8 Triton bulk scorer", "int8", 32),
    TritonRow("s2", "S2", "two local servers, client round-robin", "on", 16, servers=2),
    # "Before" variants: each puts one earlier choice back, so the same run shows what it bought.
    TritonRow("delay5", "V1", "before: batcher delay 5 ms classifier + 1 ms preprocess", "delay5", 1),
    TritonRow("delay05", "V0", "before: batcher delay 0.5 ms classifier + 1 ms preprocess", "delay05", 1),
    TritonRow("one2", "V2", "before: 1 classifier instance x 2 ORT threads", "one2", 16),
    TritonRow("one2_1", "V2", "before: 1 classifier instance x 2 ORT threads", "one2", 1),
    TritonRow("pref32_raw8x8", "V3", "before: classifier batches up to 32 (preferred 8, 16, 32)", "pref32", 8,
              loop="raw", per_request=8),
    # System shared memory for a client on the server's host: the same plain gRPC loop with and
    # without it, on the dataset photos and on 12 MP phone-sized ones.
    TritonRow("shm0", "3m0", "the same loop, input in the message", "on", 16, loop="message"),
    TritonRow("shm", "3m", "gRPC loop, input in shared memory", "on", 16, loop="shm"),
    TritonRow("shm0_12mp", "3M0", "the same loop, 12 MP photos, input in the message", "on", 16,
              loop="message", photos="phone"),
    TritonRow("shm_12mp", "3M", "gRPC loop, 12 MP photos, input in shared memory", "on", 16,
              loop="shm", photos="phone"),
    # Issue 16: the plain asyncio client the scorer is measured against, the scorer as a whole
    # command, the OpenVINO backend served, and a bulk job with duplicates, cache on and off.
    TritonRow("raw8x4", "R8", "raw asyncio tritonclient loop", "on", 4, loop="raw", per_request=8),
    TritonRow("raw1x16", "R1", "raw asyncio tritonclient loop", "on", 16, loop="raw", per_request=1),
    TritonRow("int8_raw8x4", "R8i", "INT8, raw asyncio tritonclient loop", "int8", 4, loop="raw", per_request=8),
    TritonRow("int8_raw1x16", "R1i", "INT8, raw asyncio tritonclient loop", "int8", 16, loop="raw", per_request=1),
    # Twice the photos outstanding: does a fuller pipeline (preprocess and classifier both busy)
    # leave fewer idle cores? A candidate for "best served".
    TritonRow("raw8x8", "R8x8", "raw asyncio tritonclient loop", "on", 8, loop="raw", per_request=8),
    TritonRow("int8_raw8x8", "R8x8i", "INT8, raw asyncio tritonclient loop", "int8", 8, loop="raw", per_request=8),
    # The same loop as a whole process (start-up, imports, reading the files), the scorer command's peer.
    TritonRow("raw8x4_cmd", "R8w", "raw asyncio tritonclient loop, whole process", "on", 4, loop="raw_command",
              per_request=8),
    TritonRow("int8_raw8x4_cmd", "R8wi", "INT8, raw asyncio tritonclient loop, whole process", "int8", 4,
              loop="raw_command", per_request=8),
    TritonRow("cmd", "SC", "python -m waste_client score", "on", loop="command"),
    TritonRow("int8_cmd", "SCi", "INT8, python -m waste_client score", "int8", loop="command"),
    # Issue 11 rewrote the scorer (identity, lock, sources, escaping): its throughput must not drop.
    # 86f4caa is the last commit before that rewrite.
    TritonRow("cmd_before", "SC0", "before: the scorer of commit 86f4caa", "on", loop="command", before="86f4caa"),
    TritonRow("int8_cmd_before", "SC0i", "before: INT8, the scorer of commit 86f4caa", "int8", loop="command",
              before="86f4caa"),
    TritonRow("ov16", "OV", "OpenVINO backend, bulk scorer", "ov", 16),
    TritonRow("ov_int8_16", "OVi", "INT8 on the OpenVINO backend, bulk scorer", "ov_int8", 16),
    # The fastest-path target's rows: the scorer command on each runtime, as SC / SCi on ONNX Runtime.
    TritonRow("ov_cmd", "SCo", "OpenVINO backend, python -m waste_client score", "ov", loop="command"),
    TritonRow("ov_int8_cmd", "SCoi", "INT8 on the OpenVINO backend, python -m waste_client score", "ov_int8",
              loop="command"),
    TritonRow("pair_cmd", "SCp", "accurate pair (effnet_lite0_pair), python -m waste_client score", "pair",
              loop="command"),
    TritonRow("pair_int8_cmd", "SCpi", "INT8 pair (effnet_lite0_pair_int8), python -m waste_client score",
              "pair_int8", loop="command"),
    TritonRow("dup_nocache1", "D0", "10% duplicate photos, no response cache", "on", loop="duplicates",
              args=("--batch-size", "1")),
    TritonRow("dup_cache1", "D1", "10% duplicate photos, response cache on", "cache", loop="duplicates",
              args=("--batch-size", "1")),
    TritonRow("dup_cache", "D8", "10% duplicate photos, response cache on, scorer defaults", "cache",
              loop="duplicates"),
)


LOOPS = ("scorer", "shm", "message", "raw", "raw_command", "command", "duplicates")


def check_plan(variants=VARIANTS, local=LOCAL_PLAN, triton=TRITON_PLAN) -> None:
    """Raise ValueError when a row names a missing variant, a label repeats, or a server is missing."""
    keys = {v.key: v for v in variants}
    labels = [r.label for r in (*local, *triton, *sweep(IN_FLIGHT))]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"row labels repeat: {repeated}")
    for row in (*triton, *sweep(IN_FLIGHT)):
        if row.variant not in keys:
            raise ValueError(f"row {row.label} runs on unknown variant {row.variant!r}")
        if row.servers > keys[row.variant].servers:
            raise ValueError(f"row {row.label} needs {row.servers} servers of {row.variant!r}")
        if row.loop not in LOOPS or row.photos not in ("dataset", "phone"):
            raise ValueError(f"row {row.label}: unknown loop {row.loop!r} or photos {row.photos!r}")
    for row in local:
        if row.kind not in ("files", "preprocess"):
            raise ValueError(f"row {row.label}: unknown kind {row.kind!r}")
