//! [`IoBuf`]: a request buffer whose memory is aligned to [`IO_ALIGN`]
//! bytes, so that O_DIRECT paths can read into it and write from it
//! without a bounce copy.
//!
//! It behaves like the `Vec<u8>` it replaces on the hot path (length,
//! capacity, `resize`, `truncate`, deref to `[u8]`), but its allocation
//! always starts on a 4 KiB boundary, which covers every logical block
//! size up to 4 KiB and the page size. Memory is zeroed when the buffer
//! grows, never left uninitialised.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every [`IoBuf`]'s memory (also its empty pointer's).
pub const IO_ALIGN: usize = 4096;

/// A zero-sized stand-in with the alignment, for the empty buffer's
/// dangling (but aligned, non-null) pointer.
#[repr(align(4096))]
struct Aligned;

/// A growable byte buffer whose memory is aligned to [`IO_ALIGN`].
pub struct IoBuf {
    /// Start of the allocation (`cap > 0`), or an aligned dangling
    /// pointer (`cap == 0`).
    ptr: NonNull<u8>,
    /// Initialised (and zeroed or written) bytes.
    len: usize,
    /// Bytes allocated; every byte in `..cap` is initialised.
    cap: usize,
}

// SAFETY: an IoBuf owns its allocation exactly as a Vec<u8> does (no
// shared aliasing, no thread-bound state); moving it to another thread
// moves that ownership.
unsafe impl Send for IoBuf {}
// SAFETY: `&IoBuf` only gives out `&[u8]` (reads), as `&Vec<u8>` does.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// An empty buffer; allocates nothing.
    pub const fn new() -> IoBuf {
        IoBuf {
            ptr: NonNull::<Aligned>::dangling().cast::<u8>(),
            len: 0,
            cap: 0,
        }
    }

    /// An empty buffer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> IoBuf {
        let mut b = IoBuf::new();
        b.reserve_exact(cap);
        b
    }

    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> IoBuf {
        let mut b = IoBuf::new();
        b.resize(len, 0);
        b
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no byte is in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Makes room for at least `additional` bytes past `len`, allocating
    /// exactly that much when it must grow (contents are kept).
    pub fn reserve_exact(&mut self, additional: usize) {
        let need = self.len.saturating_add(additional);
        if need > self.cap {
            self.realloc(need);
        }
    }

    /// Sets the length to `new_len`: new bytes are `value`, a shorter
    /// length keeps the allocation (as `Vec::resize`).
    pub fn resize(&mut self, new_len: usize, value: u8) {
        if new_len > self.cap {
            self.realloc(new_len);
        }
        if new_len > self.len {
            let len = self.len;
            self.len = new_len;
            self[len..].fill(value);
        } else {
            self.len = new_len;
        }
    }

    /// Shortens to `len` bytes (no effect if already shorter); the
    /// allocation is kept.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Length 0, allocation kept.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `bytes`, growing geometrically.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let len = self.len;
        let need = len.saturating_add(bytes.len());
        if need > self.cap {
            self.realloc(need.max(self.cap.saturating_mul(2)));
        }
        self.len = need;
        self[len..].copy_from_slice(bytes);
    }

    /// A copy of the bytes in use, as a `Vec` (tests, slow paths).
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_ref().to_vec()
    }

    /// Moves the contents into a new zeroed allocation of exactly `cap`
    /// bytes (`cap > self.cap`).
    fn realloc(&mut self, cap: usize) {
        let Ok(layout) = Layout::from_size_align(cap, IO_ALIGN) else {
            // Larger than isize::MAX: the same outcome as Vec's.
            alloc::handle_alloc_error(Layout::new::<Aligned>());
        };
        // SAFETY: `layout` has a non-zero size (`cap > self.cap >= 0`).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(new) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout);
        };
        if self.cap > 0 {
            // SAFETY: the old allocation holds `self.len <= self.cap < cap`
            // initialised bytes; the new one is distinct and `cap` long.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), new.as_ptr(), self.len) };
            self.dealloc();
        }
        self.ptr = new;
        self.cap = cap;
    }

    /// Frees the allocation (`cap > 0`); the caller resets the fields.
    fn dealloc(&mut self) {
        if self.cap == 0 {
            return;
        }
        // SAFETY: `ptr` came from `alloc_zeroed` with exactly this size
        // and alignment (checked when it was allocated) and is freed once:
        // callers replace `ptr` or drop the buffer right after.
        unsafe {
            alloc::dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.cap, IO_ALIGN),
            )
        };
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        self.dealloc();
    }
}

impl Default for IoBuf {
    fn default() -> Self {
        IoBuf::new()
    }
}

impl Deref for IoBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is non-null and aligned; its first `len <= cap`
        // bytes are initialised (allocations are zeroed) and owned by
        // self, which the returned borrow keeps alive and unmutated.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for IoBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for IoBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl Clone for IoBuf {
    fn clone(&self) -> Self {
        IoBuf::from(&self[..])
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .finish()
    }
}

impl PartialEq for IoBuf {
    fn eq(&self, other: &IoBuf) -> bool {
        self[..] == other[..]
    }
}

impl Eq for IoBuf {}

impl PartialEq<[u8]> for IoBuf {
    fn eq(&self, other: &[u8]) -> bool {
        &self[..] == other
    }
}

impl PartialEq<Vec<u8>> for IoBuf {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self[..] == other[..]
    }
}

impl From<&[u8]> for IoBuf {
    fn from(bytes: &[u8]) -> IoBuf {
        let mut b = IoBuf::with_capacity(bytes.len());
        b.extend_from_slice(bytes);
        b
    }
}

/// Copies the bytes (the `Vec`'s memory is not aligned).
impl From<Vec<u8>> for IoBuf {
    fn from(v: Vec<u8>) -> IoBuf {
        IoBuf::from(&v[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(b: &IoBuf) -> bool {
        b.as_ptr() as usize % IO_ALIGN == 0
    }

    #[test]
    fn zero_length_is_aligned_and_allocates_nothing() {
        let mut b = IoBuf::new();
        assert!(aligned(&b));
        assert_eq!((b.len(), b.capacity()), (0, 0));
        assert!(b.is_empty());
        assert_eq!(&b[..], &[] as &[u8]);
        b.resize(0, 7);
        b.truncate(5);
        assert_eq!((b.len(), b.capacity()), (0, 0));
        let c = IoBuf::from(Vec::new());
        assert_eq!(c.capacity(), 0);
        assert_eq!(c, b);
    }

    #[test]
    fn every_allocation_is_aligned() {
        for n in [1, 511, 512, 4095, 4096, 4097, 65536, 1 << 20, 3 << 20] {
            let b = IoBuf::zeroed(n);
            assert!(aligned(&b), "{n}");
            assert_eq!(b.len(), n);
            assert!(b.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn growth_keeps_contents_and_zeroes_the_rest() {
        let mut b = IoBuf::from(vec![1, 2, 3]);
        b.resize(10_000, 0);
        assert!(aligned(&b));
        assert_eq!(&b[..3], &[1, 2, 3]);
        assert!(b[3..].iter().all(|&x| x == 0));
        b.fill(9);
        // Shrink then grow within the capacity: the regrown part is
        // reset, not the old bytes.
        b.truncate(2);
        assert_eq!(b.capacity(), 10_000);
        b.resize(6, 0);
        assert_eq!(&b[..], &[9, 9, 0, 0, 0, 0]);
        b.resize(4, 5);
        assert_eq!(b.to_vec(), vec![9, 9, 0, 0]);
    }

    #[test]
    fn reserve_extend_and_clone() {
        let mut b = IoBuf::with_capacity(100);
        assert_eq!((b.len(), b.capacity()), (0, 100));
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&[7u8; 200]);
        assert_eq!(b.len(), 203);
        assert_eq!(&b[..3], b"abc");
        let c = b.clone();
        assert_eq!(c, b);
        assert!(aligned(&c));
        b.reserve_exact(1000);
        assert!(b.capacity() >= 1203);
        assert_eq!(b.to_vec(), c.to_vec());
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn moves_between_threads() {
        let mut b = IoBuf::zeroed(4096);
        b[0] = 1;
        let b = std::thread::spawn(move || {
            let mut b = b;
            b[1] = 2;
            b
        })
        .join()
        .unwrap();
        assert_eq!(&b[..2], &[1, 2]);
    }
}
