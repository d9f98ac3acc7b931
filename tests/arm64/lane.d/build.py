"""Builders of the lane's initramfs segments and L2 artifacts. Each cached piece lives in a directory named by a
digest of its inputs (package file names carry versions), so a changed input builds a new piece."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import debs
import kmods
from cpio import CpioWriter, write_archive
from util import Building, LaneError, digest, log, prune_siblings, run, used

HERE = Path(__file__).resolve().parent
BUILDER_VERSION = 4  # bump when the layout produced here changes

# Debian packages making up the L1 userspace (all :arm64).
ROOTFS_PACKAGES = [
    "busybox-static", "libc6", "libgcc-s1", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libexpat1", "zlib1g", "libssl3", "libffi8", "libbz2-1.0", "liblzma5", "libuuid1", "libcrypt1",
]
# Never needed by tests; dropping them saves about a third of the initramfs.
PRUNE = [
    "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/lintian", "usr/share/info",
    "usr/lib/python3.11/test", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo", "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data", "usr/lib/python3.11/distutils", "usr/lib/python3.11/unittest/test",
    "usr/lib/python3.11/config-3.11-aarch64-linux-gnu",
]
BASE_WHEELS = ["cffi", "construct", "click", "ioctl-opt", "pytest", "pytest-timeout", "fdt", "hypothesis"]
PIP_PLATFORM = ["--platform", "manylinux_2_36_aarch64", "--platform", "manylinux2014_aarch64",
                "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:"]
STOCK_META = "linux-image-6.12-arm64"
# Modules for the L2 guest (Debian builds these as modules; virtio core and virtio_console are built in).
L2_MODULES = ["virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng",
              "vmw_vsock_virtio_transport", "9pnet_virtio", "9p"]
# Modules loaded in the L1 when it runs the stock kernel, so it offers what the custom kernel has built in.
L1_MODULES = ["tun", "vhost_net", "vhost_vsock", "virtio_mmio"]


def precompile(root: Path, *subdirs: str) -> None:
    """Byte-compile with the host's Python 3.11 (same magic as Debian's arm64 3.11): unchecked-hash pycs are valid
    whatever the file mtimes, and they spare the emulated CPU compiling the stdlib, pytest and hypothesis."""
    if sys.version_info[:2] != (3, 11):
        log(f"host Python is {sys.version.split()[0]}, not 3.11: skipping precompilation (slower L1)")
        return
    dirs = [str(root / d) for d in subdirs if (root / d).exists()]
    if dirs:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-q", "-j", "0", "--invalidation-mode",
                        "unchecked-hash", "-s", str(root), "-p", "/", *dirs], timeout=600)


def base_archive(a: CpioWriter) -> None:
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "lane"):
        a.mkdirs(d)
    a.chardev("dev/console", 5, 1)
    a.chardev("dev/null", 1, 3, 0o666)
    # getpass.getuser() (pytest's tmp_path) and friends look root up here.
    a.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    a.file("etc/group", b"root:x:0:\n")
    a.file("etc/hosts", b"127.0.0.1 localhost pyvmm-lane\n")


# ---------------------------------------------------------------------------------------------------- rootfs
def rootfs(cache: Path) -> Path:
    pkgs = debs.resolve(ROOTFS_PACKAGES)
    init = (HERE / "init-l1.sh").read_bytes()
    key = digest(BUILDER_VERSION, [d.filename for d in pkgs], PRUNE, init, sys.version_info[:2])
    final = cache / f"rootfs-{key}"
    if (final / "rootfs.cpio.gz").exists():
        return used(final) / "rootfs.cpio.gz"
    files = debs.download(pkgs, cache)
    log("building the L1 root filesystem (Debian arm64 packages)")
    with Building(final) as tmp:
        root = tmp / "root"
        for f in files:
            debs.extract(f, root)
        for p in PRUNE:
            shutil.rmtree(root / p, ignore_errors=True)
        (root / "usr/bin/python3").unlink(missing_ok=True)
        (root / "usr/bin/python3").symlink_to("python3.11")
        precompile(root, "usr/lib/python3.11")

        def build(a: CpioWriter) -> None:
            base_archive(a)
            a.tree(root, "/")
            a.file("init", init, 0o755)
        write_archive(tmp / "rootfs.cpio.gz", build)
        (tmp / "packages.txt").write_text("".join(f"{d.package} {d.version}\n" for d in pkgs))
        shutil.rmtree(root)
    return final / "rootfs.cpio.gz"


# ---------------------------------------------------------------------------------------------------- wheels
def project_requirements(checkout: Path) -> list[str]:
    """Runtime and test dependencies declared by the checkout's pyproject.toml (none without one)."""
    pp = checkout / "pyproject.toml"
    if not pp.exists():
        return []
    try:
        project = tomllib.loads(pp.read_text()).get("project", {})
    except tomllib.TOMLDecodeError as e:
        raise LaneError(f"{pp}: {e}") from None
    reqs = list(project.get("dependencies", []))
    for extra in ("test", "tests"):
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs


def _req_name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", req).group(1)).lower()


def site(cache: Path, checkout: Path, refresh: bool) -> Path:
    project = project_requirements(checkout)
    declared = {_req_name(r) for r in project}
    # The lane's own needs, unless the project pins them itself.
    reqs = sorted(set(project) | {w for w in BASE_WHEELS if _req_name(w) not in declared})
    wdir = cache / f"wheels-{digest(reqs, PIP_PLATFORM)}"
    if refresh or not (wdir / "done").exists():
        log(f"downloading aarch64 cp311 wheels: {' '.join(reqs)}")
        with Building(wdir.with_name(wdir.name + "-new"), prune=False) as tmp:
            run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--dest", str(tmp),
                 *PIP_PLATFORM, *reqs], timeout=600)
            (tmp / "done").write_text("\n".join(reqs) + "\n")
        shutil.rmtree(wdir, ignore_errors=True)
        wdir.with_name(wdir.name + "-new").rename(wdir)
        prune_siblings(wdir)
    used(wdir)
    wheels = sorted(wdir.glob("*.whl"))
    final = cache / f"site-{digest(BUILDER_VERSION, [w.name for w in wheels])}"
    if (final / "site.cpio.gz").exists():
        return used(final) / "site.cpio.gz"
    log(f"installing {len(wheels)} wheels into the L1 site directory")
    with Building(final) as tmp:
        target = tmp / "root/lane/site"
        run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
             "--no-deps", "--no-compile", "--target", str(target), *PIP_PLATFORM, *map(str, wheels)], timeout=600)
        shutil.rmtree(target / "bin", ignore_errors=True)  # scripts carry the host interpreter's path
        precompile(tmp / "root", "lane/site")
        write_archive(tmp / "site.cpio.gz", lambda a: a.tree(tmp / "root/lane", "/lane"))
        (tmp / "wheels.txt").write_text("".join(w.name + "\n" for w in wheels))
        shutil.rmtree(tmp / "root")
    return final / "site.cpio.gz"


# ---------------------------------------------------------------------------------------------------- kernels
@dataclass(frozen=True)
class StockKernel:
    release: str       # uname -r, e.g. 6.12.117+deb12-arm64
    package: str       # e.g. linux-image-6.12.117+deb12-arm64 6.12.117-1~deb12u1
    dir: Path          # holds Image, config, modules/ (uncompressed .ko as shipped by the package)

    @property
    def image(self) -> Path:
        return self.dir / "Image"


def stock_kernel(cache: Path) -> StockKernel:
    (meta,) = debs.resolve([STOCK_META])
    dep = meta.depends
    pkg = dep.split(",")[0].split("|")[0].split("(")[0].strip()
    (deb,) = debs.resolve([pkg])
    release = pkg.removeprefix("linux-image-")
    final = cache / f"kernel-{digest(deb.filename)}"
    if not (final / "Image").exists():
        (path,) = debs.download([deb], cache)
        log(f"extracting {deb.filename}")
        with Building(final) as tmp:
            debs.extract(path, tmp / "x", ["./boot/*", "./lib/modules/*/kernel/drivers/*", "./lib/modules/*/kernel/net/*",
                                           "./lib/modules/*/kernel/fs/*"])
            (tmp / "x/boot" / f"vmlinuz-{release}").rename(tmp / "Image")
            (tmp / "x/boot" / f"config-{release}").rename(tmp / "config")
            (tmp / "x/lib/modules" / release / "kernel").rename(tmp / "modules")
            (tmp / "package.txt").write_text(f"{deb.package} {deb.version}\n")
            shutil.rmtree(tmp / "x")
    if (final / "Image").read_bytes()[56:60] != b"ARM\x64":
        raise LaneError(f"{final / 'Image'} is not an uncompressed arm64 Image")
    return StockKernel(release, f"{deb.package} {deb.version}", used(final))


def modules_archive(a: CpioWriter, mods: list[kmods.Module], prefix: str = "lib/modules") -> None:
    for m in mods:
        a.file(f"{prefix}/{m.name}.ko", m.data)
    a.file(f"{prefix}/lane.order", "".join(m.name + "\n" for m in mods).encode())


def l1_modules(cache: Path, k: StockKernel) -> Path:
    """Host modules for the stock L1 (tun, vhost, vsock): a small gzipped segment."""
    out = cache / f"l1mods-{digest(BUILDER_VERSION, k.package, L1_MODULES)}.cpio.gz"
    if not out.exists():
        mods = kmods.closure(k.dir / "modules", L1_MODULES)
        write_archive(out, lambda a: modules_archive(a, mods))
        prune_siblings(out)
    return used(out)


@dataclass(frozen=True)
class L2:
    segment: Path      # uncompressed cpio placing /lane/l2/{Image,initrd.gz,modules.txt} in the L1
    modules: list[str]


def l2_artifacts(cache: Path, k: StockKernel) -> L2:
    (bb,) = debs.resolve(["busybox-static"])
    init = (HERE / "init-l2.sh").read_bytes()
    final = cache / f"l2-{digest(BUILDER_VERSION, k.package, bb.filename, init, L2_MODULES)}"
    if not (final / "l2.cpio").exists():
        (bbdeb,) = debs.download([bb], cache)
        log("building the L2 guest initramfs")
        with Building(final) as tmp:
            debs.extract(bbdeb, tmp / "bb", ["./bin/busybox"])
            mods = kmods.closure(k.dir / "modules", L2_MODULES)

            def build_initrd(a: CpioWriter) -> None:
                base_archive(a)
                a.file("bin/busybox", (tmp / "bb/bin/busybox").read_bytes(), 0o755)
                a.file("init", init, 0o755)
                modules_archive(a, mods)
            write_archive(tmp / "initrd.gz", build_initrd, level=9)
            names = "".join(m.name + "\n" for m in mods)
            (tmp / "modules.txt").write_text(names)

            def build_segment(a: CpioWriter) -> None:
                # Uncompressed: the L1 kernel then only copies the 30+ MB Image instead of inflating it.
                a.file("lane/l2/Image", k.image.read_bytes())
                a.file("lane/l2/initrd.gz", (tmp / "initrd.gz").read_bytes())
                a.file("lane/l2/modules.txt", names.encode())
                a.file("lane/l2/kernel-release", (k.release + "\n").encode())
            write_archive(tmp / "l2.cpio", build_segment, compress=False)
            shutil.rmtree(tmp / "bb")
    return L2(used(final) / "l2.cpio", (final / "modules.txt").read_text().split())


# ---------------------------------------------------------------------------------------------------- checkout
PACKAGE_MAP = {"pyvmm": "pyvmm", "bindings": "pyvmm_bindings", "guest-kernels": "pyvmm_guests"}
ROOT_CONFIG = ["pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini", "conftest.py"]
_IGNORED = ("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "*.egg-info", ".git", ".venv*")
_IGNORE = shutil.ignore_patterns(*_IGNORED)


def _checkout_wheel(checkout: Path, dest: Path, scripts: Path) -> None:
    # Build from a clean copy: setuptools writes build/ and *.egg-info next to the sources, and a stale build/lib
    # would carry deleted modules into the wheel (and litter the checkout).
    copy = dest.parent / "checkout"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(*_IGNORED, "build", "dist"), symlinks=True)
    wdir = dest.parent / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "-w", str(wdir),
           str(copy)]
    try:
        run(cmd + ["--no-build-isolation"], capture=True, timeout=300)
    except LaneError:
        run(cmd, timeout=300)  # the backend is not installed on the host: let pip fetch it
    (whl,) = wdir.glob("*.whl")
    with zipfile.ZipFile(whl) as z:
        z.extractall(dest)
        eps = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(eps[0]).decode() if eps else ""
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[console_scripts]" and "=" in line:
            name, target = (s.strip() for s in line.split("=", 1))
            mod, _, func = target.partition(":")
            scripts.mkdir(parents=True, exist_ok=True)
            (scripts / name).write_text(f"#!/usr/bin/python3\nimport sys\nfrom {mod} import {func.split('.')[0]}\n"
                                        f"sys.exit({func}())\n")
            (scripts / name).chmod(0o755)


def checkout_segment(checkout: Path, workdir: Path, run_env: str, ship: list[Path] = ()) -> tuple[Path, str]:
    """The part rebuilt every run: the checkout's packages, tests/, benchmarks/, shipped files, the run settings."""
    root = workdir / "root"
    src = root / "lane/src"
    src.mkdir(parents=True)
    if (checkout / "pyproject.toml").exists():
        how = "wheel of the checkout (pip wheel --no-deps)"
        _checkout_wheel(checkout, src, root / "usr/local/bin")
    else:
        how = "copy of the checkout with the package-dir mapping"
        for d, pkg in PACKAGE_MAP.items():
            if (checkout / d).is_dir():
                shutil.copytree(checkout / d, src / pkg, ignore=_IGNORE, symlinks=True)
    shutil.copytree(checkout / "tests", src / "tests", ignore=_IGNORE, symlinks=True)
    if (checkout / "benchmarks").is_dir():
        shutil.copytree(checkout / "benchmarks", src / "benchmarks", ignore=_IGNORE, symlinks=True)
    if ship:
        (root / "lane/ship").mkdir(parents=True)
        for path in ship:
            if path.is_dir():
                shutil.copytree(path, root / "lane/ship" / path.name, symlinks=True)
            else:
                shutil.copy2(path, root / "lane/ship" / path.name)
    for f in ROOT_CONFIG:
        if (checkout / f).is_file():
            shutil.copy2(checkout / f, src / f)
    precompile(root, "lane/src")
    shutil.rmtree(workdir / "checkout", ignore_errors=True)
    shutil.rmtree(workdir / "wheel", ignore_errors=True)
    (root / "lane/run.env").write_text(run_env)
    out = workdir / "run.cpio.gz"
    write_archive(out, lambda a: a.tree(root, "/"), level=1)
    return out, how
