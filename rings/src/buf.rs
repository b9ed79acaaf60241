//! Zeroed, aligned heap buffers for O_DIRECT I/O.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A zero-initialised heap buffer whose address is aligned (to 4096 bytes by
/// default), as O_DIRECT requires. Derefs to `[u8]`.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: `AlignedBuf` uniquely owns its allocation, like `Vec<u8>`; nothing
// in it is tied to the thread that allocated it.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reading the bytes, like `&Vec<u8>`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// The default alignment: a page, enough for every O_DIRECT device seen in practice.
    pub const PAGE: usize = 4096;

    /// `len` zero bytes aligned to [`AlignedBuf::PAGE`].
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf::zeroed_aligned(len, Self::PAGE)
    }

    /// `len` zero bytes aligned to `align` (raised to at least a page).
    ///
    /// # Panics
    ///
    /// If `align` is not a power of two, or `len` rounded up to it overflows.
    pub fn zeroed_aligned(len: usize, align: usize) -> AlignedBuf {
        let align = align.max(Self::PAGE);
        // Never allocate zero bytes (undefined for `alloc`): keep at least one block.
        let size = len.max(1).next_multiple_of(align);
        let layout = Layout::from_size_align(size, align).expect("alignment is a power of two");
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len, layout }
    }

    /// The alignment of the buffer's address.
    pub fn align(&self) -> usize {
        self.layout.align()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size() >= len` initialised (zeroed)
        // bytes owned by `self`, which outlive the returned borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by `alloc_zeroed(self.layout)` and is freed only here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.layout.align())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_and_aligned() {
        for (len, align) in [(0, 4096), (1, 4096), (5000, 4096), (100, 65536)] {
            let mut b = AlignedBuf::zeroed_aligned(len, align);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % align, 0);
            assert!(b.iter().all(|&x| x == 0));
            b.fill(7);
            assert!(b.iter().all(|&x| x == 7));
        }
        assert_eq!(AlignedBuf::zeroed(10).align(), 4096);
    }
}
