"""The edge's config for real: a changed nginx.conf, replaced the way `git checkout` does
(new file + rename, which a single-file bind mount never sees), is applied under load by
`nginx -t` and a graceful reload in the running edge (same container, 0 failed requests);
a config failing `nginx -t` fails the rollout and the running edge keeps serving untouched.

Own project and published port on 127.0.0.1 per test; load only to that port, bounded
(tests/loadgen.py through test_edge's helpers). Figures are printed (`-s`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.edges import worker_pids
from tests.dockerkit import Host, docker, swap
from tests.e2e.test_edge import (
    assert_zero_failures,
    edge_stack,
    get,
    report,
    rollout_under_load,
)

pytestmark = pytest.mark.docker

ANCHOR = "        location = /nginx-health {"
PROBE = ('        location = /edge-config {\n            default_type text/plain;\n'
         '            return 200 "VERSION\\n";\n        }\n\n')


def git_style_replace(path: Path, text: str) -> None:
    """What `git checkout` / `git pull` do: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp-checkout")
    tmp.write_text(text)
    os.replace(tmp, path)


def with_probe(conf: str, version: str) -> str:
    return swap(conf, ANCHOR, PROBE.replace("VERSION", version) + ANCHOR)


def workers(edge_id: str) -> set[int]:
    return worker_pids(docker("exec", edge_id, "ps", "-o", "pid,args"))


def test_config_change_is_reloaded_under_load_without_a_failed_request(host: Host) -> None:
    _, port = edge_stack(host)
    base = f"http://127.0.0.1:{port}"
    (edge,) = host.by_service()["nginx"]
    conf = host.spec / "nginx.conf"
    original = conf.read_text()
    inode = conf.stat().st_ino
    assert get(base + "/edge-config")[0] == 404
    before = workers(edge["Id"])

    changed = with_probe(original, "v2")
    git_style_replace(conf, changed)
    assert conf.stat().st_ino != inode  # a new inode, as git makes it
    preview = host.cli("--dry-run")
    assert preview.returncode == 2, preview.stdout + preview.stderr
    assert "~ nginx[1]  reload" in preview.stdout and "1 to reload." in preview.stdout
    assert "to replace" in preview.stdout and "0 to replace" in preview.stdout
    git_style_replace(conf, original)  # the change lands while the load runs

    result, rc, out, took = rollout_under_load(host, port,
                                               lambda: git_style_replace(conf, changed))
    report("nginx.conf changed (git-style rename), reload", result, took)
    assert rc == 0, out
    assert_zero_failures(result, host, out)
    (after,) = host.by_service()["nginx"]
    assert after["Id"] == edge["Id"]  # the same container: nothing recreated
    assert get(base + "/edge-config") == (200, get(base + "/edge-config")[1], "v2\n")
    assert workers(edge["Id"]).isdisjoint(before)  # reloaded: new workers
    # the applied digest is recorded: the next pass has nothing to do
    again = host.cli("apply")
    assert again.returncode == 0 and "in sync" in again.stdout + again.stderr, again.stdout


def test_config_failing_nginx_t_is_never_loaded(host: Host) -> None:
    _, port = edge_stack(host)
    base = f"http://127.0.0.1:{port}"
    (edge,) = host.by_service()["nginx"]
    conf = host.spec / "nginx.conf"
    before = workers(edge["Id"])
    staged = [Path(b.split(":")[0]) for b in edge["HostConfig"]["Binds"]
              if b.split(":")[1] == "/etc/nginx/nginx.conf"]
    assert len(staged) == 1 and staged[0] != conf  # the edge mounts a staged copy
    served = staged[0].read_text()

    git_style_replace(conf, with_probe(conf.read_text(), "v2").replace(
        "location = /edge-config {", "location = /edge-config { not_a_directive;"))
    res = host.cli("apply")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "nginx -t failed" in out, out
    (after,) = host.by_service()["nginx"]
    assert after["Id"] == edge["Id"] and workers(edge["Id"]) == before  # untouched
    assert staged[0].read_text() == served  # what the running edge mounts is what it serves
    assert get(base + "/v1/x")[0] == 200 and get(base + "/edge-config")[0] == 404

