//! JSON written straight into one buffer: the patch and the response.
//!
//! Both are a few kilobytes of mostly fixed text around a few strings. Building
//! `serde_json::Value`s and serialising them cost more than reading the whole review did (every
//! map a `BTreeMap`, every string escaped byte by byte, all of it dropped again; see
//! BENCHMARKS.md), so they are written here as text: keys and fixed fragments are trusted text,
//! copied as they are; every other string is escaped exactly as serde_json escapes it, so the
//! bytes are the ones `serde_json::to_vec` wrote for the same value (with its sorted keys, which
//! the writers here keep).

/// A JSON text being written.
#[derive(Default)]
pub(crate) struct Json {
    buf: Vec<u8>,
}

/// A token of a JSON pointer (RFC 6901).
#[derive(Clone, Copy)]
pub(crate) enum Tok<'a> {
    /// A field name of the Kubernetes API (`spec`, `containers`, `-`…): written as it is, as
    /// nothing in it needs escaping (checked in debug builds).
    Field(&'static str),
    /// A map key (an annotation's): `~` and `/` escaped.
    Key(&'a str),
    Index(usize),
}

/// What serde_json writes as is inside a string: anything but `"`, `\` and control characters.
fn plain(b: u8) -> bool {
    (b >= 0x20) & (b != b'"') & (b != b'\\')
}

/// Every byte of `s` is [`plain`]. Without an early exit the compiler checks 16 or 32 bytes
/// per step; with one, it took five instructions a byte, more than the rest of the writing.
fn all_plain(s: &[u8]) -> bool {
    s.iter().fold(true, |ok, &b| ok & plain(b))
}

impl Json {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Json {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Trusted JSON text (a fixed fragment, or one written by this module).
    pub(crate) fn raw(&mut self, text: &str) -> &mut Self {
        self.buf.extend_from_slice(text.as_bytes());
        self
    }

    pub(crate) fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// A string value that needs no escaping: one of rolebridge's own names or paths.
    pub(crate) fn fixed(&mut self, s: &'static str) -> &mut Self {
        debug_assert!(all_plain(s.as_bytes()), "{s:?} needs escaping");
        self.buf.reserve(s.len() + 2);
        self.buf.push(b'"');
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(b'"');
        self
    }

    /// A string value, quoted and escaped.
    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.buf.reserve(s.len() + 2);
        self.buf.push(b'"');
        self.str_content(s);
        self.buf.push(b'"');
        self
    }

    /// `s` escaped, without the quotes.
    fn str_content(&mut self, s: &str) {
        if all_plain(s.as_bytes()) {
            self.buf.extend_from_slice(s.as_bytes());
        } else {
            // Serialising a string into a `String` cannot fail.
            let quoted = serde_json::to_string(s).unwrap_or_default();
            self.buf
                .extend_from_slice(&quoted.as_bytes()[1..quoted.len().max(2) - 1]);
        }
    }

    pub(crate) fn int(&mut self, n: impl itoa::Integer) -> &mut Self {
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    pub(crate) fn bool(&mut self, b: bool) -> &mut Self {
        self.raw(if b { "true" } else { "false" })
    }

    /// An object whose members `members` writes.
    pub(crate) fn object(&mut self, members: impl FnOnce(&mut Object<'_>)) -> &mut Self {
        self.buf.push(b'{');
        members(&mut Object {
            out: self,
            empty: true,
        });
        self.buf.push(b'}');
        self
    }

    /// An array of `items`, each written by `item`.
    pub(crate) fn array<I: IntoIterator>(
        &mut self,
        items: I,
        mut item: impl FnMut(&mut Json, I::Item),
    ) -> &mut Self {
        self.buf.push(b'[');
        for (i, it) in items.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            item(self, it);
        }
        self.buf.push(b']');
        self
    }

    /// An array of strings.
    pub(crate) fn strings<S: AsRef<str>>(
        &mut self,
        items: impl IntoIterator<Item = S>,
    ) -> &mut Self {
        self.array(items, |out, s| {
            out.str(s.as_ref());
        })
    }

    /// A JSON pointer inside a string value (without the quotes): tokens escaped (`~` as `~0`,
    /// `/` as `~1`).
    pub(crate) fn pointer_content<'t>(&mut self, tokens: impl IntoIterator<Item = Tok<'t>>) {
        for t in tokens {
            self.buf.push(b'/');
            match t {
                Tok::Field(f) => {
                    debug_assert!(
                        all_plain(f.as_bytes()) && !f.contains(['~', '/']),
                        "{f:?} needs escaping"
                    );
                    self.buf.extend_from_slice(f.as_bytes());
                }
                Tok::Key(k) if !k.contains(['~', '/']) => self.str_content(k),
                Tok::Key(k) => self.str_content(&k.replace('~', "~0").replace('/', "~1")),
                Tok::Index(i) => {
                    self.buf
                        .extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
                }
            }
        }
    }
}

/// The members of an object being written.
pub(crate) struct Object<'j> {
    out: &'j mut Json,
    empty: bool,
}

impl Object<'_> {
    /// Starts member `key` (trusted: a fixed name); `value` writes its value.
    pub(crate) fn field(&mut self, key: &str, value: impl FnOnce(&mut Json)) -> &mut Self {
        let buf = &mut self.out.buf;
        if !self.empty {
            buf.push(b',');
        }
        self.empty = false;
        buf.push(b'"');
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(b"\":");
        value(self.out);
        self
    }

    /// A member whose value is a string, escaped.
    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.field(key, |out| {
            out.str(value);
        })
    }

    /// A member whose value is a string that needs no escaping (see [`Json::fixed`]).
    pub(crate) fn fixed(&mut self, key: &str, value: &'static str) -> &mut Self {
        self.field(key, |out| {
            out.fixed(value);
        })
    }

    /// A member whose value is trusted JSON text.
    pub(crate) fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.field(key, |out| {
            out.raw(json);
        })
    }

    pub(crate) fn int(&mut self, key: &str, n: impl itoa::Integer) -> &mut Self {
        self.field(key, |out| {
            out.int(n);
        })
    }

    pub(crate) fn bool(&mut self, key: &str, b: bool) -> &mut Self {
        self.field(key, |out| {
            out.bool(b);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn written(f: impl FnOnce(&mut Json)) -> String {
        let mut out = Json::default();
        f(&mut out);
        String::from_utf8(out.into_bytes()).unwrap()
    }

    /// Every string is escaped exactly as serde_json escapes it, so what is written is what
    /// `serde_json::to_string` writes for the same value.
    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let samples = [
            "",
            "plain",
            "quote\"d",
            "back\\slash",
            "new\nline\ttab\r\u{1}\u{1f}\u{7f}",
            "ünïcödé ✓ 𝄞",
            "</script>",
        ];
        for s in samples {
            assert_eq!(
                written(|o| {
                    o.str(s);
                }),
                serde_json::to_string(s).unwrap()
            );
        }
        let object = written(|o| {
            o.object(|m| {
                m.str("a", "x\"y")
                    .int("b", -3)
                    .bool("c", true)
                    .raw("d", "null");
                m.field("e", |o| {
                    o.strings(["1", "2"]);
                });
            });
        });
        assert_eq!(
            object,
            json!({"a": "x\"y", "b": -3, "c": true, "d": null, "e": ["1", "2"]}).to_string()
        );
    }

    #[test]
    fn pointers_escape_their_tokens() {
        let p = written(|o| {
            o.raw("\"");
            o.pointer_content([
                Tok::Field("metadata"),
                Tok::Field("annotations"),
                Tok::Key("a~b/c"),
                Tok::Index(12),
            ]);
            o.raw("\"");
        });
        assert_eq!(p, r#""/metadata/annotations/a~0b~1c/12""#);
        let via_jsonptr =
            jsonptr::PointerBuf::from_tokens(["metadata", "annotations", "a~b/c", "12"]);
        assert_eq!(p, serde_json::to_string(via_jsonptr.as_str()).unwrap());
    }
}
