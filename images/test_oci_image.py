"""Unit tests of images/oci-image.py's pure parts: the final-stage reader and the layer writer.

    python3 -m unittest discover -s images -p 'test_*.py'     (run by scripts/images-test.sh)
"""

import gzip
import importlib.util
import io
import os
import tarfile
import tempfile
import unittest

_spec = importlib.util.spec_from_file_location("oci_image", os.path.join(os.path.dirname(__file__), "oci-image.py"))
oci = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oci)

HEAD = "FROM rust AS build\nRUN true\nFROM scratch\nCOPY --from=build /rootfs/ /\n"


def config(tail, **build_args):
    return oci.image_config(HEAD + tail, build_args)


class FinalStage(unittest.TestCase):
    def test_reads_every_supported_instruction(self):
        got = config(
            "ARG VERSION\n"
            "# comment inside the stage\n"
            'ENV A=1 \\\n    B="two words"\n'
            "USER 65532:65532\n"
            "EXPOSE 10250 8080/udp\n"
            'ENTRYPOINT ["/bin"]\n'
            'CMD ["serve", "--x"]\n'
            'LABEL a="x" \\\n  # a comment in a continuation, as BuildKit allows\n  v="${VERSION}"\n',
            VERSION="1.2.3",
        )
        self.assertEqual(
            got,
            {
                "Env": [oci.DEFAULT_PATH, "A=1", "B=two words"],
                "User": "65532:65532",
                "ExposedPorts": {"10250/tcp": {}, "8080/udp": {}},
                "Entrypoint": ["/bin"],
                "Cmd": ["serve", "--x"],
                "Labels": {"a": "x", "v": "1.2.3"},
            },
        )

    def test_env_overrides_and_own_path(self):
        got = config("ENV PATH=/x A=1\nENV A=2\n")
        self.assertEqual(got["Env"], ["PATH=/x", "A=2"])

    def test_refusals(self):
        cases = {
            "WORKDIR /tmp\n": "not supported",
            "RUN true\n": "not supported",
            "ENTRYPOINT /bin --flag\n": "JSON array",
            "ENV A 1\n": "KEY=VALUE",
            "LABEL v=$NOPE\n": "not an ARG or ENV",
            "ARG VERSION\n": "no value given",
            "COPY . /\n": "the only COPY",
            "COPY --from=build /rootfs/ /\n": "exactly one",
        }
        for tail, message in cases.items():
            with self.subTest(tail=tail), self.assertRaisesRegex(oci.ImageError, message):
                config(tail)

    def test_final_stage_must_be_scratch_and_copy_rootfs(self):
        with self.assertRaisesRegex(oci.ImageError, "FROM scratch"):
            oci.image_config("FROM debian\n", {})
        with self.assertRaisesRegex(oci.ImageError, "exactly one"):
            oci.image_config("FROM scratch\nUSER 1\n", {})

    def test_unused_build_argument_is_an_error(self):
        with self.assertRaisesRegex(oci.ImageError, "not declared"):
            config("USER 1\n", REVISON="typo")

    def test_unsafe_build_argument_value(self):
        with self.assertRaisesRegex(oci.ImageError, "quoting"):
            oci.parse_build_args(['VERSION=1" x="y'])

    def test_the_real_dockerfiles(self):
        for name in ("webhook", "agent"):
            with open(os.path.join(os.path.dirname(__file__), f"{name}.Dockerfile")) as f:
                got = oci.image_config(f.read(), {"VERSION": "1", "REVISION": "r", "CREATED": "c"})
            self.assertEqual(got["User"], "65532:65532")
            self.assertEqual(got["Entrypoint"], [f"/rolebridge-{name}"])
            self.assertEqual(got["Labels"]["org.opencontainers.image.title"], f"rolebridge-{name}")
            self.assertIn("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", got["Env"])


class Layer(unittest.TestCase):
    def make_root(self, base, mtime, mode):
        root = os.path.join(base, "root")
        os.makedirs(os.path.join(root, "etc", "ssl"))
        for rel, content in (("zbin", b"\x7fELF"), ("etc/passwd", b"p"), ("etc/ssl/ca", b"c"), ("a", b"")):
            path = os.path.join(root, rel)
            with open(path, "wb") as f:
                f.write(content)
            os.chmod(path, mode)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.utime(os.path.join(dirpath, name), (mtime, mtime))
        return root

    def test_same_content_same_bytes_regardless_of_dates_and_walk(self):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            one = oci.layer_tar(self.make_root(a, 1_000_000, 0o444), 42)
            two = oci.layer_tar(self.make_root(b, 2_000_000, 0o444), 42)
            self.assertEqual(one, two)
            self.assertEqual(oci.gzipped(one), oci.gzipped(two))
            with tarfile.open(fileobj=io.BytesIO(one)) as tar:
                members = tar.getmembers()
            self.assertEqual([m.name for m in members], ["a", "etc", "etc/passwd", "etc/ssl", "etc/ssl/ca", "zbin"])
            self.assertTrue(all(m.mtime == 42 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members))

    def test_modes_are_kept(self):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            self.assertNotEqual(oci.layer_tar(self.make_root(a, 1, 0o444), 42), oci.layer_tar(self.make_root(b, 1, 0o555), 42))

    def test_gzip_header_has_no_date_or_name(self):
        data = oci.gzipped(b"x" * 100)
        self.assertEqual(data[4:8], b"\0\0\0\0")  # MTIME
        self.assertEqual(data[3] & 0x08, 0)  # no FNAME
        self.assertEqual(gzip.decompress(data), b"x" * 100)

    def test_symlinks_are_refused(self):
        with tempfile.TemporaryDirectory() as a:
            os.symlink("/bin/sh", os.path.join(a, "sh"))
            with self.assertRaisesRegex(oci.ImageError, "only regular files"):
                oci.layer_tar(a, 0)


if __name__ == "__main__":
    unittest.main()
