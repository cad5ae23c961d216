"""`kerasport package --target container`: a Dockerfile and its build context for a TF-free serving image.

The context (`--out`) holds:

- `wheels/kerasport-*.whl`: built here from kerasport's source tree (`pip wheel --no-deps` of a clean copy of the
  files the wheel needs), or the wheel given with `--wheel`;
- `bundle/`: `manifest.json` and the served variants only, at their usual relative paths. Its manifest is the
  bundle's, trimmed to the copied artifacts (entries, hashes and parity verdicts unchanged; the dropped names are
  recorded in `stages.package.container.trimmed`), so `kerasport bundle verify --run /bundle` checks exactly what
  the image holds. This is cleaner than a verify option that skips missing files: nothing in the image refers to
  a file the image does not have;
  A signed bundle (`kerasport bundle sign`) is copied whole instead — manifest.json unchanged, every artifact it
  lists and `bundle.sig` — since the signature covers exactly those bytes: the image carries the producer's
  signature, and the bundle's own manifest is not touched by packaging (no stage record: it would break it);
- `entrypoint.sh`: `kerasport serve` on 0.0.0.0:8080; when a public key is mounted (`/keys/trusted.pub`, or the
  path in `KERASPORT_TRUSTED_KEY`), with `--trusted-key`, so an unsigned or altered bundle is refused (exit 1)
  before anything serves;
- `Dockerfile`: `python:3.11-slim`, `pip install kerasport[serve]` from the wheel (`[serve,signing]` for a signed
  bundle), the bundle copied in and verified at build time, a non-root user, a HEALTHCHECK on `/v2/health/ready`,
  and the entry point script (arguments after the image name reach `kerasport serve`, e.g. `--variant onnx-fp32`).
  Only plain Dockerfile instructions: Docker, BuildKit, Buildah/Podman and Kaniko all build it.

With `check_install`, the wheel is installed with its `[serve]` extra into a fresh virtual environment (exactly the
image's packages, from pip's cache or index), which gives the image's installed size (`du` of site-packages), runs
the build-time check (`kerasport bundle verify` on `bundle/`) and `kerasport serve --help` with those packages,
checks TensorFlow is absent, and pins the versions (`constraints.txt`, used by the Dockerfile).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import venv
from pathlib import Path

from kerasport.bundle import Stage
from kerasport.errors import ConversionError, UsageError
from kerasport.fsutil import sha256_file
from kerasport.manifest import verify_bundle

from .base import PackageContext, TargetOutput, copy_verified

WHEEL_DIR, BUNDLE_DIR, CONSTRAINTS, DOCKERFILE = "wheels", "bundle", "constraints.txt", "Dockerfile"
BUNDLE_MOUNT, PORT, USER_ID = "/bundle", 8080, 10001
ENTRYPOINT_SCRIPT, ENTRYPOINT_PATH = "entrypoint.sh", "/usr/local/bin/kerasport-entrypoint"
KEY_MOUNT, KEY_ENV, BUNDLE_ENV = "/keys/trusted.pub", "KERASPORT_TRUSTED_KEY", "KERASPORT_BUNDLE"
ENTRYPOINT = [ENTRYPOINT_PATH]
# POSIX sh, so the slim image needs nothing more. An explicitly named key that is missing is kerasport's exit 2, not
# a silent skip; the default mount point is used only when something is mounted there.
ENTRYPOINT_TEXT = f"""#!/bin/sh
# Written by `kerasport package --target container`: serve the bundle, and with a public key mounted at {KEY_MOUNT}
# (or named by {KEY_ENV}) refuse it unless its signature verifies (kerasport serve --trusted-key).
set -eu
bundle="${{{BUNDLE_ENV}:-{BUNDLE_MOUNT}}}"
key="${{{KEY_ENV}:-}}"
if [ -z "$key" ] && [ -f {KEY_MOUNT} ]; then
    key={KEY_MOUNT}
fi
if [ -n "$key" ]; then
    exec kerasport serve --run "$bundle" --host 0.0.0.0 --port {PORT} --trusted-key "$key" "$@"
fi
exec kerasport serve --run "$bundle" --host 0.0.0.0 --port {PORT} "$@"
"""
HEALTH_CHECK = ("import sys, urllib.request; "
                f"sys.exit(urllib.request.urlopen('http://127.0.0.1:{PORT}/v2/health/ready', timeout=2).status != 200)")
LICENSE_GLOBS = ("LICEN[CS]E*", "COPYING*", "NOTICE*", "AUTHORS*")
HEAVY_MODULES = ("tensorflow", "keras")


def source_tree() -> Path:
    """The kerasport source tree this process runs from (an editable or in-place install).

    Raises:
        UsageError: kerasport was installed from a wheel (no pyproject.toml beside it): pass --wheel.
    """
    import kerasport

    root = Path(kerasport.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    try:
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        name = None
    if name != "kerasport":
        raise UsageError(f"kerasport runs from {root}, which is not its source tree (no kerasport pyproject.toml); "
                         f"pass --wheel PATH to a kerasport wheel")
    return root


def build_wheel(dest: Path) -> Path:
    """`pip wheel --no-deps` of a clean copy of the source tree's packaged files, into `dest`.

    Returns:
        The wheel's path.

    Raises:
        UsageError: no source tree (see `source_tree`).
        ConversionError: pip could not build the wheel (its last error line is quoted).
    """
    root = source_tree()
    project = tomllib.loads((root / "pyproject.toml").read_text())
    folders = {"kerasport", *project.get("tool", {}).get("setuptools", {}).get("package-dir", {}).values()}
    extra = [project["project"].get("readme")] if isinstance(project["project"].get("readme"), str) else []
    with tempfile.TemporaryDirectory(prefix="kerasport-wheel-") as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        shutil.copy2(root / "pyproject.toml", source)
        for path in [root / name for name in extra] + [p for pattern in LICENSE_GLOBS for p in root.glob(pattern)]:
            if path.is_file():
                shutil.copy2(path, source / path.name)
        for folder in sorted(folders):
            shutil.copytree(root / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        dest.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", str(dest)],
             "pip wheel", cwd=scratch, timeout=600)
    (wheel,) = dest.glob("kerasport-*.whl")
    return wheel


def _run(command: list[str], what: str, *, cwd: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"{what} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise ConversionError(f"{what} failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}")
    return done


def place_wheel(given: str | None, dest: Path) -> Path:
    """The wheel in the context: a copy of `given`, or one built from the source tree.

    Raises:
        UsageError: `given` is not an existing kerasport wheel.
    """
    if given is None:
        return build_wheel(dest)
    path = Path(given)
    if not (path.is_file() and path.name.startswith("kerasport-") and path.suffix == ".whl"):
        raise UsageError(f"--wheel {given}; expected an existing kerasport-*.whl file")
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(path, dest / path.name))


def write_trimmed_bundle(context: PackageContext, dest: Path) -> dict:
    """Copy manifest.json (trimmed to the chosen artifacts) and the chosen artifacts into `dest`, then verify it.

    Returns:
        {"kept": [...], "dropped": [...], "bytes": total} for the record.

    Raises:
        CheckFailed: a copy does not hash to the manifest's sha256.
    """
    from kerasport.manifest import manifest_path

    trimmed = context.manifest.copy()
    kept = [artifact.name for artifact in context.chosen]
    dropped = [name for name in trimmed.artifact_names() if name not in kept]
    for name in dropped:
        trimmed.remove_artifact(name)
    for artifact in context.chosen:
        copy_verified(context, artifact, dest / artifact.path)
    trimmed.set_stage(Stage.PACKAGE, {"container": {"trimmed": {
        "from_manifest_sha256": sha256_file(manifest_path(context.run_dir)), "kept": kept, "dropped": dropped}}})
    trimmed.save(dest)
    verify_bundle(dest)  # what the Dockerfile's `RUN kerasport bundle verify` does at build time
    return {"kept": kept, "dropped": dropped, "bytes": sum(a.bytes for a in context.chosen)}


def write_signed_bundle(context: PackageContext, dest: Path) -> dict:
    """Copy a signed bundle whole into `dest`: manifest.json and bundle.sig byte for byte, every artifact it lists
    (each re-hashed after copying), then verify it.

    Returns:
        {"kept": the chosen variants, "dropped": [], "bytes": total copied, "signed": True} for the record.

    Raises:
        CheckFailed: a copy does not hash to the manifest's sha256.
    """
    from kerasport.manifest import manifest_path
    from kerasport.signing import SIGNATURE_NAME

    dest.mkdir(parents=True)
    copied = [artifact for artifact in context.manifest.artifacts() if artifact.status == "ok"]
    for artifact in copied:
        copy_verified(context, artifact, dest / artifact.path)
    shutil.copyfile(manifest_path(context.run_dir), manifest_path(dest))
    shutil.copyfile(context.run_dir / SIGNATURE_NAME, dest / SIGNATURE_NAME)
    verify_bundle(dest)
    return {"kept": [artifact.name for artifact in context.chosen], "dropped": [],
            "bytes": sum(artifact.bytes for artifact in copied), "signed": True}


def render_dockerfile(*, base_image: str, wheel: str, constraints: bool, labels: dict[str, str],
                      serve_args: list[str], signed: bool = False) -> str:
    """The Dockerfile text.

    Args:
        base_image: the FROM image (a slim Python 3.11).
        wheel: the wheel's file name under wheels/.
        constraints: whether constraints.txt (measured versions) pins the install.
        labels: OCI image labels.
        serve_args: extra `kerasport serve` arguments appended to the entry point.
        signed: the bundle carries a signature (installs the `[signing]` extra the entry point's check needs).

    Returns:
        The Dockerfile, one instruction per logical line (continuations with a trailing backslash).
    """
    pin = f" -c /tmp/{CONSTRAINTS}" if constraints else ""
    extras = "serve,signing" if signed else "serve"
    label_lines = " \\\n      ".join(f"{key}={json.dumps(value)}" for key, value in labels.items())
    lines = [
        "# Written by `kerasport package --target container`; see DEPLOY.md.",
        f"FROM {base_image}",
        f"LABEL {label_lines}",
        "ENV PYTHONDONTWRITEBYTECODE=1 \\\n    PYTHONUNBUFFERED=1 \\\n    PIP_NO_CACHE_DIR=1 \\\n"
        "    PIP_DISABLE_PIP_VERSION_CHECK=1",
        f"COPY {WHEEL_DIR}/ /tmp/{WHEEL_DIR}/",
        *([f"COPY {CONSTRAINTS} /tmp/{CONSTRAINTS}"] if constraints else []),
        f'RUN pip install "/tmp/{WHEEL_DIR}/{wheel}[{extras}]"{pin} \\\n'
        f" && rm -rf /tmp/{WHEEL_DIR}{f' /tmp/{CONSTRAINTS}' if constraints else ''}",
        f"RUN groupadd --system --gid {USER_ID} kerasport \\\n"
        f" && useradd --system --uid {USER_ID} --gid {USER_ID} --no-create-home --home-dir /nonexistent "
        f"--shell /usr/sbin/nologin kerasport",
        "# The bundle stays owned by root: the server reads it and cannot change it.",
        f"COPY {BUNDLE_DIR}/ {BUNDLE_MOUNT}/",
        f"COPY {ENTRYPOINT_SCRIPT} {ENTRYPOINT_PATH}",
        f"RUN kerasport bundle verify --run {BUNDLE_MOUNT}",
        f"USER {USER_ID}:{USER_ID}",
        f"EXPOSE {PORT}",
        "HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \\\n"
        f"  CMD {json.dumps(['python', '-c', HEALTH_CHECK])}",
        f"ENTRYPOINT {json.dumps(ENTRYPOINT + serve_args)}",
    ]
    return "\n".join(lines) + "\n"


def check_install(wheel: Path, bundle: Path, workdir: Path) -> dict:
    """Install `wheel[serve]` into a fresh venv under `workdir`, as the image does, and check and measure it.

    Args:
        wheel: the kerasport wheel.
        bundle: the context's bundle/ (verified with the installed `kerasport bundle verify`).
        workdir: a scratch directory (the venv is created in `workdir/venv`).

    Returns:
        {"installed_mib" (du of site-packages after the install minus before it: what the install adds to the
        image), "site_packages_mib" (du, with the venv's pip/setuptools), "site_packages_apparent_mib", "packages",
        "largest_mib" (the four largest folders), "python", "tensorflow_absent", "bundle_verify", "freeze"};
        freeze: the installed versions, kerasport excluded.

    Raises:
        ConversionError: the install, the bundle check or `kerasport serve --help` failed, or TensorFlow is there.
    """
    env_dir = workdir / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False, clear=True)
    python, script = env_dir / "bin" / "python", env_dir / "bin" / "kerasport"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], "python",
                     cwd=workdir).stdout.strip())
    baseline, _ = disk_usage(site)  # the venv's own pip and setuptools, which the base image has too
    _run([str(python), "-m", "pip", "install", "-q", f"{wheel.resolve()}[serve]"], "pip install kerasport[serve]",
         cwd=workdir, timeout=900)
    verified = _run([str(script), "bundle", "verify", "--run", str(bundle.resolve())], "kerasport bundle verify",
                    cwd=workdir)
    _run([str(script), "serve", "--help"], "kerasport serve --help", cwd=workdir)
    for module in HEAVY_MODULES:
        probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True, cwd=workdir)
        if probe.returncode == 0:
            raise ConversionError(f"`import {module}` works in the kerasport[serve] install; expected a TF-free image")
    freeze = [line for line in _run([str(python), "-m", "pip", "freeze"], "pip freeze", cwd=workdir).stdout.splitlines()
              if line and not line.lower().startswith("kerasport")]
    used, apparent = disk_usage(site)
    parts = {path.name: disk_usage(path)[0] for path in site.iterdir() if path.is_dir() and
             not path.name.endswith((".dist-info", "__pycache__"))}
    largest = {name: round(size / 2**20, 1) for name, size in sorted(parts.items(), key=lambda kv: -kv[1])[:4]}
    version = _run([str(python), "-c", "import platform; print(platform.python_version())"], "python", cwd=workdir)
    return {"installed_mib": round((used - baseline) / 2**20, 1), "site_packages_mib": round(used / 2**20, 1),
            "site_packages_apparent_mib": round(apparent / 2**20, 1), "packages": len(freeze) + 1,
            "largest_mib": largest, "python": version.stdout.strip(), "tensorflow_absent": True,
            "bundle_verify": verified.stdout.strip().replace(str(bundle.resolve()), BUNDLE_DIR), "freeze": freeze}


def disk_usage(root: Path) -> tuple[int, int]:
    """(bytes on disk as `du -s` counts them, apparent bytes) of a tree, each inode once."""
    seen, used, apparent = set(), 0, 0
    for folder, _, names in os.walk(root):
        for name in names:
            stat = os.lstat(os.path.join(folder, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                used, apparent = used + stat.st_blocks * 512, apparent + stat.st_size
    return used, apparent


def write_container(context: PackageContext, staging: Path) -> TargetOutput:
    """The `container` target: Dockerfile, wheels/, bundle/ (trimmed, verified) and, measured, constraints.txt.

    Args:
        context: the verified bundle and the chosen servable variants; options `wheel`, `base_image`,
            `check_install`.
        staging: the directory that becomes `--out` (the build context).

    Returns:
        The build-and-run command, notes for DEPLOY.md and the manifest record (with the install measurement).

    Raises:
        UsageError: a bad --wheel, or no source tree to build one from.
        ConversionError: the wheel build or the install check failed.
    """
    from kerasport.signing import is_signed

    options = context.options
    wheel = place_wheel(options.wheel, staging / WHEEL_DIR)
    signed = is_signed(context.run_dir)
    bundle = (write_signed_bundle if signed else write_trimmed_bundle)(context, staging / BUNDLE_DIR)
    entrypoint = staging / ENTRYPOINT_SCRIPT
    entrypoint.write_text(ENTRYPOINT_TEXT)
    entrypoint.chmod(0o755)  # COPY keeps the mode: no BuildKit-only --chmod needed
    installed = None
    if options.check_install:
        with tempfile.TemporaryDirectory(prefix="kerasport-install-") as scratch:
            installed = check_install(wheel, staging / BUNDLE_DIR, Path(scratch))
        (staging / CONSTRAINTS).write_text("\n".join(installed["freeze"]) + "\n")
    labels = {"org.opencontainers.image.title": context.model_name,
              "org.opencontainers.image.version": str(context.version),
              "org.opencontainers.image.description": "kerasport serve (TF-free, KServe V2 + TF Serving REST)",
              "dev.kerasport.manifest-sha256": context.manifest_sha256,
              "dev.kerasport.variants": ",".join(bundle["kept"])}
    serve_args = ["--allow-unverified"] if context.unverified else []
    if signed and len(bundle["kept"]) == 1:  # the whole signed bundle is there: serve the variant chosen
        serve_args += ["--variant", bundle["kept"][0]]
    (staging / DOCKERFILE).write_text(render_dockerfile(base_image=options.base_image, wheel=wheel.name,
                                                        constraints=installed is not None, labels=labels,
                                                        serve_args=serve_args, signed=signed))
    (staging / ".dockerignore").write_text("DEPLOY.md\n")
    tag = f"{context.model_name}:{context.version}"
    command = f"docker build -t {tag} \"{Path(options.out).resolve()}\" && docker run --rm -p {PORT}:{PORT} {tag}"
    record = {"dockerfile": DOCKERFILE, "base_image": options.base_image, "wheel": f"{WHEEL_DIR}/{wheel.name}",
              "wheel_sha256": sha256_file(wheel), "bundle": {"dir": BUNDLE_DIR, **bundle},
              "installed": {k: v for k, v in installed.items() if k != "freeze"} if installed else None}
    return TargetOutput(command=command, notes=[_container_notes(context, wheel, bundle, installed, tag)],
                        record=record)


def _container_notes(context: PackageContext, wheel: Path, bundle: dict, installed: dict | None, tag: str) -> str:
    lines = ["## The image", "",
             f"`{context.options.base_image}` + `kerasport[serve]` from `{WHEEL_DIR}/{wheel.name}` (sha256 "
             f"`{sha256_file(wheel)}`) + `{BUNDLE_DIR}/` at `{BUNDLE_MOUNT}`: manifest.json trimmed to "
             f"{', '.join(bundle['kept'])} ({bundle['bytes'] / 2**20:.2f} MiB; dropped from the manifest: "
             f"{', '.join(bundle['dropped']) or 'nothing'}). The build runs `kerasport bundle verify --run "
             f"{BUNDLE_MOUNT}` (every copied artifact's sha256), then the server runs as user {USER_ID} on "
             f"0.0.0.0:{PORT}; HEALTHCHECK polls `/v2/health/ready`. Arguments after the image name go to "
             f"`kerasport serve` (e.g. `docker run {tag} --variant {bundle['kept'][-1]}`).", "",
             *([f"The bundle is signed: it is copied whole (manifest.json unchanged, `bundle.sig` beside it), and "
                f"`docker run -v /path/to/public.pem:{KEY_MOUNT}:ro {tag}` serves it only if the signature "
                f"verifies with that key (or name the key with `-e {KEY_ENV}=...`).", ""] if bundle.get("signed")
               else []),
             "### Installed size", ""]
    if installed is None:
        lines.append("Not measured: re-run with `--check-install` to install the wheel with its `[serve]` extra into "
                     "a fresh virtual environment, measure it and pin its versions in constraints.txt.")
    else:
        lines += [f"Measured by installing `{wheel.name}[serve]` into a fresh virtual environment (Python "
                  f"{installed['python']}, {installed['packages']} packages, pinned in `{CONSTRAINTS}`) and running "
                  f"`du` over its site-packages before and after; `kerasport bundle verify` and `kerasport serve "
                  f"--help` ran there, and `import tensorflow` / `import keras` failed, as they must.", "",
                  "| added by the install (du) | site-packages in all (du; apparent) | bundle | base image |",
                  "|---|---|---|---|",
                  f"| {installed['installed_mib']:.1f} MiB | {installed['site_packages_mib']:.1f} MiB; "
                  f"{installed['site_packages_apparent_mib']:.1f} MiB | {bundle['bytes'] / 2**20:.2f} MiB | "
                  f"not measured here (no Docker daemon) |", "",
                  "Largest folders: " + ", ".join(f"{name} {size:.0f} MiB" for name, size in
                                                  installed["largest_mib"].items())
                  + ". The installed size is what the image adds on top of the base image (whose own pip and "
                    "setuptools are not counted)."]
    return "\n".join(lines)
