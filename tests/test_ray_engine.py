"""`score --engine ray` on a real two-node Ray cluster and two real tritonservers.

One cluster (a head and a second node, `ray.cluster_utils.Cluster`, ports left to the OS) and one
extra tritonserver serve the whole module, because starting Ray costs seconds of both cores. The
scorer runs as a subprocess joining the cluster (`--ray-address`), as a user would run it; the
fault tests drive the engine in this process, where the actors' pids are at hand.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
import ray  # noqa: E402 - never skipped: `make setup` installs ray[data]
import ray.data  # noqa: E402,F401 - configures its loggers on import, before any engine runs
from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from server.launch import TritonServer  # noqa: E402
from waste_client import Classifier, ClassifierError, Prediction  # noqa: E402
from waste_client._ray import LOCAL_START_WAIT_S, RayEngine  # noqa: E402
from waste_client._results import error_status, read_results  # noqa: E402
from waste_client.cli import main  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
GOOD = sorted((SAMPLES / "garbage12").rglob("*.jpg"))
BAD = sorted((SAMPLES / "bad").iterdir())
NODE_MEMORY = 100 * 1024 * 1024
CLIENT_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "client"), str(REPO_ROOT)])}
#: Generous retries, as the CLI gives: a request that lands on a dead server moves to the other.
RETRIES = 20


@pytest.fixture(scope="module")
def cluster(s3_server):
    """A head node and a second node, one CPU each, this process connected as the driver.

    The nodes start with the S3 server's credentials in their environment, as a cluster's nodes
    carry their object store's (the actors read the photos).
    """
    # Ports left to the OS (GCS, agents): other Ray users may share this machine.
    head = {"num_cpus": 1, "object_store_memory": NODE_MEMORY, "include_dashboard": False,
            "dashboard_agent_listen_port": None}
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.items():
            env.setenv(name, value)
        # The scorer's patience for a slow GCS start (Ray's own 30 s ran out once under load).
        env.setenv("RAY_gcs_server_port_wait_time_s", str(LOCAL_START_WAIT_S))
        c = Cluster(initialize_head=True, head_node_args=head)
    try:
        with pytest.MonkeyPatch.context() as env:
            for name, value in s3_server.items():
                env.setenv(name, value)
            c.add_node(num_cpus=1, object_store_memory=NODE_MEMORY)
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def servers(dev_server):
    """The session's dev server and a second one on the same repository."""
    second = TritonServer(dev_server.model_repository).start()
    try:
        yield dev_server, second
    finally:
        second.stop()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """few/: 36 photos, the broken samples and a name that is not UTF-8; many/: 8 links to each photo."""
    root = tmp_path_factory.mktemp("ray_photos")
    few, many = root / "few", root / "many"
    few.mkdir()
    many.mkdir()
    for src in GOOD + BAD:
        shutil.copy(src, few / src.name)
    shutil.copy(GOOD[0], few / os.fsdecode(b"caf\xe9, \"quoted\"\nline.jpg"))
    for copy in range(8):
        for src in GOOD:
            os.link(few / src.name, many / f"{copy}-{src.name}")
    return sorted(str(p) for p in few.iterdir()), sorted(str(p) for p in many.iterdir())


def _map_workers(cluster) -> dict[int, str]:
    """pid -> node id of every Ray Data actor process of this cluster (children of its raylets)."""
    found = {}
    for node in cluster.list_all_nodes():
        raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        for child in psutil.Process(raylet).children(recursive=True):
            try:
                title = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "MapWorker" in title and "ClassifyActor" in title:
                found[child.pid] = node.node_id
    return found


def _engine(servers, **options):
    return RayEngine([s.grpc_url for s in servers], model="dev", top_k=3, actors=2, in_flight=2,
                     batch_size=4, retries=RETRIES, **options)


def _ray_scorer(cluster, servers, source, out, *extra, address_from_env=False, env=None):
    """The scorer joining `cluster` by --ray-address, or by RAY_ADDRESS as a cluster's job would."""
    join = [] if address_from_env else ["--ray-address", cluster.address]
    env = {**CLIENT_ENV, **(env or {})}
    if address_from_env:
        env["RAY_ADDRESS"] = cluster.address
    cmd = [sys.executable, "-m", "waste_client", "score", str(source), "--engine", "ray", *join,
           "--url", ",".join(s.grpc_url for s in servers), "--model", "dev", "--out", str(out),
           "--actors", "2", "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _rows(out) -> dict:
    rows = read_results(str(out))
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path written twice"
    return {r["path"]: (r["label"], error_status(r["error"]) if r["error"] else "") for r in rows}


def test_cli_ray_engine_gives_the_local_engines_rows_on_both_nodes(cluster, servers, photos, tmp_path):
    few, _ = photos
    source = os.path.dirname(few[0])
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["score", source, "--url", servers[0].grpc_url, "--model", "dev", "--out", str(local),
                 "--no-progress", "--no-table", "--json"]) == 1  # the broken samples are error rows
    proc = _ray_scorer(cluster, servers, source, remote, "--json", "--in-flight", "2", "--batch-size", "2")
    nodes = set()
    while proc.poll() is None:
        nodes.update(_map_workers(cluster).values())
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 1, stderr.decode(errors="replace")
    summary = json.loads(stdout)
    assert (summary["found"], summary["ok"], summary["errors"]) == (len(few), len(few) - len(BAD), len(BAD))
    assert _rows(remote) == _rows(local)
    assert set(_rows(remote)) == set(few)  # a non-UTF-8 name with a newline and quotes included
    assert len(nodes) == 2, "the two actors should run on the two nodes"


def test_cli_ray_engine_reads_an_object_store_in_the_actors(cluster, servers, s3_server, tmp_path, monkeypatch):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="ray-photos")
    for src in GOOD + [SAMPLES / "bad" / "notes.jpg"]:
        s3.put_object(Bucket="ray-photos", Key=f"photos/{src.parent.name}/{src.name}", Body=src.read_bytes())
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    assert main(["score", "s3://ray-photos/photos", "--url", servers[0].grpc_url, "--model", "dev",
                 "--out", str(local), "--no-progress", "--no-table", "--json"]) == 1  # notes.jpg
    proc = _ray_scorer(cluster, servers, "s3://ray-photos/photos", remote, "--json", env=s3_server)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr.decode(errors="replace")[-3000:]
    rows = _rows(remote)
    assert rows == _rows(local) and len(rows) == len(GOOD) + 1
    assert all(path.startswith("s3://ray-photos/photos/") for path in rows)
    assert rows["s3://ray-photos/photos/bad/notes.jpg"][1] == "INVALID_ARGUMENT"


def test_cli_driver_killed_then_rerun_resumes(cluster, servers, photos, tmp_path):
    _, many = photos
    source, out = os.path.dirname(many[0]), tmp_path / "r.csv"
    first = _ray_scorer(cluster, servers, source, out, "--in-flight", "1", "--batch-size", "2")
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_bytes().count(b"\n") > 20):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    before = len(read_results(str(out)))
    assert 0 < before < len(many)
    rerun = _ray_scorer(cluster, servers, source, out, "--json", address_from_env=True)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr.decode(errors="replace")[-3000:]
    summary = json.loads(stdout)
    assert summary["skipped"] >= before and summary["errors"] == 0
    assert set(_rows(out)) == set(many)


def test_cli_actor_killed_mid_job_is_replaced_and_the_output_stays_exact(cluster, servers, photos, tmp_path):
    _, many = photos
    source, out = os.path.dirname(many[0]), tmp_path / "r.jsonl"
    # One photo per actor call: a long job of small steps, so the replacement comes up before the end.
    proc = _ray_scorer(cluster, servers, source, out, "--json", "--in-flight", "1", "--batch-size", "1")
    killed, replaced, rows_at_kill = None, False, 0
    while proc.poll() is None:
        workers = _map_workers(cluster)
        rows = out.read_bytes().count(b"\n") if out.exists() else 0
        if killed is None and len(workers) == 2 and rows > 2:
            killed, rows_at_kill = max(workers), rows
            os.kill(killed, signal.SIGKILL)
        elif killed is not None and len(set(workers) - {killed}) == 2:
            replaced = True
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr.decode(errors="replace")[-3000:]
    assert killed is not None and rows_at_kill < len(many) // 2, "the kill should land early in the job"
    assert replaced, "Ray should restart the killed actor"
    assert json.loads(stdout)["errors"] == 0
    assert set(_rows(out)) == set(many)


def test_cli_without_an_address_starts_its_own_ray_and_ctrl_c_stops_it(servers, photos, tmp_path,
                                                                       ctrl_c_popen):
    _, many = photos
    out = tmp_path / "r.csv"
    env = {k: v for k, v in CLIENT_ENV.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "waste_client", "score", os.path.dirname(many[0]), "--engine", "ray",
           "--url", servers[0].grpc_url, "--model", "dev", "--out", str(out), "--in-flight", "1",
           "--batch-size", "1", "--no-progress"]
    proc = ctrl_c_popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_bytes().count(b"\n") > 10):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    ray_processes = psutil.Process(proc.pid).children(recursive=True)
    names = {p.name() for p in ray_processes}
    assert {"raylet", "gcs_server"} <= names, f"its own local Ray, not the test's cluster: {names}"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"run again to resume" in stderr, stderr[-2000:]
    psutil.wait_procs(ray_processes, timeout=15)
    assert not [p for p in ray_processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert 0 < len(_rows(out)) < len(many)


def test_server_killed_mid_job_its_share_moves(cluster, servers, photos):
    """In this process, in windows of 100 (three pipelines): the dead server's share moves on."""
    _, many = photos
    gone = servers[1]  # not restarted: this test comes last in the module
    got, pulled = {}, []

    def listing():
        for identity in many:
            pulled.append(identity)
            yield identity

    levels = [logging.getLogger(name).level for name in ("ray", "ray.data")]
    try:
        with _engine(servers, window=100) as engine:
            for identity, outcome in engine.results(listing()):
                assert len(pulled) <= 100 * (1 + len(got) // 100), "identities are pulled a window at a time"
                got[identity] = outcome
                if len(got) == 8:
                    os.killpg(gone._process.pid, signal.SIGKILL)
        assert not gone.is_running()
        assert set(got) == set(many) and len(got) > 200
        # Quiet while it ran; this process's Ray logging as it was once the engine is closed.
        assert [logging.getLogger(name).level for name in ("ray", "ray.data")] == levels
        errors = [o for o in got.values() if not isinstance(o, Prediction)]
        assert not errors, errors[:3]
    finally:
        gone.stop()
