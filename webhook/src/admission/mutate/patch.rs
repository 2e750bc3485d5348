//! The patch as it is sent: a JSON array of `add` operations, written straight into one buffer
//! as the operations are decided (see [`crate::admission::json`]), then base64-encoded straight
//! into the response.

use std::fmt;

use json_patch::PatchOperation;

use crate::admission::json::{Json, Tok};

/// A JSON patch of `add` operations, as JSON text.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Patch {
    /// `[…]`; empty when there is no operation.
    json: Vec<u8>,
    len: usize,
    /// The `rolebridge.io/bindings` value the patch writes, if it writes one.
    applied: Option<String>,
}

impl Patch {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many operations.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The JSON text of the operations (empty when there is none).
    pub fn as_bytes(&self) -> &[u8] {
        &self.json
    }

    /// The operations, read back from the text: what the API server will apply.
    pub fn ops(&self) -> Result<Vec<PatchOperation>, serde_json::Error> {
        if self.json.is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_slice(&self.json)
    }

    /// The `container=binding` pairs the patch writes into `rolebridge.io/bindings`; `None`
    /// when it leaves the pod's annotation as it was.
    pub fn applied(&self) -> Option<&str> {
        self.applied.as_deref()
    }
}

impl fmt::Debug for Patch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.json))
    }
}

/// A JSON pointer's text (escaped, without the quotes), written once and used by several
/// operations.
pub(super) struct Pointer(String);

/// The [`Pointer`] of `path`.
pub(super) fn pointer(path: &[Tok<'_>]) -> Pointer {
    let mut out = Json::with_capacity(64);
    out.pointer_content(path.iter().copied());
    // Written from `&str`s and digits only, so it is UTF-8.
    Pointer(String::from_utf8(out.into_bytes()).unwrap_or_default())
}

/// A patch being written.
pub(super) struct PatchOut {
    out: Json,
    len: usize,
    applied: Option<String>,
}

impl PatchOut {
    /// A patch for `containers` covered containers: room for all of it, as growing the buffer
    /// copies what was written (about 4 KB for the agent and volumes, under 1 KB a container).
    pub(super) fn new(containers: usize) -> Self {
        PatchOut {
            out: Json::with_capacity(4096 + 1024 * containers),
            len: 0,
            applied: None,
        }
    }

    /// `add` at `path` (and `last`, when given) the value `value` writes.
    fn op(&mut self, path: &[Tok<'_>], last: Option<Tok<'_>>, value: impl FnOnce(&mut Json)) {
        self.op_with(
            |out| out.pointer_content(path.iter().copied().chain(last)),
            value,
        );
    }

    /// `add` at the pointer `pointer` writes (the text inside the quotes).
    fn op_with(&mut self, pointer: impl FnOnce(&mut Json), value: impl FnOnce(&mut Json)) {
        self.out.raw(if self.len == 0 {
            r#"[{"op":"add","path":""#
        } else {
            r#",{"op":"add","path":""#
        });
        pointer(&mut self.out);
        self.out.raw(r#"","value":"#);
        value(&mut self.out);
        self.out.raw("}");
        self.len += 1;
    }

    pub(super) fn add(&mut self, path: &[Tok<'_>], value: impl FnOnce(&mut Json)) {
        self.op(path, None, value);
    }

    /// `add` at `pointer`, a [`pointer`] written once for many operations (a container's
    /// `…/env/-` for each of its variables).
    pub(super) fn add_at(&mut self, pointer: &Pointer, value: impl FnOnce(&mut Json)) {
        self.op_with(
            |out| {
                out.raw(&pointer.0);
            },
            value,
        );
    }

    /// `add` to the end of an array, or create the array when the pod has none (JSON patch
    /// cannot append to a missing array).
    pub(super) fn append(&mut self, exists: bool, path: &[Tok<'_>], item: impl FnOnce(&mut Json)) {
        if exists {
            self.op(path, Some(Tok::Field("-")), item);
        } else {
            self.op(path, None, |out| {
                out.raw("[");
                item(out);
                out.raw("]");
            });
        }
    }

    /// Inserts an item at `index` of `spec.<field>` (which has at least `index` entries when
    /// it exists), or creates the array.
    pub(super) fn insert_at(
        &mut self,
        exists: bool,
        field: &'static str,
        index: usize,
        item: impl FnOnce(&mut Json),
    ) {
        let path = [Tok::Field("spec"), Tok::Field(field)];
        if exists {
            self.op(&path, Some(Tok::Index(index)), item);
        } else {
            self.append(false, &path, item);
        }
    }

    /// Records the `rolebridge.io/bindings` value the operations write.
    pub(super) fn applies(&mut self, applied: String) {
        self.applied = Some(applied);
    }

    pub(super) fn finish(mut self) -> Patch {
        if self.len > 0 {
            self.out.raw("]");
        }
        Patch {
            json: self.out.into_bytes(),
            len: self.len,
            applied: self.applied,
        }
    }
}
