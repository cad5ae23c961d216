"""Signed bundles: OpenSSF Model Signing (the `model-signing` library, sigstore's) with elliptic-curve keys, offline.

What is signed is the release: `manifest.json` and every artifact it lists (files and directory trees), hashed by
model-signing's file serialization. Everything else in the run directory (training curves, logs, reports that are
not artifacts, a `deploy/` output) is recorded in the signature as ignored, and verification re-hashes exactly the
signed files (model-signing's `set_ignore_unsigned_files`): files outside the release may come and go, while a signed
file that changed or went missing breaks the signature. The signature is a sidecar file in the bundle
(`SIGNATURE_NAME`), excluded from what it signs; it is not an artifact, so `bundle diff` and the byte-reproducibility
checks (which compare artifacts) never see it.

Verification is model-signing's: the DSSE envelope is checked against the public key, then every signed file is
re-hashed. When that fails, the signed statement (an in-toto statement whose predicate lists every file and its
digest, the format model-signing documents) is read back to name each file that changed or went missing.
model-signing and cryptography are imported only here, only when signing or verifying (the `[signing]` extra), so the
base install and a server without `--trusted-key` never load them. No TensorFlow.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from kerasport.errors import CheckFailed, UsageError
from kerasport.fsutil import atomic_path, sha256_file
from kerasport.manifest import MANIFEST_NAME, load_manifest

SIGNATURE_NAME = "bundle.sig"
HASH_ALGORITHM = "sha256"
INSTALL_HINT = "pip install 'kerasport[signing]'"


@dataclass(frozen=True)
class SignatureCheck:
    """A verified signature: the bundle, how many files it covers, and the public key's sha256 (of its DER form)."""

    run_dir: Path
    files: int
    key_sha256: str


def signature_path(run_dir: str | Path) -> Path:
    """Where a bundle's signature lives."""
    return Path(run_dir) / SIGNATURE_NAME


def is_signed(run_dir: str | Path) -> bool:
    return signature_path(run_dir).is_file()


def signed_roots(run_dir: str | Path) -> list[str]:
    """What the signature covers, relative to the bundle: manifest.json and each artifact's path (sorted).

    Raises:
        UsageError: no bundle (manifest.json missing). CheckFailed: the manifest is invalid.
    """
    manifest = load_manifest(run_dir)
    # A variant export recorded as failed has no file: nothing to sign.
    return sorted({MANIFEST_NAME, *(Path(artifact.path).as_posix() for artifact in manifest.artifacts()
                                    if artifact.status == "ok")})


def ignored_paths(run_dir: str | Path) -> list[str]:
    """Every top-most path under the bundle that holds nothing the signature covers (the signature included)."""
    root = Path(run_dir)
    covered = {Path(path) for path in signed_roots(root)}
    ancestors = {parent for path in covered for parent in path.parents if parent != Path(".")}
    ignored: list[str] = []

    def visit(folder: Path) -> None:
        for child in sorted(folder.iterdir()):
            relative = child.relative_to(root)
            if relative in covered:
                continue
            if relative in ancestors and child.is_dir():
                visit(child)
            else:
                ignored.append(relative.as_posix())

    visit(root)
    return sorted({*ignored, SIGNATURE_NAME})


def sign_bundle(run_dir: str | Path, private_key: str | Path, password: str | None = None) -> SignatureCheck:
    """Sign the bundle with an elliptic-curve private key (PEM); the signature is written to `SIGNATURE_NAME`.

    Args:
        run_dir: the run directory holding manifest.json.
        private_key: a PEM elliptic-curve private key (PKCS#8 or SEC1).
        password: the key's password, if it is encrypted.

    Returns:
        The signature check of what was just signed (verified with the key's public half).

    Raises:
        UsageError: no bundle, an artifact the manifest lists is missing, the key cannot be read or is not an
            elliptic-curve private key, or model-signing is not installed (exit 2).
    """
    root = Path(run_dir)
    roots = signed_roots(root)
    missing = [path for path in roots if not (root / path).exists()]
    if missing:
        raise UsageError(f"{root}: {', '.join(missing)} listed in the manifest but missing; expected a complete "
                         f"bundle to sign (re-run the stage that writes it)")
    key = _private_key(private_key, password)
    signing, hashing = _library("signing"), _library("hashing")
    hashing_config = hashing.Config().use_file_serialization(hashing_algorithm=HASH_ALGORITHM).set_ignored_paths(
        paths=ignored_paths(root), ignore_git_paths=True)
    config = signing.Config().set_hashing_config(hashing_config).use_elliptic_key_signer(
        private_key=Path(private_key), password=password)
    # model-signing hashes the files, then writes the signature: to a staging name (created only after the
    # hashing, so never hashed) that replaces the old signature only once it is complete.
    with atomic_path(signature_path(root)) as staging:
        config.sign(root, staging)
    return SignatureCheck(run_dir=root, files=len(_signed_resources(signature_path(root))),
                          key_sha256=_key_fingerprint(key.public_key()))


def verify_signature(run_dir: str | Path, public_key: str | Path) -> SignatureCheck:
    """Check the bundle's signature with an elliptic-curve public key (PEM) and re-hash every signed file.

    Args:
        run_dir: the run directory holding manifest.json and its signature.
        public_key: the PEM public key matching the signer's private key.

    Returns:
        The bundle, the number of signed files and the key's fingerprint.

    Raises:
        UsageError: the key cannot be read or is not an elliptic-curve public key, or model-signing is not
            installed (exit 2).
        CheckFailed: no signature, a signature made with another key or not a valid one, or files that differ from
            what was signed — the message names each (exit 1).
    """
    root = Path(run_dir)
    key = _public_key(public_key)
    sig = signature_path(root)
    if not sig.is_file():
        raise CheckFailed(f"{root} is not signed: no {SIGNATURE_NAME}; expected one from `kerasport bundle sign`")
    verifying = _library("verifying")
    config = verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key)).set_ignore_unsigned_files(True)
    try:
        config.verify(root, sig)
    except ValueError as error:
        text = str(error)
        if text.startswith("Key mismatch"):
            raise CheckFailed(f"{sig}: signed with another key than {public_key} (its key hint differs)") from None
        # The envelope is checked before the files are hashed, so a file problem here is what failed.
        problems = file_problems(root, sig)
        if problems:
            raise CheckFailed(f"{root}: signature does not match the files: {'; '.join(problems)}") from None
        raise CheckFailed(f"{sig}: not a valid signature for {public_key} ({_one_line(text)})") from None
    except Exception as error:  # noqa: BLE001 - a corrupt signature file fails in the library's parsers
        raise CheckFailed(f"{sig}: not a valid signature ({type(error).__name__}: {_one_line(str(error))})") \
            from None
    return SignatureCheck(run_dir=root, files=len(_signed_resources(sig)), key_sha256=_key_fingerprint(key))


def file_problems(run_dir: Path, sig: Path) -> list[str]:
    """Each signed file that changed since signing or went missing, by its path in the bundle."""
    try:
        signed = _signed_resources(sig)
    except (ValueError, KeyError, TypeError):  # not a signature at all: the caller reports that
        return []
    problems = []
    for name, digest in sorted(signed.items()):
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name} changed since signing")
    return problems


def _signed_statement(sig: Path) -> dict:
    envelope = json.loads(sig.read_text())["dsseEnvelope"]
    return json.loads(base64.b64decode(envelope["payload"]))


def _signed_resources(sig: Path) -> dict[str, str]:
    return {item["name"]: item["digest"] for item in _signed_statement(sig)["predicate"]["resources"]}


def _library(module: str):
    import importlib

    try:
        return importlib.import_module(f"model_signing.{module}")
    except ImportError as error:
        raise UsageError(f"signing needs model-signing ({error.name} is not installed); expected: {INSTALL_HINT}") \
            from None


def _read_key(path: str | Path, kind: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"{kind} key {path}: cannot read it ({error.strerror}); expected a PEM file") from None


def _private_key(path: str | Path, password: str | None):
    serialization, ec = _crypto()
    data = _read_key(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except (ValueError, TypeError) as error:
        raise UsageError(f"private key {path}: not a readable PEM private key ({_one_line(str(error))}); expected "
                         f"an elliptic-curve key, e.g. from `openssl ecparam -name prime256v1 -genkey -noout`") \
            from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"private key {path} is a {type(key).__name__}; expected an elliptic-curve private key")
    return key


def _public_key(path: str | Path):
    serialization, ec = _crypto()
    data = _read_key(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise UsageError(f"public key {path}: not a readable PEM public key ({_one_line(str(error))}); expected the "
                         f"signer's elliptic-curve public key (`openssl ec -in KEY -pubout`)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UsageError(f"public key {path} is a {type(key).__name__}; expected an elliptic-curve public key")
    return key


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise UsageError(f"signing needs cryptography and model-signing; expected: {INSTALL_HINT}") from None
    return serialization, ec


def _key_fingerprint(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
