"""The runtime contract (tests/contract_cases.py) on `DockerRuntime` against a real dockerd.

Builds a throwaway `FROM scratch` busybox image (reconciler-test/busybox:contract) once per
session. Every test uses a unique project label and removes every container, network and
volume carrying it (and the foreign containers it made) in teardown; nothing else is touched.
When no engine answers the tests skip, or FAIL when CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from reconciler.dockerd import DockerRuntime
from reconciler.runtimes import Conflict, EngineFailure, EngineUnavailable, NotFound
from tests.contract_cases import CASES, LABEL_PROJECT, Case, Harness, case_id

IMAGE = "reconciler-test/busybox:contract"
MISSING = "reconciler-test/does-not-exist:0"
FOREIGN_LABEL = "reconciler-test.owner"
APPLETS = ("sh", "sleep", "true", "false", "echo", "wget", "cat", "ls", "kill")
DOCKERFILE = """\
FROM scratch
COPY bin/ /bin/
ENV PATH=/bin
CMD ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"]
"""


def _docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:2])}: {proc.stderr.strip()}")
    return proc.stdout


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and no Docker engine: {reason}")
    pytest.skip(f"no Docker engine: {reason}")


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if shutil.which("docker") is None:
        _unavailable("the docker CLI is not installed")
    try:
        _docker("version", "--format", "{{.Server.APIVersion}}", timeout=15)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def contract_image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        _unavailable("/bin/busybox (busybox-static) is missing")
    ctx = tmp_path_factory.mktemp("contract-image")
    (ctx / "bin").mkdir()
    shutil.copyfile(busybox, ctx / "bin" / "busybox")
    (ctx / "bin" / "busybox").chmod(0o755)
    for applet in APPLETS:  # never link busybox to itself
        (ctx / "bin" / applet).symlink_to("busybox")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    _docker("build", "-q", "-t", IMAGE, str(ctx), timeout=120)
    return IMAGE


def _cleanup(project: str) -> None:
    for label in (f"{LABEL_PROJECT}={project}", f"{FOREIGN_LABEL}={project}"):
        ids = _docker("ps", "-aq", "--filter", f"label={label}", check=False).split()
        if ids:
            _docker("rm", "-f", *ids, check=False)
    label = f"label={LABEL_PROJECT}={project}"
    nets = _docker("network", "ls", "-q", "--filter", label, check=False).split()
    if nets:
        _docker("network", "rm", *nets, check=False)
    vols = _docker("volume", "ls", "-q", "--filter", label, check=False).split()
    if vols:
        _docker("volume", "rm", *vols, check=False)
    images = _docker("images", "-q", "--filter", label, check=False).split()
    if images:  # built by the build case
        _docker("rmi", "-f", *sorted(set(images)), check=False)


@pytest.fixture
def project(docker_engine: None) -> Iterator[str]:
    name = f"rt{uuid.uuid4().hex[:10]}"
    yield name
    _cleanup(name)


@pytest.fixture
async def docker_runtime(docker_engine: None) -> AsyncIterator[DockerRuntime]:
    runtime = await DockerRuntime.connect(timeout_s=30)
    yield runtime
    await runtime.close()


@pytest.fixture
def harness(docker_runtime: DockerRuntime, contract_image: str, project: str) -> Harness:
    async def create_foreign(name: str) -> str:
        # Straight through the CLI: no reconciler label, only our test-cleanup label.
        return _docker("run", "-d", "--name", name, "--label", f"{FOREIGN_LABEL}={project}",
                       contract_image).strip()

    return Harness(runtime=docker_runtime, kind="docker", project=project, image=contract_image,
                   unhealthy_image=contract_image, missing_image=MISSING,
                   oom_image=contract_image,
                   create_foreign=create_foreign, timeout_s=15, poll_s=0.1)


@pytest.mark.docker
@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_contract(case: Case, harness: Harness) -> None:
    await case(harness)
    if harness.timings:
        print(f"timings {case_id(case)}: {harness.timings}")


# ----------------------------------------------------------------------------- no engine needed


async def test_connect_fails_fast_without_engine(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable):
        await DockerRuntime.connect(f"unix://{tmp_path}/no.sock", timeout_s=5)


@pytest.fixture
async def stub_engine(tmp_path: Path) -> AsyncIterator[str]:
    """A tiny fake dockerd on a unix socket: events that drop, a hanging list, errors."""
    event = {"Type": "container", "Action": "start", "timeNano": 1700000000123456789,
             "Actor": {"ID": "abc", "Attributes": {LABEL_PROJECT: "p", "name": "x"}}}

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "Version": "20.10.24"})

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        line = json.dumps(event).encode() + b"\n"
        await resp.write(line[:20])  # an event split across chunks
        await resp.write(line[20:] + line)
        return resp  # the server ends the stream: the iterator must end

    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(2)
        raise AssertionError("unreachable")

    async def not_found(_: web.Request) -> web.Response:
        return web.json_response({"message": "No such container: nope"}, status=404)

    async def conflict(_: web.Request) -> web.Response:
        return web.json_response(
            {"message": 'Conflict. The container name "/x" is already in use'}, status=409)

    async def bad_env(_: web.Request) -> web.Response:
        return web.json_response(
            {"message": "invalid env SECRET_TOKEN=do-not-print-me"}, status=400)

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.41/version", version)
    app.router.add_get("/v1.41/events", events)
    app.router.add_get("/v1.41/containers/json", hang)
    app.router.add_get("/v1.41/containers/nope/json", not_found)
    app.router.add_post("/v1.41/containers/create", bad_env)
    app.router.add_post("/v1.41/containers/dup/start", conflict)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    sock = tmp_path / "docker.sock"
    site = web.UnixSite(runner, str(sock))
    await site.start()
    yield f"unix://{sock}"
    await runner.cleanup()


async def test_stub_event_stream_ends_when_the_connection_drops(stub_engine: str) -> None:
    runtime = await DockerRuntime.connect(stub_engine, timeout_s=5)
    try:
        got = [e async for e in runtime.events(label=LABEL_PROJECT)]
        assert len(got) == 2
        assert got[0].action == "start"
        assert got[0].container_id == "abc"
        assert got[0].attributes == {LABEL_PROJECT: "p", "name": "x"}
        assert got[0].time_nano == 1700000000123456789
    finally:
        await runtime.close()


async def test_stub_timeouts_and_error_mapping(stub_engine: str) -> None:
    runtime = await DockerRuntime.connect(stub_engine, timeout_s=0.5)
    try:
        with pytest.raises(EngineUnavailable):
            await runtime.list_containers(label=LABEL_PROJECT)
        with pytest.raises(NotFound):
            await runtime.inspect_container("nope")
        with pytest.raises(Conflict):
            await runtime.start_container("dup")
        with pytest.raises(EngineFailure) as err:
            await runtime.create_container(
                "x", {"Image": "i", "Env": ["SECRET_TOKEN=do-not-print-me"]})
        assert "do-not-print-me" not in str(err.value)
    finally:
        await runtime.close()
