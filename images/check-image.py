#!/usr/bin/env python3
"""Checks a rolebridge image (an OCI layout, e.g. pulled back from a registry) against its Dockerfile.

    check-image.py --layout DIR --tag TAG --dockerfile images/webhook.Dockerfile \
        --rootfs DIR --build-arg VERSION=... [--build-arg ...] [--arch amd64] [--sizes FILE]

Independent of images/oci-image.py on purpose: the Dockerfile is parsed with BuildKit's own parser
(PyPI `dockerfile`, Go bindings to moby/buildkit's parser), so a Dockerfile the Docker-free build
misreads fails here. Checked:
  - every blob's sha256 and size; one manifest with the tag; exactly one gzip layer whose
    uncompressed digest is the config's diff_id;
  - config == what BuildKit would write for the final stage: User, Entrypoint, Cmd, Env (with
    BuildKit's default PATH), ExposedPorts, Labels (build args substituted), nothing else; os linux
    and the expected architecture;
  - the Dockerfile's files come from make-rootfs.sh: the final stage is FROM scratch with only
    `COPY --from=build /rootfs/ /`, the build stage runs scripts/static-build.sh and
    images/make-rootfs.sh into /rootfs for this binary;
  - the layer holds exactly the files of --rootfs (make-rootfs.sh's output for the same binary):
    same names, modes, contents, owned by 0:0; no shell, busybox or other executable besides the
    entrypoint, in any layer.
Prints one line of sizes and digests (and appends it as JSON to --sizes). Exit status 1 on any
failed check, with every failure listed.
"""

import argparse
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

import dockerfile  # PyPI dockerfile==3.4.0, installed by scripts/images-test.sh into .tools/

BUILDKIT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHELLS = {"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox", "toybox"}


class Checks:
    def __init__(self, name):
        self.name, self.failures = name, []

    def expect(self, condition, message):
        if not condition:
            self.failures.append(message)
        return condition


def expand(word, variables):
    return re.sub(
        r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)",
        lambda m: variables.get(m.group(1) or m.group(2), ""),  # BuildKit: unset expands to ""
        word,
    )


def unquote(word, variables):
    words = shlex.split(expand(word, variables))
    return words[0] if len(words) == 1 else " ".join(words)


def expected_from_dockerfile(path, build_args, binary, checks):
    """The image config BuildKit would write for the final stage, and the stage checks."""
    commands = dockerfile.parse_file(path)
    froms = [i for i, c in enumerate(commands) if c.cmd.upper() == "FROM"]
    build_stage = commands[froms[0] : froms[-1]] if len(froms) > 1 else []
    final = commands[froms[-1] :] if froms else []
    checks.expect(final and final[0].value == ("scratch",), f"{path}: final stage is not FROM scratch")
    runs = " ".join(" ".join(c.value) for c in build_stage if c.cmd.upper() == "RUN")
    checks.expect("scripts/static-build.sh" in runs, f"{path}: build stage does not run scripts/static-build.sh")
    checks.expect(
        re.search(rf'images/make-rootfs\.sh "?target/\$triple/release/{re.escape(binary)}"? /rootfs ', runs),
        f"{path}: build stage does not run images/make-rootfs.sh for {binary} into /rootfs",
    )
    variables, env, labels, ports, config = {}, [], {}, {}, {}
    copies = []
    for c in final[1:]:
        cmd = c.cmd.upper()
        if cmd == "ARG":
            name, _, default = c.value[0].partition("=")
            variables[name] = build_args.get(name, default)
        elif cmd == "COPY":
            copies.append((c.flags, c.value))
        elif cmd == "ENV":
            for key, value in zip(c.value[::2], c.value[1::2]):
                value = unquote(value, variables)
                env = [e for e in env if not e.startswith(key + "=")] + [f"{key}={value}"]
                variables[key] = value
        elif cmd == "LABEL":
            for key, value in zip(c.value[::2], c.value[1::2]):
                labels[unquote(key, variables)] = unquote(value, variables)
        elif cmd == "USER":
            config["User"] = expand(c.value[0], variables)
        elif cmd == "EXPOSE":
            for port in c.value:
                ports[port if "/" in port else port + "/tcp"] = {}
        elif cmd in ("ENTRYPOINT", "CMD"):
            checks.expect(c.json, f"{path}:{c.start_line}: {cmd} is not in exec (JSON) form; there is no shell")
            config["Entrypoint" if cmd == "ENTRYPOINT" else "Cmd"] = list(c.value)
        else:
            checks.failures.append(f"{path}:{c.start_line}: {cmd} in the final stage is not reproduced by oci-image.py")
    checks.expect(
        copies == [(("--from=build",), ("/rootfs/", "/"))],
        f"{path}: final stage copies {copies}, expected only COPY --from=build /rootfs/ /",
    )
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, BUILDKIT_PATH)
    config["Env"] = env
    if ports:
        config["ExposedPorts"] = ports
    if labels:
        config["Labels"] = labels
    return config


def blob(layout, descriptor, checks):
    algo, _, hexdigest = descriptor["digest"].partition(":")
    with open(os.path.join(layout, "blobs", algo, hexdigest), "rb") as f:
        data = f.read()
    checks.expect(algo == "sha256" and hashlib.sha256(data).hexdigest() == hexdigest, f"blob {descriptor['digest']}: digest mismatch")
    checks.expect(len(data) == descriptor["size"], f"blob {descriptor['digest']}: size {len(data)} != {descriptor['size']}")
    return data


def expected_files(rootfs):
    files = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, rootfs)
            if stat.S_ISDIR(st.st_mode):
                files[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
            else:
                with open(path, "rb") as f:
                    files[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(f.read()).hexdigest())
    return files


def check_layer(data, rootfs, entrypoint, checks):
    """Layer entries against make-rootfs.sh's output; returns (entries, uncompressed bytes)."""
    tar_bytes = gzip.decompress(data)
    found = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for member in tar:
            rel = os.path.normpath(member.name.lstrip("/").removeprefix("./"))
            base = os.path.basename(rel)
            checks.expect(base not in SHELLS, f"layer has a shell or multi-call binary: {member.name}")
            checks.expect(member.uid == 0 and member.gid == 0, f"{member.name}: owned by {member.uid}:{member.gid}")
            if member.isdir():
                found[rel] = ("dir", member.mode, None)
            elif member.isfile():
                content = tar.extractfile(member).read()
                found[rel] = ("file", member.mode, hashlib.sha256(content).hexdigest())
                if content[:4] == b"\x7fELF":
                    checks.expect("/" + rel == entrypoint, f"layer has an executable besides the entrypoint: {member.name}")
            else:
                found[rel] = (f"type {member.type!r}", member.mode, None)
    want = expected_files(rootfs)
    for rel in sorted(set(want) | set(found)):
        checks.expect(found.get(rel) == want.get(rel), f"layer file {rel}: {found.get(rel)} in the image, {want.get(rel)} from make-rootfs.sh")
    return len(found), len(tar_bytes)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layout", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--dockerfile", required=True)
    p.add_argument("--rootfs", required=True, help="make-rootfs.sh output for the same binary")
    p.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--arch", default="amd64")
    p.add_argument("--sizes", help="append a JSON line of sizes and digests to this file")
    args = p.parse_args(argv)
    build_args = dict(a.partition("=")[::2] for a in args.build_arg)
    binary = os.path.basename(args.dockerfile).removesuffix(".Dockerfile")
    binary = f"rolebridge-{binary}"
    checks = Checks(binary)

    want = expected_from_dockerfile(args.dockerfile, build_args, binary, checks)
    with open(os.path.join(args.layout, "index.json")) as f:
        index = json.load(f)
    tagged = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == args.tag]
    if not checks.expect(len(tagged) == 1, f"index.json: {len(tagged)} manifests tagged {args.tag}"):
        return report(checks, None)
    manifest = json.loads(blob(args.layout, tagged[0], checks))
    image = json.loads(blob(args.layout, manifest["config"], checks))
    config = image.get("config", {})
    checks.expect(set(config) == set(want), f"config keys {sorted(config)}, expected {sorted(want)}")
    for key in sorted(set(config) | set(want)):
        checks.expect(config.get(key) == want.get(key), f"config {key}: {config.get(key)!r} in the image, {want.get(key)!r} from the Dockerfile")
    checks.expect(config.get("User") == "65532:65532", f"User is {config.get('User')!r}, not 65532:65532")
    checks.expect(image.get("os") == "linux" and image.get("architecture") == args.arch, f"platform {image.get('os')}/{image.get('architecture')}")
    layers = manifest["layers"]
    checks.expect(len(layers) == 1, f"{len(layers)} layers, expected 1")
    diff_ids = image.get("rootfs", {}).get("diff_ids", [])
    sizes = {"image": binary, "tag": args.tag, "manifest_digest": tagged[0]["digest"], "layers": len(layers), "compressed": 0, "uncompressed": 0}
    for i, layer in enumerate(layers):
        checks.expect(layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip", f"layer {i}: {layer['mediaType']}")
        data = blob(args.layout, layer, checks)
        entries, raw = check_layer(data, args.rootfs, (config.get("Entrypoint") or [""])[0], checks)
        checks.expect(i < len(diff_ids) and diff_ids[i] == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest(), f"layer {i}: diff_id mismatch")
        sizes["compressed"] += layer["size"]
        sizes["uncompressed"] += raw
        sizes["entries"] = entries
    return report(checks, sizes, args.sizes)


def report(checks, sizes, sizes_file=None):
    for failure in checks.failures:
        print(f"check-image: {checks.name}: {failure}")
    if checks.failures:
        return 1
    print(
        f"check-image: {checks.name}:{sizes['tag']} ok: {sizes['manifest_digest']}, {sizes['layers']} layer, "
        f"{sizes['entries']} entries, {sizes['compressed']} bytes compressed ({sizes['compressed'] / 2**20:.1f} MiB), "
        f"{sizes['uncompressed']} bytes uncompressed ({sizes['uncompressed'] / 1e6:.1f} MB)"
    )
    if sizes_file:
        with open(sizes_file, "a") as f:
            f.write(json.dumps(sizes, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
