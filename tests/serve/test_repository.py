"""`kerasport serve --repository`: versions under their folder names, version policies, polling and explicit control,
the repository extension over HTTP and gRPC with tritonclient, and hot swap under load with signed bundles.

Versions are a small regressor with different weights per version (devtools/repository_bundles.py), so a response's
numbers tell which version answered; every bundle is real (exported to ONNX, parity passed) and signed.
"""

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import ServerProcess, loopback_client

from devtools.keys import write_key_pair
from devtools.repository_bundles import MODEL_NAME, PROBE, drop_in, expected_output, flip_byte
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from kerasport.serve.repository import NOT_IN_POLICY_REASON, READY, UNAVAILABLE, UNLOADED_REASON, VersionPolicy

POLL_SECONDS = 0.5
SWAP_DEADLINE = POLL_SECONDS + 5  # the bar: a new version serves within --poll-seconds + 5 s


@pytest.fixture(scope="module")
def versions(tmp_path_factory, regressor_versions):
    """Signed source bundles 1 and 2 (different weights), their answers to PROBE, and the key pair."""
    from kerasport.signing import sign_bundle

    root = tmp_path_factory.mktemp("versions")
    keys = write_key_pair(root / "keys")
    runs = {version: Path(shutil.copytree(run, root / f"v{version}")) for version, run in regressor_versions.items()}
    for run in runs.values():
        sign_bundle(run, keys.private)
    answers = {version: expected_output(run) for version, run in runs.items()}
    assert abs(answers[1] - answers[2]) > 1e-3  # distinguishable
    return {"runs": runs, "answers": answers, "keys": keys, "root": root}


def infer(client: httpx.Client, url: str, model: str = MODEL_NAME, version: str | None = None) -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return client.post(url + path, json={"inputs": [{"name": "row", "datatype": "FP32", "shape": list(PROBE.shape),
                                                     "data": PROBE.ravel().tolist()}]})


def answered(response: httpx.Response) -> tuple[str, float]:
    body = response.json()
    return body["model_version"], body["outputs"][0]["data"][0]


def index(client: httpx.Client, url: str) -> dict[tuple[str, str], dict]:
    rows = client.post(url + "/v2/repository/index").json()
    return {(row["name"], row["version"]): row for row in rows}


def wait_for(condition, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def test_version_policies_parse_and_select():
    assert VersionPolicy.parse("latest:2").select([1, 3, 2]) == [3, 2]
    assert VersionPolicy.parse("all").select([2, 1]) == [2, 1]
    assert VersionPolicy.parse("specific:1,3").select([1, 2, 3]) == [3, 1]
    assert VersionPolicy.parse("latest:1").to_config() == {"latest": {"num_versions": 1}}
    for bad in ("latest:0", "newest", "specific:", "specific:a", "all:2", "specific:0"):
        with pytest.raises(UsageError, match="--version-policy"):
            VersionPolicy.parse(bad)


def test_hot_swap_under_load_refuses_tampered_and_unsigned(versions, tmp_path):
    """Clients keep asking while version 2 arrives, then a tampered 3 and an unsigned 4: no request fails, every
    response's numbers are its version's, 2 serves within the deadline, 3 and 4 are refused with the reason."""
    repository, answers = tmp_path / "repository", versions["answers"]
    drop_in(versions["runs"][1], repository, MODEL_NAME, 1)
    server = ServerProcess(repository, "--repository", str(repository), "--poll-seconds", str(POLL_SECONDS),
                           "--trusted-key", str(versions["keys"].public), "--no-access-log")
    failures, seen, stop = [], [], threading.Event()

    def client_loop():
        with loopback_client(timeout=10) as client:
            while not stop.is_set():
                response = infer(client, server.url)
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                version, value = answered(response)
                seen.append(version)
                if abs(value - answers[int(version)]) > 1e-4:
                    failures.append(f"version {version} answered {value}, its bundle {answers[int(version)]}")

    clients = [threading.Thread(target=client_loop) for _ in range(4)]
    try:
        assert server.ready["models"] == [{"name": MODEL_NAME, "version": "1", "state": READY, "reason": ""}]
        for thread in clients:
            thread.start()
        time.sleep(0.5)
        drop_in(versions["runs"][2], repository, MODEL_NAME, 2)
        wait_for(lambda: seen and seen[-1] == "2", SWAP_DEADLINE)
        tampered = shutil.copytree(versions["runs"][2], tmp_path / "tampered")
        flip_byte(tampered / "export" / "model.onnx")
        drop_in(tampered, repository, MODEL_NAME, 3)
        unsigned = shutil.copytree(versions["runs"][2], tmp_path / "unsigned")
        (unsigned / "bundle.sig").unlink()
        drop_in(unsigned, repository, MODEL_NAME, 4)
        with loopback_client(timeout=10) as client:
            wait_for(lambda: {index(client, server.url).get((MODEL_NAME, v), {}).get("state") for v in "34"}
                     == {UNAVAILABLE}, SWAP_DEADLINE)
            time.sleep(1)  # clients keep asking after the refusals
            rows = index(client, server.url)
            metrics = client.get(server.url + "/metrics").text
            named = infer(client, server.url, version="1")
            metadata = client.get(f"{server.url}/v2/models/{MODEL_NAME}").json()
    finally:
        stop.set()
        for thread in clients:
            thread.join()
        code = server.stop()
    assert code == EXIT_OK
    assert not failures, failures[:5]
    assert set(seen) == {"1", "2"}  # never 3 or 4
    assert rows[(MODEL_NAME, "2")]["state"] == READY
    assert "export/model.onnx changed since signing" in rows[(MODEL_NAME, "3")]["reason"]
    assert "is not signed" in rows[(MODEL_NAME, "4")]["reason"]
    assert rows[(MODEL_NAME, "1")] == {"name": MODEL_NAME, "version": "1", "state": UNAVAILABLE,
                                       "reason": NOT_IN_POLICY_REASON}
    assert f'kerasport_repository_refused_total{{model="{MODEL_NAME}"}} 2.0' in metrics
    assert named.status_code == 503 and NOT_IN_POLICY_REASON in named.json()["error"]
    assert metadata["versions"] == ["2"]
    logs = server.logs()
    assert logs.count('"event": "version_refused"') == 2 and "changed since signing" in logs
    # Every copy's manifest says version 1: the folder's number is what serves, and the difference is logged.
    assert '"event": "folder_name_wins", "model": "prices", "version": 2' in logs


@pytest.fixture(scope="module")
def explicit(versions, tmp_path_factory):
    """A server in explicit mode over two models (`prices` with both versions, `other` with one), every version
    served (`all`), HTTP and gRPC."""
    repository = tmp_path_factory.mktemp("explicit")
    for version, run in versions["runs"].items():
        drop_in(run, repository, MODEL_NAME, version)
    drop_in(versions["runs"][1], repository, "other", 7)
    server = ServerProcess(repository, "--repository", str(repository), "--model-control", "explicit",
                           "--version-policy", "all", "--grpc-port", "0", "--no-access-log")
    yield server
    assert server.stop() == EXIT_OK


def test_tritonclient_http_lists_unloads_loads_and_infers_a_named_version(explicit, versions):
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    client = triton_http.InferenceServerClient(explicit.url.removeprefix("http://"))
    rows = {(row["name"], row["version"]): row["state"] for row in client.get_model_repository_index()}
    assert rows == {(MODEL_NAME, "1"): READY, (MODEL_NAME, "2"): READY, ("other", "7"): READY}
    assert client.get_model_config(MODEL_NAME)["version_policy"] == VersionPolicy.parse("all").to_config()
    request = triton_http.InferInput("row", list(PROBE.shape), "FP32")
    request.set_data_from_numpy(PROBE)
    for version in ("1", "2"):
        result = client.infer(MODEL_NAME, [request], model_version=version)
        assert result.get_response()["model_version"] == version
        assert result.as_numpy("price")[0, 0] == pytest.approx(versions["answers"][int(version)], abs=1e-4)
    client.unload_model("other")
    assert not client.is_model_ready("other")
    with pytest.raises(InferenceServerException, match="no ready version"):
        client.infer("other", [request])
    assert {row["state"] for row in client.get_model_repository_index() if row["name"] == "other"} == {UNAVAILABLE}
    client.load_model("other")
    assert client.is_model_ready("other") and client.infer("other", [request]).get_response()["model_version"] == "7"
    with pytest.raises(InferenceServerException, match="no model 'absent'"):
        client.load_model("absent")


def test_tritonclient_grpc_lists_unloads_loads_and_infers_a_named_version(explicit, versions):
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(explicit.ready["grpc"])
    listed = client.get_model_repository_index(as_json=True)["models"]
    assert {(row["name"], row["version"]) for row in listed} == {(MODEL_NAME, "1"), (MODEL_NAME, "2"), ("other", "7")}
    assert "model_repository" in client.get_server_metadata(as_json=True)["extensions"]
    assert "all" in client.get_model_config(MODEL_NAME, as_json=True)["config"]["version_policy"]
    request = triton_grpc.InferInput("row", list(PROBE.shape), "FP32")
    request.set_data_from_numpy(PROBE)
    result = client.infer(MODEL_NAME, [request], model_version="1")
    assert result.get_response().model_version == "1"
    assert result.as_numpy("price")[0, 0] == pytest.approx(versions["answers"][1], abs=1e-4)
    client.unload_model(MODEL_NAME)
    assert not client.is_model_ready(MODEL_NAME)
    client.load_model(MODEL_NAME)
    assert client.is_model_ready(MODEL_NAME, "2")
    assert client.infer(MODEL_NAME, [request]).get_response().model_version == "2"  # the highest, unnamed



def test_explicit_mode_changes_only_through_load(explicit, versions):
    """A version dropped into an explicit-mode repository is not served until the model is loaded again."""
    repository = explicit.ready and explicit_repository(explicit)
    drop_in(versions["runs"][2], repository, "other", 8)
    with loopback_client(timeout=10) as client:
        time.sleep(1)
        assert ("other", "8") not in index(client, explicit.url)
        assert client.post(f"{explicit.url}/v2/repository/models/other/load").status_code == 200
        assert index(client, explicit.url)[("other", "8")]["state"] == READY
        assert answered(infer(client, explicit.url, "other")) == ("8", pytest.approx(versions["answers"][2], abs=1e-4))


def explicit_repository(server) -> Path:
    return Path(server.process.args[server.process.args.index("--repository") + 1])


def test_a_repository_that_is_not_a_folder_and_bad_options_are_usage_errors(tmp_path, versions):
    from typer.testing import CliRunner

    from kerasport.app.cli import app

    runner = CliRunner()
    for args in (["--repository", str(tmp_path / "absent")], ["--run", str(versions["runs"][1]), "--model-control",
                                                              "sometimes"],
                 ["--run", str(versions["runs"][1]), "--version-policy", "newest"]):
        result = runner.invoke(app, ["serve", "--port", "0", *args])
        assert result.exit_code == EXIT_USAGE, result.output


def test_run_with_a_trusted_key_refuses_unsigned_and_other_keys(tmp_path, versions):
    from typer.testing import CliRunner

    from kerasport.app.cli import app

    unsigned = shutil.copytree(versions["runs"][1], tmp_path / "unsigned")
    (unsigned / "bundle.sig").unlink()
    other = write_key_pair(tmp_path / "other")
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--run", str(unsigned), "--port", "0", "--trusted-key",
                                 str(versions["keys"].public)])
    assert result.exit_code == EXIT_CHECK_FAILED and "is not signed" in result.output
    result = runner.invoke(app, ["serve", "--run", str(versions["runs"][1]), "--port", "0", "--trusted-key",
                                 str(other.public)])
    assert result.exit_code == EXIT_CHECK_FAILED and "another key" in result.output
    result = runner.invoke(app, ["serve", "--run", str(versions["runs"][1]), "--port", "0", "--trusted-key",
                                 str(tmp_path / "absent.pub")])
    assert result.exit_code == EXIT_USAGE


def test_workers_share_one_repository_state(versions, tmp_path):
    """With --workers 2, an unload or load reaching one worker applies to both: indices from many connections
    (answered by both workers, per the access log's pids) agree."""
    import json

    repository = tmp_path / "repository"
    drop_in(versions["runs"][1], repository, MODEL_NAME, 1)
    server = ServerProcess(repository, "--repository", str(repository), "--model-control", "explicit",
                           "--workers", "2")

    def indices() -> list[list[dict]]:
        answers = []
        for _ in range(12):
            with loopback_client(timeout=10) as client:  # a new connection each time: the kernel spreads them
                answers.append(client.post(server.url + "/v2/repository/index").json())
        return answers

    try:
        with loopback_client(timeout=10) as client:
            assert client.post(f"{server.url}/v2/repository/models/{MODEL_NAME}/unload").status_code == 200
        time.sleep(1)
        unloaded = indices()
        with loopback_client(timeout=10) as client:
            assert client.post(f"{server.url}/v2/repository/models/{MODEL_NAME}/load").status_code == 200
        time.sleep(1)
        loaded = indices()
    finally:
        assert server.stop() == EXIT_OK
    assert all(rows == [{"name": MODEL_NAME, "version": "1", "state": UNAVAILABLE, "reason": UNLOADED_REASON}]
               for rows in unloaded), unloaded
    assert all(rows == [{"name": MODEL_NAME, "version": "1", "state": READY, "reason": ""}] for rows in loaded)
    pids = {json.loads(line)["pid"] for line in server.logs().splitlines()
            if line.startswith("{") and '"path": "/v2/repository/index"' in line}
    assert pids == set(server.ready["pids"])
