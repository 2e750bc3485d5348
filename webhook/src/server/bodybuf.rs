//! Request-body buffers whose memory goes back to the kernel when they are dropped.
//!
//! A review is about 10 KB and lives on the heap. A body that outgrows [`HEAP_MAX`] moves into
//! an anonymous mapping of its own, grown in place or moved by the kernel (`mremap`, no copy)
//! and unmapped on drop. Clients decide how many large bodies arrive; through the allocator, a
//! burst of them would leave its peak behind in the allocator's free lists (measured: ~90 MiB
//! retained after 100 connections of ~3.4 MB bodies), while a mapping is returned the moment
//! the body is done with.

#![allow(
    unsafe_code,
    reason = "large bodies live in mappings of their own (mmap, mremap, munmap: libc's C API) so \
              that their memory goes back to the kernel on drop; each block states its invariant"
)]

/// Largest body kept on the heap.
pub(crate) const HEAP_MAX: usize = 64 << 10;

/// A growable byte buffer: heap below [`HEAP_MAX`], its own mapping above (on Linux).
pub(crate) struct BodyBuf {
    inner: Inner,
}

enum Inner {
    Heap(Vec<u8>),
    #[cfg(target_os = "linux")]
    Mapped(mapped::Mapping),
}

impl Default for BodyBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl BodyBuf {
    pub(crate) fn new() -> Self {
        BodyBuf {
            inner: Inner::Heap(Vec::new()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match &self.inner {
            Inner::Heap(v) => v.len(),
            #[cfg(target_os = "linux")]
            Inner::Mapped(m) => m.len,
        }
    }

    /// Bytes of memory the buffer holds (what the body budget pays for).
    pub(crate) fn capacity(&self) -> usize {
        match &self.inner {
            Inner::Heap(v) => v.capacity(),
            #[cfg(target_os = "linux")]
            Inner::Mapped(m) => m.cap,
        }
    }

    /// What [`BodyBuf::grow_to`] would hold for `capacity` (mappings are whole pages).
    pub(crate) fn rounded(capacity: usize) -> usize {
        if capacity <= HEAP_MAX || cfg!(not(target_os = "linux")) {
            capacity
        } else {
            capacity.next_multiple_of(page_size())
        }
    }

    /// Grows the buffer to hold at least `capacity` bytes (exactly [`BodyBuf::rounded`]).
    pub(crate) fn grow_to(&mut self, capacity: usize) -> std::io::Result<()> {
        if capacity <= self.capacity() {
            return Ok(());
        }
        match &mut self.inner {
            Inner::Heap(v) if capacity <= HEAP_MAX || cfg!(not(target_os = "linux")) => {
                v.reserve_exact(capacity - v.len());
            }
            #[cfg(target_os = "linux")]
            Inner::Heap(v) => {
                let mut m = mapped::Mapping::new(Self::rounded(capacity))?;
                m.extend(v);
                self.inner = Inner::Mapped(m);
            }
            #[cfg(target_os = "linux")]
            Inner::Mapped(m) => m.grow(Self::rounded(capacity))?,
        }
        Ok(())
    }

    /// Appends `bytes`; the capacity must already be there.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        assert!(self.len() + bytes.len() <= self.capacity(), "grow_to first");
        match &mut self.inner {
            Inner::Heap(v) => v.extend_from_slice(bytes),
            #[cfg(target_os = "linux")]
            Inner::Mapped(m) => m.extend(bytes),
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match &self.inner {
            Inner::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Inner::Mapped(m) => m.as_slice(),
        }
    }
}

fn page_size() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            return n as usize;
        }
    }
    4096
}

#[cfg(target_os = "linux")]
mod mapped {
    use std::ptr::NonNull;

    /// An anonymous private mapping of `cap` bytes, the first `len` of them written.
    pub(super) struct Mapping {
        ptr: NonNull<u8>,
        pub len: usize,
        pub cap: usize,
    }

    // SAFETY: the mapping is owned exclusively by this value, like a Vec's buffer.
    unsafe impl Send for Mapping {}
    // SAFETY: shared access only reads.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        pub(super) fn new(cap: usize) -> std::io::Result<Mapping> {
            // SAFETY: a fresh anonymous mapping; no existing memory is touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    cap,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Mapping {
                ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"),
                len: 0,
                cap,
            })
        }

        pub(super) fn grow(&mut self, cap: usize) -> std::io::Result<()> {
            // SAFETY: ptr/cap describe our own mapping; MREMAP_MAYMOVE lets the kernel move it,
            // after which only the returned address is used.
            let p = unsafe {
                libc::mremap(
                    self.ptr.as_ptr().cast(),
                    self.cap,
                    cap,
                    libc::MREMAP_MAYMOVE,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            self.ptr = NonNull::new(p.cast()).expect("mremap never returns null on success");
            self.cap = cap;
            Ok(())
        }

        pub(super) fn extend(&mut self, bytes: &[u8]) {
            assert!(self.len + bytes.len() <= self.cap);
            // SAFETY: the destination range lies within the mapping (checked above) and cannot
            // overlap `bytes`, which the caller borrows from elsewhere.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.ptr.as_ptr().add(self.len),
                    bytes.len(),
                );
            }
            self.len += bytes.len();
        }

        pub(super) fn as_slice(&self) -> &[u8] {
            // SAFETY: the first `len` bytes of the mapping are initialised (written by extend).
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly our mapping, which nothing borrows any more.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.cap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_heap_into_a_mapping_and_keeps_every_byte() {
        let mut b = BodyBuf::new();
        let mut expected = Vec::new();
        let mut cap = 0;
        for i in 0..200u32 {
            let chunk: Vec<u8> = (0..(i * 37 % 5000 + 1)).map(|j| (i + j) as u8).collect();
            if b.len() + chunk.len() > b.capacity() {
                cap = (b.len() + chunk.len()).max(cap * 2).max(1024);
                b.grow_to(cap).unwrap();
                assert_eq!(b.capacity(), BodyBuf::rounded(cap));
            }
            b.extend(&chunk);
            expected.extend_from_slice(&chunk);
        }
        assert!(b.capacity() > HEAP_MAX, "crossed into a mapping");
        assert_eq!(b.as_slice(), &expected[..]);
        assert_eq!(b.len(), expected.len());
    }

    #[test]
    #[should_panic(expected = "grow_to first")]
    fn writing_past_the_capacity_is_refused() {
        let mut b = BodyBuf::new();
        b.grow_to(4).unwrap();
        b.extend(b"12345");
    }
}
