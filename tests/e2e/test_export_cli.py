"""`reconciler export kubernetes` as a user runs it (a subprocess, no Docker engine, no
cluster): both shipped specs export and validate with 0 errors, a secret canary never reaches
the output directory, bad input is named by file:line:key without a traceback, and a
directory holding other files is never overwritten."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CANARY = "canary-4be1d07c93-never-exported"


def export(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_DEBUG"}
    return subprocess.run([sys.executable, "-m", "reconciler.cli", "export", "kubernetes",
                           *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=env)


def all_text(directory: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(directory.rglob("*")) if p.is_file())


@pytest.mark.parametrize("spec, extra", [
    ("deploy/demo", ["--edge", "nginx", "--secrets", "sealed-secret"]),
    ("specs", ["--profile", "admin", "--argocd-app", "metro", "--repo",
               "https://git.example.org/ops/metro.git", "--path", "k8s"]),
])
def test_shipped_specs_export_and_validate(tmp_path: Path, spec: str, extra: list[str]) -> None:
    out = tmp_path / "k8s"
    res = export("--spec", spec, "-o", str(out), "--validate", *extra)
    assert res.returncode == 0, res.stdout + res.stderr
    assert ": 0 errors" in res.stdout
    assert "Traceback" not in res.stderr
    assert (out / "kustomization.yaml").is_file()
    listed = (out / "kustomization.yaml").read_text()
    for path in out.rglob("*.yaml"):
        rel = path.relative_to(out).as_posix()
        if rel not in ("kustomization.yaml", "argocd/application.yaml"):
            assert f"- {rel}\n" in listed, rel
    # the findings name file:line:key
    assert "no Kubernetes equivalent" in res.stdout or spec == "deploy/demo"
    if spec == "specs":
        # the line of mongodb's `ulimits:` (the first one in the file; kafka's comes later)
        infra = (REPO / "specs" / "10-infrastructure.yaml").read_text().splitlines()
        line = next(n for n, text in enumerate(infra, 1) if text.strip().startswith("ulimits:"))
        assert f"specs/10-infrastructure.yaml:{line}: services.mongodb.ulimits" in res.stdout
        assert (out / "argocd" / "application.yaml").is_file()
    # a second export replaces the first one
    again = export("--spec", spec, "-o", str(out), *extra)
    assert again.returncode == 0, again.stderr


def test_secret_canary_never_reaches_the_output(tmp_path: Path) -> None:
    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "db.env").write_text(f"DB_PASSWORD={CANARY}\nDB_USER=app\n"
                                 f"JWT_SECRET='{CANARY}-jwt'\n")
    (spec / "db.env").chmod(0o600)
    (spec / "stack.yaml").write_text(textwrap.dedent("""\
        project: canary
        networks: {backend: {internal: true}}
        volumes: {db-data: {}}
        services:
          db:
            tier: infrastructure
            image: postgres:16
            env_file: [db.env]
            volumes: ["db-data:/var/lib/postgresql/data"]
            networks: [backend]
            update: {order: stop-first}
            healthcheck: {test: ["CMD-SHELL", "pg_isready"]}
          app:
            tier: core
            image: app:1
            env_file: [db.env]
            environment: {DB_HOST: db}
            networks: [backend]
            depends_on: [db]
        """))
    for mode in ("script", "external-secret", "sealed-secret"):
        out = tmp_path / f"out-{mode}"
        res = export("--spec", str(spec), "-o", str(out), "--secrets", mode, "--validate")
        assert res.returncode == 0, res.stdout + res.stderr
        text = all_text(out)
        assert CANARY not in text + res.stdout + res.stderr
        assert "DB_PASSWORD" in text  # the key is referenced, the value is not
        assert "secretRef" in text


def test_bad_input_names_file_line_and_key(tmp_path: Path) -> None:
    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "stack.yaml").write_text(textwrap.dedent("""\
        project: bad
        services:
          web:
            tier: core
            image: web:1
            replicas: many
        """))
    res = export("--spec", str(spec), "-o", str(tmp_path / "out"))
    assert res.returncode == 1
    assert f"{spec / 'stack.yaml'}:6: services.web.replicas" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "out").exists()


def test_usage_errors_without_traceback(tmp_path: Path) -> None:
    res = export("-o", str(tmp_path / "a"), "--argocd-app", "metro")
    assert res.returncode == 2 and "--repo" in res.stderr
    res = export("-o", str(tmp_path / "a"), "--namespace", "Not_Valid")
    assert res.returncode == 2 and "DNS-1123" in res.stderr
    res = export("--spec", str(tmp_path / "missing"), "-o", str(tmp_path / "b"))
    assert res.returncode == 1 and "spec directory not found" in res.stderr
    for r in (res,):
        assert "Traceback" not in r.stderr


def test_never_overwrites_other_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.yaml").write_text("keep: me\n")
    res = export("--spec", "deploy/demo", "-o", str(out))
    assert res.returncode == 1 and "--force" in res.stderr
    assert (out / "mine.yaml").read_text() == "keep: me\n"
    assert not (out / "kustomization.yaml").exists()


def test_reexport_removes_stale_files_and_keeps_hand_written_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = export("--spec", "deploy/demo", "-o", str(out), "--profile", "admin")
    assert first.returncode == 0, first.stderr
    assert (out / "external" / "admin-console.yaml").is_file()
    (out / "overlays").mkdir()
    (out / "overlays" / "mine.yaml").write_text("keep: me\n")
    second = export("--spec", "deploy/demo", "-o", str(out))
    assert second.returncode == 0, second.stderr
    assert not (out / "external" / "admin-console.yaml").exists()
    assert (out / "external" / "nginx.yaml").is_file() is False  # ingress mode: no nginx
    assert (out / "overlays" / "mine.yaml").read_text() == "keep: me\n"
    assert "admin-console" not in (out / "kustomization.yaml").read_text()
