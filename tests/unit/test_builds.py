"""`build:` in the spec without Docker: .dockerignore rules, the content-addressed image
name, the loader's confinement of contexts (hostile cases as clear errors), the plan's build
steps and their rendering, and the importer on a compose project on disk."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from reconciler import buildctx, cli
from reconciler.core import render
from reconciler.core.builds import (
    OUTSIDE_DOCKERFILE,
    finish_digest,
    ignored,
    image_ref,
    parse_dockerignore,
)
from reconciler.core.desired import build as desired
from reconciler.core.model import SpecError
from reconciler.core.plans import compute
from reconciler.core.snapshots import Snapshot
from reconciler.loading import load
from tests.specfactory import KEY

SPEC = """\
project: bt
services:
  web:
    tier: core
    build: {BUILD}
    command: ["sleep", "3600"]
"""


def checkout(tmp: Path, build: str = "./app", *, files: dict[str, str] | None = None) -> Path:
    """A spec checkout: `.git`, the spec in spec/, a context in spec/app."""
    root = tmp / "repo"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "config").write_text("[remote] url = https://token@example.org/x\n")
    spec = root / "spec"
    (spec / "app").mkdir(parents=True)
    (spec / "spec.yaml").write_text(SPEC.replace("{BUILD}", build))
    for name, text in (files or {"Dockerfile": "FROM scratch\nCOPY . /\n",
                                 "main.txt": "hello\n"}).items():
        path = spec / "app" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return spec


def errors(spec: Path) -> str:
    with pytest.raises(SpecError) as info:
        load(spec)
    return "\n".join(str(p) for p in info.value.problems)


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(("patterns", "path", "out"), [
    ("*.log", "a.log", True),
    ("*.log", "sub/a.log", False),  # `*` stays inside one directory, as in Docker
    ("**/*.log", "sub/deep/a.log", True),
    ("**/*.log", "a.log", True),
    ("node_modules", "node_modules/x/y.js", True),  # a directory takes what it holds
    ("/build", "build/out", True),
    ("./tmp/", "tmp/a", True),
    ("*.md\n!README.md", "README.md", False),
    ("*.md\n!README.md", "CHANGES.md", True),
    ("# comment\n\n  secret.env  ", "secret.env", True),
    ("data/*\n!data/keep", "data/keep", False),
    ("a?c", "abc", True),
    ("[a-c].txt", "b.txt", True),
    ("[!a-c].txt", "b.txt", False),
])
def test_dockerignore_rules(patterns: str, path: str, out: bool) -> None:
    assert ignored(parse_dockerignore(patterns), path) is out


def test_image_ref_is_content_addressed_and_a_valid_name() -> None:
    digest = "ab" * 32
    assert image_ref("metro", "Web_API", digest) == "metro-web_api:" + "ab" * 8
    assert image_ref("p", "x y", digest).startswith("p-x-y:")
    base = finish_digest("f", "Dockerfile", b"FROM a\n", {"A": "1"}, None)
    assert base == finish_digest("f", "Dockerfile", b"FROM a\n", {"A": "1"}, None)
    for other in (finish_digest("g", "Dockerfile", b"FROM a\n", {"A": "1"}, None),
                  finish_digest("f", "Dockerfile", b"FROM b\n", {"A": "1"}, None),
                  finish_digest("f", "Dockerfile", b"FROM a\n", {"A": "2"}, None),
                  finish_digest("f", "Dockerfile", b"FROM a\n", {"A": "1"}, "prod"),
                  finish_digest("f", "other/Dockerfile", b"FROM a\n", {"A": "1"}, None)):
        assert other != base


# --- the loader: names, fingerprints, confinement -----------------------------------------


def test_a_changed_context_is_a_changed_image_and_fingerprint(tmp_path: Path) -> None:
    spec = checkout(tmp_path)
    first = load(spec)
    ref = first.spec.services["web"].image
    assert ref.startswith("bt-web:") and first.builds["web"].ref == ref
    assert load(spec).spec.services["web"].image == ref  # stable
    fp = desired(first, KEY).services["web"].fingerprint
    (spec / "app" / "main.txt").write_text("changed\n")
    second = load(spec)
    assert second.spec.services["web"].image != ref
    assert desired(second, KEY).services["web"].fingerprint != fp
    assert second.fingerprint != first.fingerprint
    # the file's mode is content too (an executable bit changes what runs)
    os.chmod(spec / "app" / "main.txt", 0o755)
    assert load(spec).spec.services["web"].image != second.spec.services["web"].image


def test_dockerignore_and_git_are_not_part_of_the_build(tmp_path: Path) -> None:
    spec = checkout(tmp_path, files={"Dockerfile": "FROM scratch\n", "main.txt": "a\n",
                                     ".dockerignore": "*.tmp\nDockerfile\n",
                                     "scratch.tmp": "1\n", ".git/HEAD": "ref: x\n"})
    ref = load(spec).spec.services["web"].image
    (spec / "app" / "scratch.tmp").write_text("2\n")  # ignored: same image
    (spec / "app" / ".git" / "HEAD").write_text("ref: y\n")  # never read: same image
    assert load(spec).spec.services["web"].image == ref
    ctx = load(spec).builds["web"]
    out = io.BytesIO()
    buildctx.write_archive(ctx, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        names = tar.getnames()
    # the Dockerfile is sent although .dockerignore names it (the engine needs it)
    assert sorted(names) == [".dockerignore", "Dockerfile", "main.txt"]


def test_image_and_build_tag_both_and_args_target_shown(tmp_path: Path) -> None:
    spec = checkout(tmp_path, build="{context: ./app, target: prod, args: {MODE: fast}}")
    text = (spec / "spec.yaml").read_text().replace("    build:", "    image: acme/web:2\n"
                                                     "    build:")
    (spec / "spec.yaml").write_text(text)
    loaded = load(spec)
    ctx = loaded.builds["web"]
    assert ctx.tags == ("acme/web:2",) and ctx.target == "prod"
    assert ctx.args == (("MODE", "fast"),)
    assert loaded.spec.services["web"].image == ctx.ref
    plan = compute(desired(loaded, KEY), Snapshot(project="bt"))
    assert [b.service for b in plan.builds] == ["web"] and not plan.images  # never pulled
    shown = render.text(plan)
    assert f"* build web -> {ctx.ref} (also tagged acme/web:2)" in shown
    assert "dockerfile Dockerfile target prod" in shown
    data = json.loads(render.as_json(plan))
    assert data["builds"][0]["ref"] == ctx.ref and data["builds"][0]["args"] == {"MODE": "fast"}


def test_dockerfile_outside_the_context_but_inside_the_checkout(tmp_path: Path) -> None:
    spec = checkout(tmp_path, build="{context: ./app, dockerfile: ../docker/Dockerfile.web}")
    (spec / "docker").mkdir()
    (spec / "docker" / "Dockerfile.web").write_text("FROM scratch\n")
    ctx = load(spec).builds["web"]
    assert ctx.dockerfile_name == OUTSIDE_DOCKERFILE
    out = io.BytesIO()
    buildctx.write_archive(ctx, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        assert OUTSIDE_DOCKERFILE in tar.getnames()


@pytest.mark.parametrize(("build", "message"), [
    ("../..", "resolves to"),
    ("/etc", "outside the spec checkout"),
    ("{context: ./app, dockerfile: /etc/hostname}", "dockerfile '/etc/hostname' resolves to"),
    ("./missing", "does not exist"),
    ("./app/Dockerfile", "not a directory"),
    ("../../repo/.git", "into its .git"),
])
def test_hostile_contexts_are_clear_errors(tmp_path: Path, build: str, message: str) -> None:
    spec = checkout(tmp_path, build=build)
    found = errors(spec)
    assert "spec.yaml:5: services.web.build: " in found and message in found, found


def test_symlinks_out_of_the_checkout_are_refused(tmp_path: Path) -> None:
    spec = checkout(tmp_path)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s\n")
    os.symlink(tmp_path / "outside" / "secret", spec / "app" / "leak")
    found = errors(spec)
    assert "leak is a symlink to" in found and "outside the spec checkout" in found
    (spec / "app" / "leak").unlink()
    os.symlink("main.txt", spec / "app" / "alias")  # inside: sent as a link
    assert load(spec).builds["web"].ref
    os.symlink(tmp_path / "outside", spec / "linked-ctx")
    (spec / "spec.yaml").write_text(SPEC.replace("{BUILD}", "./linked-ctx"))
    assert "outside the spec checkout" in errors(spec)


def test_fifo_device_and_env_files_in_the_context_are_refused(tmp_path: Path) -> None:
    spec = checkout(tmp_path)
    os.mkfifo(spec / "app" / "pipe")
    assert "pipe is a FIFO: only regular files, directories and symlinks are sent (never " \
           "opened)" in errors(spec)
    (spec / "app" / ".dockerignore").write_text("pipe\n")  # left out: never looked at
    assert load(spec).builds["web"]
    (spec / "app" / "web.env").write_text("TOKEN=abcdefabcdefabcdefabcdefabcdefabcdef\n")
    (spec / "app" / "web.env").chmod(0o600)
    text = SPEC.replace("{BUILD}", "./app") + "    env_file: [./app/web.env]\n"
    (spec / "spec.yaml").write_text(text)
    found = errors(spec)
    assert "web.env is an env file of the spec (secrets): it is never sent" in found
    assert "abcdef" not in found


def test_a_huge_context_is_refused_before_it_is_read(tmp_path: Path) -> None:
    spec = checkout(tmp_path)
    with open(spec / "app" / "big.bin", "wb") as f:  # sparse: no disk, no read
        f.truncate(buildctx.MAX_CONTEXT_BYTES + 1)
    found = errors(spec)
    assert "holds more than 256 MiB (at big.bin): refused; leave out what the build does " \
           "not need with a .dockerignore" in found


def test_build_args_are_literal(tmp_path: Path) -> None:
    spec = checkout(tmp_path, build="{context: ./app, args: {A: '${HOME}', B: '$USER'}}")
    found = errors(spec)
    assert "services.web.build.args.A: build args are literal: no ${VAR} interpolation" in found
    assert "services.web.build.args.B: build args are literal" in found


def test_a_service_needs_image_or_build(tmp_path: Path) -> None:
    spec = checkout(tmp_path)
    (spec / "spec.yaml").write_text(SPEC.replace("    build: {BUILD}\n", ""))
    assert "a service needs `image` or `build`" in errors(spec)


def test_the_archive_must_still_be_what_was_hashed(tmp_path: Path) -> None:
    spec = checkout(tmp_path)
    ctx = load(spec).builds["web"]
    (spec / "app" / "main.txt").write_text("edited after the load\n")
    with pytest.raises(buildctx.BuildRefused, match="changed since the spec was read"):
        buildctx.write_archive(ctx, io.BytesIO())


# --- the importer on a compose project on disk ---------------------------------------------


def test_compose_build_imports_validates_and_plans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "proj"
    (project / ".git").mkdir(parents=True)
    (project / "backend").mkdir()
    (project / "backend" / "Dockerfile").write_text("FROM scratch AS builder\nCOPY . /\n")
    (project / "proxy").mkdir()
    (project / "proxy" / "Dockerfile").write_text("FROM scratch\n")
    (project / "compose.yaml").write_text("""\
services:
  backend:
    build:
      context: backend
      target: builder
      args: {MODE: prod}
    restart: unless-stopped
  proxy:
    build: proxy
    image: acme/proxy:1
    restart: unless-stopped
    depends_on: [backend]
""")
    specs = project / "specs"
    code = cli.main(["import-compose", str(project / "compose.yaml"), "-o", str(specs)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert cli.main(["validate", "--spec", str(specs)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert cli.main(["plan", "--json", "--spec", str(specs), "--state-dir",
                     str(tmp_path / "state")]) in (0, 2)
    plan = json.loads(capsys.readouterr().out)
    builds = {b["service"]: b for b in plan["builds"]}
    assert builds["backend"]["target"] == "builder" and builds["backend"]["args"] == {
        "MODE": "prod"}
    assert builds["backend"]["ref"].startswith("proj-backend:")
    assert builds["proxy"]["tags"] == ["acme/proxy:1"]
    assert builds["proxy"]["context"] == str((project / "proxy").resolve())


def test_a_fifo_dockerfile_is_refused_and_links_are_sent_as_links(tmp_path: Path) -> None:
    spec = checkout(tmp_path, files={"Dockerfile": "FROM scratch\n", "sub/a.txt": "a\n"})
    os.symlink("sub", spec / "app" / "sub-link")  # a directory link: sent as a link
    out = io.BytesIO()
    buildctx.write_archive(load(spec).builds["web"], out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        link = tar.getmember("sub-link")
        assert link.issym() and link.linkname == "sub"
        assert "sub-link/a.txt" not in tar.getnames() and "sub/a.txt" in tar.getnames()
    os.unlink(spec / "app" / "Dockerfile")
    os.mkfifo(spec / "app" / "Dockerfile")
    assert "dockerfile 'Dockerfile'" in errors(spec) and "is a FIFO" in errors(spec)


# shared/ next to the checkout (/work/main) or next to the worktrees' directory (/work/wt/x)
NGINX_FLASK_MYSQL = next(
    (found for up in Path(__file__).resolve().parents[3:5]
     if (found := up / "shared" / "realworld"
         / "docker__awesome-compose__nginx-flask-mysql__compose.yaml").is_file()),
    Path("shared/realworld/docker__awesome-compose__nginx-flask-mysql__compose.yaml"))


@pytest.mark.skipif(not NGINX_FLASK_MYSQL.is_file(), reason=f"{NGINX_FLASK_MYSQL} is absent")
def test_realworld_nginx_flask_mysql_imports_validates_and_plans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The awesome-compose file with its build contexts (stand-ins of the repository's
    backend/ and proxy/ directories, which shared/realworld does not hold)."""
    project = tmp_path / "nginx-flask-mysql"
    (project / ".git").mkdir(parents=True)
    (project / "compose.yaml").write_text(NGINX_FLASK_MYSQL.read_text())
    for name, dockerfile in (("backend", "FROM python:3.10-alpine AS builder\nCOPY . /code\n"),
                             ("proxy", "FROM nginx:1.13-alpine\nCOPY conf /etc/nginx/conf.d/"
                                       "default.conf\n")):
        (project / name).mkdir()
        (project / name / "Dockerfile").write_text(dockerfile)
    (project / "proxy" / "conf").write_text("server { listen 80; }\n")
    (project / "db").mkdir()
    (project / "db" / "password.txt").write_text("db-password-for-the-test\n")
    specs = project / "specs"
    code = cli.main(["import-compose", str(project / "compose.yaml"), "-o", str(specs),
                     "--secrets-dir", str(tmp_path / "secrets")])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert cli.main(["validate", "--no-strict", "--spec", str(specs)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert cli.main(["plan", "--json", "--spec", str(specs), "--state-dir",
                     str(tmp_path / "state")]) in (0, 2)
    plan = json.loads(capsys.readouterr().out)
    builds = {b["service"]: b for b in plan["builds"]}
    assert set(builds) == {"backend", "proxy"}
    assert builds["backend"]["target"] == "builder"
    assert builds["backend"]["context"] == str((project / "backend").resolve())
    created = {s["service"] for s in plan["steps"] if s["action"] == "create"}
    assert {"db", "backend", "proxy"} <= created


def test_the_editor_schema_takes_both_build_forms() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    root = Path(__file__).resolve().parents[2]
    validator = jsonschema.Draft202012Validator(
        json.loads((root / "reconciler.schema.json").read_text()))
    for build in ("./app", {"context": "./app", "dockerfile": "Dockerfile.prod",
                            "target": "runtime", "args": {"A": 1, "B": "x"}},
                  {"context": ".", "args": ["A=1"]}):
        doc = {"services": {"web": {"tier": "core", "build": build}}}
        assert not [e.message for e in validator.iter_errors(doc)], build
    doc = {"services": {"web": {"tier": "core", "build": {"context": ".", "secrets": ["x"]}}}}
    assert not validator.is_valid(doc)
