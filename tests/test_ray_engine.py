"""The Ray Data engine of the bulk scorer on a real two-node Ray cluster and two real tritonservers.

One cluster (a head and a second node, started by `ray.cluster_utils.Cluster` on free ports) and
one extra tritonserver serve the whole module, because starting Ray costs seconds of both cores.
"""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
import ray  # noqa: E402 - never skipped: `make setup` installs ray[data]
from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from server.launch import TritonServer  # noqa: E402
from waste_client import Classifier, ClassifierError, Prediction  # noqa: E402
from waste_client._ray import RayEngine  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
GOOD = sorted((SAMPLES / "garbage12").rglob("*.jpg"))
BAD = sorted((SAMPLES / "bad").iterdir())
NODE_MEMORY = 100 * 1024 * 1024
#: Generous retries, as the CLI gives: a request that lands on a dead server moves to the other.
RETRIES = 20


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, one CPU each, this process connected as the driver."""
    # Ports left to the OS (GCS, agents): other Ray users may share this machine.
    head = {"num_cpus": 1, "object_store_memory": NODE_MEMORY, "include_dashboard": False,
            "dashboard_agent_listen_port": None}
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
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
    """36 photos, 4 broken files and a name that is not UTF-8; then 8 more links to each photo."""
    root = tmp_path_factory.mktemp("ray_photos")
    for src in GOOD + BAD:
        shutil.copy(src, root / src.name)
    weird = os.fsdecode(b"caf\xe9, \"quoted\"\nline.jpg")
    shutil.copy(GOOD[0], root / weird)
    few = sorted(str(p) for p in root.iterdir())
    many = root / "many"
    many.mkdir()
    for copy in range(8):
        for src in GOOD:
            os.link(root / src.name, many / f"{copy}-{src.name}")
    return few, sorted(str(p) for p in many.iterdir())


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


def _outcome(value):
    if isinstance(value, Prediction):
        return ("ok", value.label, tuple(label for label, _ in value.top_k))
    return ("error", value.status)


def test_same_labels_as_one_client_on_both_nodes(cluster, servers, photos):
    few, _ = photos
    with Classifier(servers[0].grpc_url, model="dev") as clf:
        expected = {r.item: _outcome(r.prediction or r.error) for r in clf.classify_many(few, top_k=3)}
    got, nodes = {}, set()
    with _engine(servers) as engine:
        for identity, outcome in engine.results(iter(few)):
            assert identity not in got, f"{identity!r} returned twice without a fault"
            got[identity] = outcome
            nodes.update(_map_workers(cluster).values())
    assert {i: _outcome(o) for i, o in got.items()} == expected
    weird = [i for i in few if "\n" in i]
    assert len(weird) == 1 and isinstance(got[weird[0]], Prediction)  # a non-UTF-8 name round-trips
    assert got[weird[0]].source == weird[0]
    statuses = {o.status for o in got.values() if isinstance(o, ClassifierError)}
    assert statuses == {"INVALID_ARGUMENT"} and sum(isinstance(o, Prediction) for o in got.values()) == 37
    assert len(nodes) == 2, "the two actors should run on the two nodes"


def test_actor_killed_mid_job_is_replaced(cluster, servers, photos):
    _, many = photos
    got, killed, replaced = {}, None, False
    with _engine(servers) as engine:
        for identity, outcome in engine.results(many):
            got.setdefault(identity, []).append(outcome)
            workers = _map_workers(cluster)
            if killed is None and workers:
                killed = max(workers)
                os.kill(killed, signal.SIGKILL)
                at = len(got)
            elif killed is not None and set(workers) - {killed} and len(workers) == 2:
                replaced = True
    assert killed is not None and at < len(many) // 2, "the kill should land early in the job"
    assert set(got) == set(many)
    assert all(isinstance(o, Prediction) for outcomes in got.values() for o in outcomes)
    assert replaced, "Ray should restart the killed actor"


def test_server_killed_mid_job_its_share_moves(cluster, servers, photos):
    _, many = photos
    gone = servers[1]
    got = {}
    try:
        with _engine(servers) as engine:
            for identity, outcome in engine.results(many):
                got[identity] = outcome
                if len(got) == 8:
                    os.killpg(gone._process.pid, signal.SIGKILL)
        assert not gone.is_running()
        assert set(got) == set(many)
        errors = [o for o in got.values() if not isinstance(o, Prediction)]
        assert not errors, errors[:3]
    finally:
        gone.stop()
        gone.start()
