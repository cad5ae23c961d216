"""`kerasport bundle sign` / `bundle verify --public-key`: OpenSSF Model Signing with elliptic-curve keys.

A one-byte change to any signed file (the manifest or any file of any artifact) fails verification naming that file,
as does a signature made with another key; a key that cannot be read is a usage error (exit 2). The bundle is a tiny
imported regressor exported to ONNX (devtools/repository_bundles.py)."""

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devtools.keys import write_key_pair
from kerasport.app.cli import app
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, CheckFailed
from kerasport.manifest import MANIFEST_NAME
from kerasport.signing import SIGNATURE_NAME, is_signed, signed_roots, verify_signature

runner = CliRunner()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {"alice": write_key_pair(folder, "alice"), "mallory": write_key_pair(folder, "mallory")}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys, regressor_versions) -> Path:
    run = Path(shutil.copytree(regressor_versions[1], tmp_path_factory.mktemp("signed") / "run"))
    result = runner.invoke(app, ["bundle", "sign", "--run", str(run), "--key", str(keys["alice"].private)])
    assert result.exit_code == EXIT_OK, result.output
    return run


@pytest.fixture
def signed_copy(signed, tmp_path) -> Path:
    return Path(shutil.copytree(signed, tmp_path / "run"))


def verify(run, public):
    return runner.invoke(app, ["bundle", "verify", "--run", str(run), "--public-key", str(public)])


def signed_files(run: Path) -> list[Path]:
    files = []
    for root in signed_roots(run):
        path = run / root
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return files


def test_a_signed_bundle_verifies_with_the_signers_public_key(signed, keys):
    result = verify(signed, keys["alice"].public)
    assert result.exit_code == EXIT_OK, result.output
    assert "signature verified" in result.output
    assert is_signed(signed)
    assert verify_signature(signed, keys["alice"].public).files == len(signed_files(signed))


def test_a_one_byte_change_to_any_signed_file_fails_naming_it(signed_copy, keys):
    files = signed_files(signed_copy)
    assert signed_copy / MANIFEST_NAME in files and len(files) > 3
    for path in files:
        original = path.read_bytes()
        middle = len(original) // 2
        path.write_bytes(original[:middle] + bytes([original[middle] ^ 1]) + original[middle + 1:])
        try:
            name = path.relative_to(signed_copy).as_posix()
            # The signature alone names the file, whatever else the manifest check says first.
            with pytest.raises(CheckFailed, match=f"{name} changed since signing"):
                verify_signature(signed_copy, keys["alice"].public)
            result = verify(signed_copy, keys["alice"].public)
            assert result.exit_code == EXIT_CHECK_FAILED, (name, result.output)
        finally:
            path.write_bytes(original)
    assert verify(signed_copy, keys["alice"].public).exit_code == EXIT_OK


def test_a_missing_signed_file_is_named(signed_copy, keys):
    artifact = signed_files(signed_copy)[-1]
    artifact.unlink()
    with pytest.raises(CheckFailed, match=f"{artifact.relative_to(signed_copy).as_posix()} missing"):
        verify_signature(signed_copy, keys["alice"].public)


def test_resigned_with_another_key_fails(signed_copy, keys):
    result = runner.invoke(app, ["bundle", "sign", "--run", str(signed_copy), "--key", str(keys["mallory"].private)])
    assert result.exit_code == EXIT_OK, result.output
    result = verify(signed_copy, keys["alice"].public)
    assert result.exit_code == EXIT_CHECK_FAILED
    assert "another key" in result.output and SIGNATURE_NAME in result.output
    assert verify(signed_copy, keys["mallory"].public).exit_code == EXIT_OK


def test_files_outside_the_release_may_change(signed_copy, keys):
    (signed_copy / "deploy").mkdir()
    (signed_copy / "deploy" / "notes.txt").write_text("packaged later")
    assert verify(signed_copy, keys["alice"].public).exit_code == EXIT_OK


def test_unsigned_and_garbled_signatures_fail(signed_copy, keys):
    (signed_copy / SIGNATURE_NAME).write_text("{not json")
    result = verify(signed_copy, keys["alice"].public)
    assert result.exit_code == EXIT_CHECK_FAILED and "not a valid signature" in result.output
    (signed_copy / SIGNATURE_NAME).unlink()
    result = verify(signed_copy, keys["alice"].public)
    assert result.exit_code == EXIT_CHECK_FAILED and "is not signed" in result.output


def test_a_key_that_cannot_be_read_is_a_usage_error(signed, keys, tmp_path):
    missing = tmp_path / "absent.pub"
    for public in (missing, keys["alice"].private):  # absent; a private key where the public one belongs
        result = verify(signed, public)
        assert result.exit_code == EXIT_USAGE, result.output
        assert str(public) in result.output
    result = runner.invoke(app, ["bundle", "sign", "--run", str(signed), "--key", str(keys["alice"].public)])
    assert result.exit_code == EXIT_USAGE and "private key" in result.output


def test_the_signature_is_not_part_of_bundle_diff(signed, tmp_path):
    unsigned = Path(shutil.copytree(signed, tmp_path / "unsigned"))
    (unsigned / SIGNATURE_NAME).unlink()
    result = runner.invoke(app, ["bundle", "diff", str(signed), str(unsigned), "--no-weights"])
    assert result.exit_code == EXIT_OK, result.output
