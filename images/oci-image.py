#!/usr/bin/env python3
"""Write a rolebridge image as an OCI image layout, without a container engine.

    oci-image.py build --dockerfile images/webhook.Dockerfile --rootfs DIR --out DIR \
        --tag 0.1.0 --epoch 1700000000 --arch amd64 \
        --build-arg VERSION=0.1.0 --build-arg REVISION=<sha> --build-arg CREATED=<rfc3339>
    oci-image.py config --dockerfile F --build-arg ...    # print the image config it would write

The image's configuration (user, entrypoint, cmd, env, exposed ports, labels) is read from the
final `FROM scratch` stage of the Dockerfile, so the Docker and Docker-free recipes cannot drift:
an instruction this parser does not understand fails the build instead of being left out.
The filesystem is the directory images/make-rootfs.sh assembled, the same one the Dockerfile
copies from its build stage.

Reproducible by construction: one layer whose tar entries are sorted, owned by 0:0, dated
--epoch (the commit's time), with no user or group names; gzip with mtime 0 and no file name;
JSON with sorted keys. The same rootfs and arguments give the same manifest digest.

Python standard library only: this runs on a bare CI machine and on developers' laptops.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import stat
import sys
import tarfile
import tempfile
import shutil

# BuildKit puts this PATH into every Linux image's config, `scratch` included; kept so the two
# recipes give the same config.
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The only way the final stage may get its files: everything else would not be in this image.
ROOTFS_COPY = ["--from=build", "/rootfs/", "/"]
FINAL_STAGE_INSTRUCTIONS = {"ARG", "COPY", "ENV", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"}
# Build-arg values are substituted into quoted Dockerfile text; these characters could not be.
SAFE_VALUE = re.compile(r"^[A-Za-z0-9._:+/@-]*$")

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class ImageError(Exception):
    pass


def instructions(text):
    """(line number, KEYWORD, rest) per instruction: continuations joined, comments dropped."""
    out, buf, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments and blank lines, also inside a continuation (as BuildKit does)
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        out.append((start, keyword.upper(), rest.strip()))
        buf = ""
    if buf:
        raise ImageError("Dockerfile ends inside a line continuation")
    return out


def substitute(value, variables, where):
    """$NAME and ${NAME} from the final stage's ARGs and ENVs; an unknown name is an error."""

    def one(match):
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise ImageError(f"{where}: ${name} is not an ARG or ENV of the final stage")
        return variables[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, value)


def pairs(rest, variables, where):
    """KEY=VALUE words (ENV, LABEL); the legacy `ENV KEY VALUE` form is refused."""
    result = []
    for word in shlex.split(substitute(rest, variables, where)):
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise ImageError(f"{where}: expected KEY=VALUE, got {word!r}")
        result.append((key, value))
    return result


def exec_form(rest, where):
    try:
        argv = json.loads(rest)
    except json.JSONDecodeError:
        argv = None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ImageError(f"{where}: must be a JSON array (the shell form needs a shell; there is none)")
    return argv


def image_config(dockerfile_text, build_args, dockerfile_name="Dockerfile"):
    """The OCI `config` object of the Dockerfile's final stage."""
    steps = instructions(dockerfile_text)
    froms = [i for i, (_, keyword, _) in enumerate(steps) if keyword == "FROM"]
    if not froms:
        raise ImageError(f"{dockerfile_name}: no FROM")
    final = steps[froms[-1] :]
    if final[0][2] != "scratch":
        raise ImageError(f"{dockerfile_name}:{final[0][0]}: final stage must be FROM scratch")
    variables, env, labels, ports = {}, [], {}, {}
    config, copies = {}, 0
    for number, keyword, rest in final[1:]:
        where = f"{dockerfile_name}:{number}: {keyword}"
        if keyword not in FINAL_STAGE_INSTRUCTIONS:
            raise ImageError(f"{where}: not supported by the Docker-free build (teach images/oci-image.py)")
        if keyword == "ARG":
            name, eq, default = rest.partition("=")
            if name in build_args:
                variables[name] = build_args[name]
            elif eq:
                variables[name] = default
            else:
                raise ImageError(f"{where}: no value given for build argument {name}")
        elif keyword == "COPY":
            if rest.split() != ROOTFS_COPY:
                raise ImageError(f"{where}: the only COPY may be `COPY {' '.join(ROOTFS_COPY)}`")
            copies += 1
        elif keyword == "ENV":
            for key, value in pairs(rest, variables, where):
                env = [e for e in env if not e.startswith(key + "=")] + [f"{key}={value}"]
                variables[key] = value
        elif keyword == "LABEL":
            labels.update(pairs(rest, variables, where))
        elif keyword == "USER":
            config["User"] = substitute(rest, variables, where)
        elif keyword == "EXPOSE":
            for port in substitute(rest, variables, where).split():
                ports[port if "/" in port else port + "/tcp"] = {}
        elif keyword in ("ENTRYPOINT", "CMD"):
            config[keyword.capitalize() if keyword == "CMD" else "Entrypoint"] = exec_form(rest, where)
    if copies != 1:
        raise ImageError(f"{dockerfile_name}: final stage needs exactly one `COPY {' '.join(ROOTFS_COPY)}`")
    unused = set(build_args) - set(variables)
    if unused:
        raise ImageError(f"{dockerfile_name}: build arguments not declared in the final stage: {sorted(unused)}")
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    config["Env"] = env
    if ports:
        config["ExposedPorts"] = ports
    if labels:
        config["Labels"] = labels
    return config


def layer_tar(rootfs, epoch):
    """The root filesystem as a deterministic tar (bytes)."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        for name in dirnames + filenames:
            paths.append(os.path.join(dirpath, name))
    if not paths:
        raise ImageError(f"{rootfs} is empty")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(paths, key=lambda p: os.path.relpath(p, rootfs)):
            st = os.lstat(path)
            info = tarfile.TarInfo(os.path.relpath(path, rootfs))
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = epoch
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                # make-rootfs.sh makes none; a link or device here would be a surprise in production.
                raise ImageError(f"{path}: only regular files and directories belong in the image")
    return buf.getvalue()


def gzipped(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_blob(layout, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return {"digest": digest, "size": len(data)}


def build(args):
    build_args = parse_build_args(args.build_arg)
    with open(args.dockerfile) as f:
        config = image_config(f.read(), build_args, os.path.basename(args.dockerfile))
    created = rfc3339(args.epoch)
    tar = layer_tar(args.rootfs, args.epoch)
    layer = gzipped(tar)
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    image = {
        "created": created,
        "architecture": args.arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": f"images/oci-image.py: {args.dockerfile} final stage"}],
    }

    # Written next to the destination and renamed into place: a failed build leaves no half layout.
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".oci-", dir=os.path.dirname(out))
    try:
        os.makedirs(os.path.join(tmp, "blobs", "sha256"))
        layer_desc = dict(mediaType=MT_LAYER, **write_blob(tmp, layer))
        config_desc = dict(mediaType=MT_CONFIG, **write_blob(tmp, canonical(image)))
        manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_desc, "layers": [layer_desc]}
        manifest_desc = dict(mediaType=MT_MANIFEST, **write_blob(tmp, canonical(manifest)))
        manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": args.tag}
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [manifest_desc]}
        with open(os.path.join(tmp, "index.json"), "wb") as f:
            f.write(canonical(index))
        with open(os.path.join(tmp, "oci-layout"), "wb") as f:
            f.write(canonical({"imageLayoutVersion": "1.0.0"}))
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        f"oci-image: {out}:{args.tag} {manifest_desc['digest']} "
        f"(1 layer, {len(layer)} bytes compressed, {len(tar)} bytes uncompressed)"
    )


def parse_build_args(items):
    result = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ImageError(f"--build-arg {item!r}: expected NAME=VALUE")
        if not SAFE_VALUE.match(value):
            raise ImageError(f"--build-arg {name}: value {value!r} has characters that need quoting")
        result[name] = value
    return result


def rfc3339(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "config"):
        p = sub.add_parser(name)
        p.add_argument("--dockerfile", required=True)
        p.add_argument("--build-arg", action="append", metavar="NAME=VALUE")
        if name == "build":
            p.add_argument("--rootfs", required=True, help="directory made by images/make-rootfs.sh")
            p.add_argument("--out", required=True, help="OCI layout directory (replaced)")
            p.add_argument("--tag", required=True, help="org.opencontainers.image.ref.name")
            p.add_argument("--epoch", required=True, type=int, help="SOURCE_DATE_EPOCH")
            p.add_argument("--arch", required=True, help="GOARCH name: amd64, arm64")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args)
        else:
            with open(args.dockerfile) as f:
                config = image_config(f.read(), parse_build_args(args.build_arg), os.path.basename(args.dockerfile))
            print(json.dumps(config, indent=2, sort_keys=True))
    except (ImageError, OSError) as e:
        print(f"oci-image: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
