"""The shared capped YAML reader (`yamlread`), bounded file reads (`hostfiles`), the
importer's secret handling and `printable`, without a subprocess; and a hypothesis fuzz of
the loader and the importer with the caps on (2,000 examples, derandomized: no crash, no
exception but the located refusal)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import yamlread
from reconciler.core.envfiles import parse_dotenv
from reconciler.core.model import SpecError
from reconciler.core.printable import clean, clean_keep_colors
from reconciler.hostfiles import Refused, read_regular_file
from reconciler.importer import Kind, Source, import_compose
from reconciler.importer.cli import _dotenv_value
from reconciler.loading import MAX_ENV_FILE_BYTES, load
from reconciler.yamlread import Budget, YamlRefused

SECRET = "s3cr3t-value-never-printed"


def refusal(text: str, *, lines: bool = True) -> YamlRefused:
    with pytest.raises(YamlRefused) as info:
        yamlread.parse(text, "f.yaml", lines=lines)
    return info.value


# --- the reader's caps ---------------------------------------------------------------------


def test_depth_32_reads_and_33_is_refused_with_line_and_key() -> None:
    assert yamlread.parse("a: " + "[" * 31 + "]" * 31 + "\n", "f.yaml") is not None
    exc = refusal("a:\n  b: " + "[" * 32 + "]" * 32 + "\n")
    assert (exc.line, exc.path[:3], exc.message) == (2, ("a", "b", 0),
                                                     "nesting deeper than 32 levels")


@pytest.mark.parametrize("lines", [True, False])
def test_expanded_size_counts_scalar_bytes(lines: bool) -> None:
    text = "a: &s '" + "x" * 100_000 + "'\nb: [" + ", ".join(["*s"] * 200) + "]\n"
    exc = refusal(text, lines=lines)
    assert exc.path == ("b", 166) and "bytes of text after expanding aliases" in exc.message


def test_alias_count_is_capped() -> None:
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 1001) + "]\n"
    assert refusal(text).message == "more than 1000 aliases (YAML bomb?)"


def test_merge_keys_count_at_their_expanded_size() -> None:
    text = "base: &b {" + ", ".join(f"k{i}: {i}" for i in range(500)) + "}\n" + "".join(
        f"m{i}: {{<<: *b}}\n" for i in range(500))
    assert "values after expanding aliases" in refusal(text).message


def test_recursive_alias_is_refused() -> None:
    assert "recursive" in refusal("a: &a [1, *a]\n").message


def test_budget_is_shared_by_the_files_of_one_read() -> None:
    text = "a: [" + ", ".join(["1"] * 120_000) + "]\n"
    budget = Budget()
    assert yamlread.parse(text, "one.yaml", budget=budget) is not None
    with pytest.raises(YamlRefused, match="more than 200000 values"):
        yamlread.parse(text, "two.yaml", budget=budget)


@pytest.mark.parametrize("text,key", [("a:\n  1: x\n  '1': y\n", "1"),
                                      ("true: 1\n'true': 2\n", "true"),
                                      ("1.0: a\n'1.0': b\n", "1.0")])
def test_keys_that_collide_as_text_are_refused_with_their_line(text: str, key: str) -> None:
    for lines in (True, False):
        exc = refusal(text, lines=lines)
        assert exc.line == text.count("\n") and exc.path[-1] == key
        assert exc.message.startswith(f"key {key!r} is written twice")


def test_compose_key_collision_is_an_import_error() -> None:
    result = import_compose([Source("c.yml", "services:\n  web:\n    image: a:1\n"
                                             "    labels: {1: a, '1': b}\n")], environ={})
    assert [str(r) for r in result.errors] == [
        "c.yml:4: services.web.labels.1: key '1' is written twice (as different YAML types "
        "that read as the same text)"]


# --- bounded reads -------------------------------------------------------------------------


def test_read_regular_file_refuses_links_fifos_devices_and_big_files(tmp_path: Path) -> None:
    (tmp_path / "ok").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_bytes(b"x" * 1001)
    assert read_regular_file(tmp_path / "ok", 10) == b"x"
    assert read_regular_file(tmp_path / "link", 10, follow=True) == b"x"
    reasons = {}
    for name, path in (("link", tmp_path / "link"), ("fifo", tmp_path / "fifo"),
                       ("big", tmp_path / "big"), ("dir", tmp_path),
                       ("device", Path("/dev/zero")), ("missing", tmp_path / "nope")):
        with pytest.raises(Refused) as info:
            read_regular_file(path, 1000)
        reasons[name] = info.value.reason
    assert reasons == {"link": "is a symlink, not a regular file",
                       "fifo": "is a FIFO, not a regular file",
                       "big": "is larger than 1000 bytes",
                       "dir": "is a directory, not a regular file",
                       "device": "is a character device, not a regular file",
                       "missing": "file not found"}


def test_an_oversized_env_file_is_refused_unread(tmp_path: Path) -> None:
    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "big.env").write_text("A=" + "x" * MAX_ENV_FILE_BYTES + "\n")
    (spec / "big.env").chmod(0o600)
    (spec / "s.yaml").write_text("project: shop\nservices:\n  web:\n    tier: core\n"
                                 "    image: a:1\n    env_file: [big.env]\n")
    with pytest.raises(SpecError) as info:
        load(spec, strict=True)
    assert f"{spec}/big.env: env file of web: is larger than {MAX_ENV_FILE_BYTES} " \
           "bytes" in str(info.value)


# --- the importer never writes or prints a secret ------------------------------------------


def test_secret_outside_environment_is_an_error_that_names_the_variable_only() -> None:
    result = import_compose([Source("c.yml", "services:\n  db:\n    image: a:1\n"
                                             "    command: [serve, '--password=${DB_PASS}']\n")],
                            environ={"DB_PASS": SECRET}, secrets_dir="/s")
    assert not result.ok
    assert [str(r) for r in result.errors] == [
        "c.yml:4: services.db.command[1]: holds a secret ($DB_PASS) that would be written "
        "into the spec in clear: pass it to the container through `environment:` (the import "
        "moves it to an env file) and read it from there"]
    assert SECRET not in repr(result.remarks)


def test_secrets_go_to_per_service_env_files_and_defaults_stay() -> None:
    text = ("services:\n  app:\n    image: a:1\n    environment:\n"
            "      DATABASE_URL: postgres://app:${DBPW}@db/app\n"
            "      ADMIN_PASSWORD: ${UNSET_PW:-changeme}\n      LOG: ${LEVEL}\n      - PASSTHRU\n"
            .replace("      - PASSTHRU\n", "      PASSTHRU:\n"))
    result = import_compose([Source("c.yml", text)], secrets_dir="/srv/secrets/{project}",
                            environ={"DBPW": SECRET, "LEVEL": "info", "PASSTHRU": "p"},
                            out_dir="/repo/specs", project_fallback="shop")
    assert result.ok
    assert result.secrets == {"app": {"DATABASE_URL": f"postgres://app:{SECRET}@db/app",
                                      "PASSTHRU": "p"}}
    assert result.secret_files == {"app": "/srv/secrets/shop/app.env"}
    app = result.services["app"]
    assert app["environment"] == {"ADMIN_PASSWORD": "changeme", "LOG": "info"}
    assert app["env_file"] == ["/srv/secrets/shop/app.env"]
    assert SECRET not in "".join(result.files.values()) + repr(result.remarks)


def test_secrets_need_an_absolute_secrets_dir() -> None:
    result = import_compose([Source("c.yml", "services:\n  app:\n    image: a:1\n"
                                             "    environment: [TOKEN]\n")],
                            environ={"TOKEN": SECRET})
    assert [str(r) for r in result.errors] == [
        "--secrets-dir: secret values must go to an env file: give an absolute directory for "
        "them"]


def test_number_errors_quote_the_compose_text_not_the_value() -> None:
    result = import_compose([Source("c.yml", "services:\n  app:\n    image: a:1\n"
                                             "    scale: ${REPLICAS}\n")],
                            environ={"REPLICAS": SECRET})
    assert [str(r) for r in result.errors] == [
        "c.yml:4: services.app.scale: expected an integer, got '${REPLICAS}'"]


@pytest.mark.parametrize("value", ["plain", " padded ", "'quoted'", 'say "hi"', "a #b", "",
                                   "x=y", "it's"])
def test_secrets_file_values_read_back_unchanged(value: str) -> None:
    values, _, errors = parse_dotenv(f"K={_dotenv_value('K', value)}\n")
    assert not errors and values["K"].value == value


# --- printable -----------------------------------------------------------------------------


def test_clean_escapes_controls_and_keeps_only_plain_colors() -> None:
    assert clean("a\x1b[2Jb\x07c\u202ed\n\te") == "a\\x1b[2Jb\\x07c\\u202ed\n\te"
    assert clean_keep_colors("\x1b[31mred\x1b[0m \x1b]0;t\x07") == \
        "\x1b[31mred\x1b[0m \\x1b]0;t\\x07"


# --- fuzz ----------------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("RECONCILER_FUZZ_EXAMPLES", "1000"))  # per target: 2 x 1,000
TOKENS = ["services:", "project: shop", "  ", "    ", "\n", "- ", ": ", "{", "}", "[", "]",
          ", ", "&a ", "*a", "&b ", "*b", "<<: *a", "<<: ", "? ", "!!binary ", "!!set ",
          "!!python/object:os.system ", "1", "'1'", "true", "~", "web", "image: a:1",
          "tier: core", "environment:", "${X}", "${DB_PASSWORD}", "${X:?m $DB_PASSWORD}",
          "$$", "name: ", "- DB_PASSWORD", "API_KEY: ", "x-a", "'", '"', "#",
          "\t", "\x1b[2J", "%YAML 1.1\n", "---\n", "...\n", "|\n", ">\n", "\x00", "\u202e"]
yamlish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)),
                   max_size=60).map("".join)


@st.composite
def bombs(draw: st.DrawFn) -> str:
    """Alias bombs and deep nesting of random shape, as compose or spec text."""
    kind = draw(st.sampled_from(["laughs", "scalar", "deep", "merge"]))
    if kind == "deep":
        n = draw(st.integers(1, 3000))
        open_, close = draw(st.sampled_from([("[", "]"), ("{a: ", "}"), ("- ", "")]))
        return "services: " + open_ * n + "x" + close * n + "\n"
    fan, levels = draw(st.integers(1, 12)), draw(st.integers(1, 9))
    text = "x-a: &l0 " + ("'" + "y" * draw(st.integers(1, 5000)) + "'" if kind == "scalar"
                          else "[" + ", ".join(["y"] * fan) + "]") + "\n"
    for i in range(1, levels):
        if kind == "merge":
            text += f"x-{i}: &l{i} {{<<: *l{i - 1}, k{i}: " + ", ".join(
                [f"*l{i - 1}"] * 1) + "}\n"
        else:
            text += f"x-{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]\n"
    return text + f"services:\n  web:\n    image: a:1\n    command: *l{levels - 1}\n"


inputs = st.one_of(yamlish, bombs(), st.text(max_size=300))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=inputs)
def test_fuzz_loader_refuses_cleanly(tmp_path: Path, text: str) -> None:
    spec = tmp_path / "fuzz"
    spec.mkdir(exist_ok=True)
    (spec / "spec.yaml").write_bytes(text.encode("utf-8", "surrogatepass"))
    t0 = time.process_time()
    try:
        load(spec, strict=False)
    except SpecError as exc:
        assert exc.problems and all(str(p).startswith(p.location.file) for p in exc.problems)
    assert time.process_time() - t0 < 2.0


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(text=inputs)
def test_fuzz_importer_refuses_cleanly(text: str) -> None:
    t0 = time.process_time()
    result = import_compose([Source("c.yml", text)], environ={"X": "x", "DB_PASSWORD": SECRET},
                            secrets_dir="/nonexistent/secrets")
    assert time.process_time() - t0 < 2.0
    for remark in result.remarks:
        assert remark.file and SECRET not in str(remark)
        if remark.kind is Kind.ERROR and remark.file == "c.yml":
            assert str(remark).startswith("c.yml")
    assert SECRET not in "".join(result.files.values())


def test_a_merged_section_redefined_as_a_scalar_is_a_located_error(tmp_path: Path) -> None:
    """Found by the mutation fuzz: `services` a mapping in one file and a list in another
    crashed the merge (KeyError) instead of naming both files."""
    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "a.yaml").write_text("project: p\nservices:\n  a: {tier: core, image: x:1}\n")
    (spec / "b.yaml").write_text("services: [1]\n")
    with pytest.raises(SpecError) as info:
        load(spec, strict=False)
    assert f"{spec}/b.yaml:1: services: already defined in {spec}/a.yaml" in str(info.value)
