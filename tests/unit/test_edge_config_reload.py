"""The edge's mounted config on a scripted runtime: staged copies keep their inode (a
single-file bind mount sees a rewrite, never a rename), `reload_config` is `nginx -t` then
SIGHUP then the applied digest recorded, and a config failing `nginx -t` is never loaded and
the staged copies are put back. No engine, no real sleeps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler import edgeconf
from reconciler.core.desired import Desired, build
from reconciler.edges import Edge
from reconciler.execute import StepFailed
from reconciler.persistence import StateError
from tests.specfactory import KEY, container_json, load_text
from tests.unit.test_edges import ScriptedRuntime

SPEC = """
project: shop
networks: {edge: {}}
edge: {service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}
services:
  nginx:
    tier: external
    image: nginx:1
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro", "./include:/etc/nginx/include:ro"]
    networks: [edge]
"""


def git_style_replace(path: Path, text: str) -> None:
    """What `git checkout` does: write a new file next to it, rename it over the old one."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    os.replace(tmp, path)


def setup(tmp_path: Path) -> tuple[Path, Desired, Edge, ScriptedRuntime]:
    spec = tmp_path / "spec"
    (spec / "include").mkdir(parents=True)
    (spec / "nginx.conf").write_text("events {}\n")
    (spec / "include" / "a.conf").write_text("# a\n")
    conf = tmp_path / "edge-conf"
    d = build(load_text(spec, SPEC), KEY, edge_conf_dir=str(conf / edgeconf.MOUNTS))
    rt = ScriptedRuntime([container_json(d, "nginx", 1, cid="n1")])

    async def sleep(_: float) -> None:
        return None

    edge = Edge(rt, tmp_path / "edge", filename="upstreams.conf",  # type: ignore[arg-type]
                sleep=sleep, reload_polls=5, conf_dir=conf)
    return spec, d, edge, rt


def staged(d: Desired) -> dict[str, Path]:
    return {Path(src).name: Path(dst) for src, dst in d.services["nginx"].staged}


async def test_stage_then_reload_rewrites_in_place_and_records(tmp_path: Path) -> None:
    spec, d, edge, rt = setup(tmp_path)
    await edge.stage(d, d.services["nginx"])  # before the container is created
    conf = staged(d)["nginx.conf"]
    inode = conf.stat().st_ino
    assert conf.read_text() == "events {}\n"
    assert (staged(d)["include"] / "a.conf").read_text() == "# a\n"

    git_style_replace(spec / "nginx.conf", "events {}\nhttp {}\n")
    git_style_replace(spec / "include" / "a.conf", "# a v2\n")
    (spec / "include" / "b.conf").write_text("# b\n")
    new = build(load_text(spec, SPEC), KEY, edge_conf_dir=str(conf.parent))
    assert new.services["nginx"].config_digest != d.services["nginx"].config_digest
    await edge.reload_config(new, new.services["nginx"], "n1")

    assert conf.read_text() == "events {}\nhttp {}\n"
    assert conf.stat().st_ino == inode  # what a single-file bind mount keeps seeing
    assert sorted(p.name for p in staged(d)["include"].iterdir()) == ["a.conf", "b.conf"]
    assert (staged(d)["include"] / "a.conf").read_text() == "# a v2\n"
    assert rt.calls[0] == "nginx -t -q" and "kill HUP" in rt.calls
    assert edgeconf.read_applied(tmp_path / "edge-conf") == {
        "n1": new.services["nginx"].config_digest}


async def test_config_failing_nginx_t_is_never_loaded_and_the_copies_are_put_back(
        tmp_path: Path) -> None:
    spec, d, edge, rt = setup(tmp_path)
    await edge.stage(d, d.services["nginx"])
    conf = staged(d)["nginx.conf"]
    inode = conf.stat().st_ino
    git_style_replace(spec / "nginx.conf", "this is not nginx syntax;\n")
    (spec / "include" / "new.conf").write_text("# new\n")
    new = build(load_text(spec, SPEC), KEY, edge_conf_dir=str(conf.parent))
    rt.broken = True
    with pytest.raises(StepFailed, match="nginx -t failed") as failed:
        await edge.reload_config(new, new.services["nginx"], "n1")
    assert failed.value.kind.value == "edge_reload"
    assert rt.calls == ["nginx -t -q"]  # no HUP: the running edge is untouched
    assert conf.read_text() == "events {}\n" and conf.stat().st_ino == inode
    assert sorted(p.name for p in staged(d)["include"].iterdir()) == ["a.conf"]
    assert edgeconf.read_applied(tmp_path / "edge-conf") == {}


async def test_start_of_a_stopped_edge_stages_and_records(tmp_path: Path) -> None:
    _, d, edge, _ = setup(tmp_path)
    await edge.stage(d, d.services["nginx"], started="n1")
    assert edgeconf.read_applied(tmp_path / "edge-conf") == {
        "n1": d.services["nginx"].config_digest}


def test_applied_record_keeps_only_live_containers(tmp_path: Path) -> None:
    edgeconf.record_applied(tmp_path, "old", "d1")
    edgeconf.record_applied(tmp_path, "new", "d2", alive=["new"])
    assert edgeconf.read_applied(tmp_path) == {"new": "d2"}
    (tmp_path / edgeconf.APPLIED).write_text("[not a map]")
    assert edgeconf.read_applied(tmp_path) == {}


def test_a_mounted_file_turned_directory_needs_a_new_container(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_text("x\n")
    edgeconf.stage([(str(src), str(dst))], fresh=True)
    src.unlink()
    src.mkdir()
    (src / "f").write_text("y\n")
    with pytest.raises(StateError, match="must be recreated"):
        edgeconf.stage([(str(src), str(dst))])
    edgeconf.stage([(str(src), str(dst))], fresh=True)  # before a create: replaced
    assert (dst / "f").read_text() == "y\n"


def test_staging_again_is_a_no_op_and_a_same_size_change_is_written(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_text("aaaa\n")
    edgeconf.stage([(str(src), str(dst))], fresh=True)
    inode, mtime = dst.stat().st_ino, dst.stat().st_mtime_ns
    edgeconf.stage([(str(src), str(dst))], fresh=True)  # unchanged: not rewritten
    assert dst.stat().st_mtime_ns == mtime
    git_style_replace(src, "bbbb\n")  # same size, other bytes
    edgeconf.stage([(str(src), str(dst))])
    assert dst.read_text() == "bbbb\n" and dst.stat().st_ino == inode


async def test_a_reload_that_does_not_take_effect_keeps_the_new_copies_unrecorded(
        tmp_path: Path) -> None:
    """After the signal nginx may serve the new files: they stay, the old digest stays
    recorded, so the next pass reloads again (forward) or stages back (revert)."""
    spec, d, edge, rt = setup(tmp_path)
    await edge.stage(d, d.services["nginx"])
    git_style_replace(spec / "nginx.conf", "events {}\nhttp {}\n")
    new = build(load_text(spec, SPEC), KEY, edge_conf_dir=str(staged(d)["nginx.conf"].parent))
    rt.reload_after = 100  # new workers never show up
    with pytest.raises(StepFailed, match="did not start workers"):
        await edge.reload_config(new, new.services["nginx"], "n1")
    assert "kill HUP" in rt.calls
    assert staged(d)["nginx.conf"].read_text() == "events {}\nhttp {}\n"
    assert edgeconf.read_applied(tmp_path / "edge-conf") == {}
