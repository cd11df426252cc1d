"""Integrity against tampering, on both backends: the production pointer and its history record the
manifest's own SHA-256, a URI pinned to that digest refuses any other manifest, promotion verifies every
file first, ``registry show`` notices bad files, and malformed manifests or cards are one-line refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from components.errors import ModelFormatError
from components.modelfile import CARD_FILE, MANIFEST_FILE, WEIGHTS_FILE, ModelCard, build_manifest, verify_manifest
from components.registry import Registry, materialize, pinned_uri, validate_model_name
from components.store import open_store
from pipelines.registry_cli import main
from tests.test_registry import MODEL, push_tagged


def manifest_key(registry: Registry, version: int) -> str:
    return f"{registry.version_prefix(version)}/{MANIFEST_FILE}"


def forge(registry: Registry, version: int, weights: bytes) -> None:
    """Replace a version's weights *and* their hash in its manifest, forging its metrics too: a consistent tamper."""
    registry.store.write_bytes(f"{registry.version_prefix(version)}/{WEIGHTS_FILE}", weights)
    manifest = json.loads(registry.store.read_bytes(manifest_key(registry, version)))
    manifest["files"][WEIGHTS_FILE] = {"sha256": hashlib.sha256(weights).hexdigest(), "size": len(weights)}
    manifest["metrics"] = {"accuracy": 1.0}
    registry.store.write_bytes(manifest_key(registry, version), json.dumps(manifest).encode())


@pytest.mark.parametrize("name", ["digits\n", "digits\r\n", "Digits", "-digits", "a" * 64])
def test_a_model_name_with_a_trailing_newline_or_other_stray_characters_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="expected a model name"):
        validate_model_name(name)


def test_the_pointer_and_its_history_record_the_manifest_digest(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "a")
    digest = hashlib.sha256(registry.store.read_bytes(manifest_key(registry, 1))).hexdigest()
    pointer = registry.promote(1, "run-1")
    assert pointer.record["manifest_sha256"] == digest
    assert registry.production().record["manifest_sha256"] == digest
    assert registry.history()[-1]["manifest_sha256"] == digest


def test_promote_verifies_every_file_first_and_leaves_the_pointer_alone_when_one_fails(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "a")
    registry.store.write_bytes(f"{registry.version_prefix(1)}/{WEIGHTS_FILE}", b"swapped weights")
    with pytest.raises(ModelFormatError, match=f"{WEIGHTS_FILE} .* has SHA-256 .* manifest says"):
        registry.promote(1, "operator")
    assert registry.production().version is None and registry.history() == []


def test_a_uri_pinned_to_the_promoted_manifest_refuses_a_manifest_rewritten_afterwards(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "a")
    pointer = registry.promote(1, "run-1")
    uri = pinned_uri(registry.version_uri(1), pointer.record["manifest_sha256"])
    assert verify_manifest(materialize(uri, tmp_path / "ok"))["version"] == 1
    forge(registry, 1, b"other weights")
    verify_manifest(materialize(registry.version_uri(1), tmp_path / "unpinned"))  # self-consistent: only the digest can tell
    with pytest.raises(ModelFormatError, match=f"{MANIFEST_FILE} .* has SHA-256 .*, expected {pointer.record['manifest_sha256']}"):
        materialize(uri, tmp_path / "pinned")


def test_registry_promote_of_a_version_with_a_bad_file_exits_non_zero_naming_the_file(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "a")
    registry.store.write_bytes(f"{registry.version_prefix(1)}/{CARD_FILE}", b"{}")
    code = main(["registry", "promote", "--store", store_uri, "--model", MODEL, "--version", "1"])
    err = capsys.readouterr().err
    assert code == 1 and CARD_FILE in err and len(err.strip().splitlines()) == 1
    assert registry.production().version is None


def test_registry_show_notices_a_file_that_fails_its_hash(store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "a")
    assert main(["registry", "show", "--store", store_uri, "--model", MODEL, "--version", "1"]) == 0
    assert "3 files verified" in capsys.readouterr().out
    registry.store.write_bytes(f"{registry.version_prefix(1)}/{WEIGHTS_FILE}", b"swapped weights")
    code = main(["registry", "show", "--store", store_uri, "--model", MODEL, "--version", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and json.loads(out)["version"] == 1  # the manifest is still shown, and the bad file named
    assert WEIGHTS_FILE in err and "SHA-256" in err and len(err.strip().splitlines()) == 1
    code = main(["registry", "show", "--store", store_uri, "--model", MODEL, "--version", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and out.startswith(f"{MODEL} version 1\n") and "files verified" not in out
    assert WEIGHTS_FILE in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not json", "JSON"),
        ("[]", "an object"),
        ('{"files": []}', "files"),
        ('{"files": {"model.safetensors": "abc"}}', "model.safetensors"),
        ('{"files": {"model.safetensors": {"sha256": 5, "size": 1}}}', "sha256"),
        ('{"files": {"../model.json": {"sha256": "' + "0" * 64 + '", "size": 1}}}', "../model.json"),
    ],
)
def test_a_malformed_manifest_is_a_one_line_refusal_naming_the_field(version_folder: Path, text: str, field: str) -> None:
    (version_folder / MANIFEST_FILE).write_text(text)
    with pytest.raises(ModelFormatError, match=MANIFEST_FILE) as caught:
        verify_manifest(version_folder)
    assert field in str(caught.value) and "\n" not in str(caught.value)


def test_a_malformed_manifest_in_the_registry_is_refused_not_a_traceback(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "a")
    registry.store.write_bytes(manifest_key(registry, 1), b'{"files": 7}')
    with pytest.raises(ModelFormatError, match=f"{MANIFEST_FILE} of {MODEL} version 1"):
        registry.manifest(1)


def test_a_manifest_copied_from_another_version_is_refused(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "a")
    push_tagged(store_uri, str(tmp_path / "b"), "b")
    registry.store.write_bytes(manifest_key(registry, 2), registry.store.read_bytes(manifest_key(registry, 1)))
    with pytest.raises(ModelFormatError, match="says version 1"):
        registry.manifest(2)


CARD = {"arch": "small_cnn", "in_channels": 1, "height": 28, "width": 28, "class_names": ["0", "1"], "mean": [0.1], "std": [0.3]}


@pytest.mark.parametrize(
    ("field", "value"),
    [("height", 100000), ("width", 0), ("in_channels", 1000), ("height", "28"), ("class_names", "01"),
     ("class_names", []), ("std", [0.0]), ("arch", 5)],
)
def test_a_model_card_claiming_an_impossible_input_is_refused_before_anything_is_allocated(field: str, value) -> None:
    with pytest.raises(ModelFormatError, match=f"model.json {field}") as caught:
        ModelCard.from_json(json.dumps({**CARD, field: value}))
    assert "\n" not in str(caught.value)


def test_a_served_version_whose_card_claims_a_huge_input_is_refused(version_folder: Path) -> None:
    card = json.loads((version_folder / CARD_FILE).read_text())
    (version_folder / CARD_FILE).write_text(json.dumps({**card, "height": 100000, "width": 100000}))
    (version_folder / MANIFEST_FILE).write_text(json.dumps(build_manifest(version_folder, {"version": 1})))
    from components.modelfile import load_model

    with pytest.raises(ModelFormatError, match="model.json height"):
        load_model(version_folder)


def test_a_manifest_forged_after_promotion_is_noticed_by_show_list_and_a_later_promotion(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "a")
    push_tagged(store_uri, str(tmp_path / "b"), "b")
    registry.promote(1, "run-1")
    registry.promote(2, "run-2")
    forge(registry, 1, b"other weights")  # every file matches the forged manifest: only the recorded digest can tell
    code = main(["registry", "show", "--store", store_uri, "--model", MODEL, "--version", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "changed since it was promoted" in err and len(err.strip().splitlines()) == 1
    assert main(["registry", "list", "--store", store_uri, "--model", MODEL]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "forged?" in rows["1"] and "forged?" not in rows["*"]
    with pytest.raises(ModelFormatError, match="changed since it was promoted"):
        registry.rollback("oncall")
    assert registry.production().version == 2
