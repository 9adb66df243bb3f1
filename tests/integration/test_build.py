"""`build:` against the real engine: an image built from a small context in the spec dir and
applied; a changed file is a new image name and a rollout; a failing build fails the rollout
before anything is stopped (the old container keeps running)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.dockerkit import APP, Host, docker

pytestmark = pytest.mark.docker

SPEC = """
project: PROJECT
services:
  web:
    tier: business
    build:
      context: ./app
      args: {GREETING: hello}
    image: PROJECT-named/web:dev
    environment: {APP_NAME: web}
    update: {min_ready: 300ms, deadline: 20s}
    stop_grace_period: 1s
"""
DOCKERFILE = f"""FROM {APP}:1.0
ARG GREETING
COPY msg.txt /msg
RUN echo "$GREETING" >> /msg
"""


@pytest.fixture
def built(host: Host) -> Iterator[Host]:
    host.write(SPEC)
    (host.spec / ".git").mkdir()  # the spec checkout: a .git is never sent
    (host.spec / ".git" / "config").write_text("[remote] url = https://token@example.org/\n")
    app = host.spec / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(DOCKERFILE)
    (app / "msg.txt").write_text("one\n")
    (app / ".dockerignore").write_text("*.secret\n")
    (app / "local.secret").write_text("never sent\n")
    try:
        yield host
    finally:
        host.cleanup()  # the containers first: an image in use is not removed
        ids = docker("images", "-q", "--filter", f"label=reconciler.project={host.project}",
                     check=False).split()
        if ids:
            docker("rmi", "-f", *sorted(set(ids)), check=False)


def running(host: Host) -> list[dict[str, object]]:
    return [c for c in host.containers() if c["State"]["Running"]]


def test_build_apply_change_and_failed_build(built: Host) -> None:
    host = built
    res = host.cli("plan")
    assert res.returncode in (0, 2), res.stdout + res.stderr
    assert f"* build web -> {host.project}-web:" in res.stdout
    assert f"(also tagged {host.project}-named/web:dev)" in res.stdout

    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "--> building web:" in res.stdout and "Step 1/" in res.stdout
    (first,) = running(host)
    image = first["Config"]["Image"]
    assert isinstance(image, str) and image.startswith(f"{host.project}-web:")
    cid = str(first["Id"])
    assert docker("exec", cid, "cat", "/msg") == "one\nhello\n"
    files = docker("exec", cid, "ls", "/").split()
    assert "local.secret" not in files and ".git" not in files
    # the service's `image:` names the same image
    tagged = docker("image", "inspect", "--format", "{{.Id}}", f"{host.project}-named/web:dev")
    assert tagged == docker("image", "inspect", "--format", "{{.Id}}", image)

    # an unchanged context: no build, no change
    res = host.cli("apply")
    assert res.returncode == 0 and "No changes" in res.stdout, res.stdout + res.stderr
    assert "building" not in res.stdout

    # a changed file: a new image name and a rollout
    (host.spec / "app" / "msg.txt").write_text("two\n")
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    (second,) = running(host)
    assert second["Id"] != cid and second["Config"]["Image"] != image
    assert docker("exec", str(second["Id"]), "cat", "/msg") == "two\nhello\n"

    # a failing build fails the rollout before anything is stopped
    (host.spec / "app" / "Dockerfile").write_text(DOCKERFILE + "RUN echo broken-step && false\n")
    (host.spec / "app" / "msg.txt").write_text("three\n")
    res = host.cli("apply")
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "build failed: The command '/bin/sh -c echo broken-step && false' returned a " \
           "non-zero code: 1" in out
    assert "last output lines:" in out and "broken-step" in out
    (still,) = running(host)
    assert still["Id"] == second["Id"]  # never stopped, never replaced
    history = host.cli("history", "--json")
    assert history.returncode == 0, history.stdout + history.stderr
    assert "build failed" in json.dumps(json.loads(history.stdout))
