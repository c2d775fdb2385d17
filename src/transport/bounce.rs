//! O_DIRECT IO for the transports that use it (`scsi`, `file` with
//! `direct yes`): [`aligned`] tells whether a request can go straight to
//! the device; [`read`] and [`write`] move any other one through an
//! aligned bounce buffer, a chunk of at most [`CHUNK`] bytes at a time,
//! over the logical blocks that cover it (a partly covered block is read,
//! patched and written back).
//!
//! Bounce buffers need no unsafe code: a `Vec<u8>` over-allocated by the
//! alignment and sliced at the first aligned address. Each thread keeps
//! one buffer (the engine's IO workers are long-lived, so this is a small
//! per-thread pool); a request for more than [`KEEP_MAX`] bytes, or a
//! nested use, gets a temporary one.

use std::cell::RefCell;
use std::fs::File;
use std::io;

use super::file::{errno_error, read_full, write_full};

/// Largest piece of one request moved through the bounce buffer at once.
pub const CHUNK: usize = 1 << 20;

/// Memory alignment used for O_DIRECT buffers (at least the logical block
/// size; the same as [`crate::iobuf::IO_ALIGN`]).
pub const MEM_ALIGN: usize = crate::iobuf::IO_ALIGN;

/// Rounds `v` down to a multiple of `a`.
pub(crate) fn down(v: u64, a: u64) -> u64 {
    v - v % a
}

/// Rounds `v` up to a multiple of `a` (`None` on overflow).
pub(crate) fn up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| down(x, a))
}

/// True if a request at memory `buf_addr` of `len` bytes at `offset` can
/// be sent with O_DIRECT as it is, for logical block size `bs`.
pub fn aligned(buf_addr: usize, len: usize, offset: u64, bs: usize) -> bool {
    let bs = bs.max(1);
    buf_addr % MEM_ALIGN.max(bs) == 0 && len % bs == 0 && offset % bs as u64 == 0
}

/// Reads `buf` at `offset` through the aligned bounce buffer, a chunk at
/// a time, over the blocks of size `bs` covering the range.
pub fn read(file: &File, buf: &mut [u8], offset: u64, bs: usize) -> io::Result<()> {
    let bs = bs.max(1) as u64;
    let chunk = down(CHUNK as u64, bs).max(bs);
    let end = offset
        .checked_add(buf.len() as u64)
        .ok_or_else(|| errno_error(libc::EOVERFLOW))?;
    let mut at = down(offset, bs);
    let stop = up(end, bs).ok_or_else(|| errno_error(libc::EOVERFLOW))?;
    with(chunk as usize, MEM_ALIGN.max(bs as usize), |b| {
        while at < stop {
            let n = chunk.min(stop - at);
            let piece = &mut b[..n as usize];
            read_full(file, piece, at)?;
            // The part of this chunk that the caller asked for.
            let from = offset.max(at);
            let to = end.min(at + n);
            let src = &piece[(from - at) as usize..(to - at) as usize];
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
            at += n;
        }
        Ok(())
    })
}

/// Writes `buf` at `offset` through the aligned bounce buffer; a chunk
/// only partly covered by the request (an unaligned head or tail) is read
/// first. Not atomic against another writer of the same blocks: callers
/// that may see overlapping unaligned writes serialise them (the NBD
/// server does, for an export with a minimum block size).
pub fn write(file: &File, buf: &[u8], offset: u64, bs: usize) -> io::Result<()> {
    let bs = bs.max(1) as u64;
    let chunk = down(CHUNK as u64, bs).max(bs);
    let end = offset
        .checked_add(buf.len() as u64)
        .ok_or_else(|| errno_error(libc::EOVERFLOW))?;
    let mut at = down(offset, bs);
    let stop = up(end, bs).ok_or_else(|| errno_error(libc::EOVERFLOW))?;
    with(chunk as usize, MEM_ALIGN.max(bs as usize), |b| {
        while at < stop {
            let n = chunk.min(stop - at);
            let piece = &mut b[..n as usize];
            let from = offset.max(at);
            let to = end.min(at + n);
            if from > at || to < at + n {
                read_full(file, piece, at)?;
            }
            piece[(from - at) as usize..(to - at) as usize]
                .copy_from_slice(&buf[(from - offset) as usize..(to - offset) as usize]);
            write_full(file, piece, at)?;
            at += n;
        }
        Ok(())
    })
}

/// Largest buffer a thread keeps between requests.
pub const KEEP_MAX: usize = (1 << 20) + 64 * 1024;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The aligned window of `len` bytes inside `raw` (which must hold
/// `len + align` bytes). `align` is a power of two.
fn window(raw: &mut [u8], len: usize, align: usize) -> &mut [u8] {
    let addr = raw.as_ptr() as usize;
    let skip = (align - addr % align) % align;
    &mut raw[skip..skip + len]
}

/// Runs `f` with an `align`-aligned buffer of `len` bytes (contents
/// unspecified). `align` must be a power of two (rounded up if not).
pub fn with<R>(len: usize, align: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let align = align.max(1).next_power_of_two();
    let need = len + align;
    if need > KEEP_MAX + align {
        let mut raw = vec![0u8; need];
        return f(window(&mut raw, len, align));
    }
    let kept = BUF.with(move |cell| match cell.try_borrow_mut() {
        Ok(mut raw) => {
            if raw.len() < need {
                raw.resize(need, 0);
            }
            Ok(f(window(&mut raw, len, align)))
        }
        Err(_) => Err(f),
    });
    match kept {
        Ok(r) => r,
        Err(f) => {
            let mut raw = vec![0u8; need];
            f(window(&mut raw, len, align))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_sized() {
        for (len, align) in [
            (512, 512),
            (4096, 4096),
            (1, 4096),
            (3 << 20, 4096),
            (0, 4096),
        ] {
            with(len, align, |b| {
                assert_eq!(b.len(), len);
                assert_eq!(b.as_ptr() as usize % align, 0);
                b.fill(7);
            });
        }
    }

    #[test]
    fn nested_use_gets_its_own_buffer() {
        with(4096, 4096, |outer| {
            outer.fill(1);
            with(4096, 4096, |inner| {
                inner.fill(2);
            });
            assert!(outer.iter().all(|&b| b == 1));
        });
    }
}
