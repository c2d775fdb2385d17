//! Aligned bounce buffers for O_DIRECT, without unsafe code: a `Vec<u8>`
//! over-allocated by the alignment and sliced at the first aligned
//! address. Each thread keeps one buffer (the engine's IO workers are
//! long-lived, so this is a small per-thread pool); a request for more
//! than [`KEEP_MAX`] bytes, or a nested use, gets a temporary one.

use std::cell::RefCell;

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
