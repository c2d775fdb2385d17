//! Replies on the wire: several replies gathered into one [`Batch`] and
//! written with one vectored write, payloads straight from the requests'
//! buffers (no copy into a reply buffer).
//!
//! A batch keeps the reply headers (and structured error messages) back
//! to back in one small arena; each read payload stays in the buffer the
//! request travelled with. [`Batch::slices`] lays them out as `IoSlice`s
//! (consecutive headers without a payload between them merge into one),
//! and [`write_all`] writes them with `writev`, advancing through the
//! slices on partial writes. A stream that cannot write vectored (see
//! `AsyncWrite::is_write_vectored`) gets the slices coalesced through a
//! small staging buffer instead, big payloads written directly.
//!
//! Bounds: at most [`MAX_BATCH_REPLIES`] replies and about
//! [`MAX_BATCH_BYTES`] of payload per batch (a single bigger reply goes
//! alone), so one write call carries at most `2 * MAX_BATCH_REPLIES`
//! slices, far below `IOV_MAX`.

use std::io::{self, IoSlice};
use std::pin::Pin;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::export::IoBuf;

/// Replies gathered into one write at most.
pub(crate) const MAX_BATCH_REPLIES: usize = 64;
/// Payload bytes gathered into one write at most (a single bigger reply is
/// written alone).
pub(crate) const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Staging buffer for streams that cannot write vectored: slices smaller
/// than this are copied and written together, bigger ones directly.
const STAGING: usize = 64 * 1024;

/// One reply of a batch.
struct Item<T> {
    /// End of this reply's header bytes in [`Batch::heads`] (they start
    /// where the previous reply's end).
    head_end: usize,
    /// Payload bytes, taken from the front of `buf`.
    payload: usize,
    buf: IoBuf,
    tag: T,
}

/// Replies ready to be written together. `T` is what the caller needs
/// back for each reply once it is written (its slot).
pub(crate) struct Batch<T> {
    heads: Vec<u8>,
    items: Vec<Item<T>>,
    payload_bytes: usize,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch {
            heads: Vec::with_capacity(MAX_BATCH_REPLIES * 32),
            items: Vec::with_capacity(MAX_BATCH_REPLIES),
            payload_bytes: 0,
        }
    }
}

impl<T> Batch<T> {
    /// Where the next reply's header bytes go: append them, then call
    /// [`Batch::push`].
    pub(crate) fn heads_mut(&mut self) -> &mut Vec<u8> {
        &mut self.heads
    }

    /// Ends a reply: its header is what was appended to
    /// [`Batch::heads_mut`] since the previous reply, its payload is
    /// `buf[..payload]` (`payload <= buf.len()`; 0 for none).
    pub(crate) fn push(&mut self, tag: T, buf: IoBuf, payload: usize) {
        let payload = payload.min(buf.len());
        self.payload_bytes += payload;
        self.items.push(Item {
            head_end: self.heads.len(),
            payload,
            buf,
            tag,
        });
    }

    /// True once no more replies should join this batch.
    pub(crate) fn is_full(&self) -> bool {
        self.items.len() >= MAX_BATCH_REPLIES || self.payload_bytes >= MAX_BATCH_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The bytes of the batch in order, as slices for one vectored write:
    /// headers that follow each other without a payload between them
    /// share one slice.
    pub(crate) fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(self.items.len() * 2);
        // Headers from here on are not in `out` yet.
        let mut pending = 0;
        for it in &self.items {
            if it.payload > 0 {
                if it.head_end > pending {
                    out.push(IoSlice::new(&self.heads[pending..it.head_end]));
                }
                out.push(IoSlice::new(&it.buf[..it.payload]));
                pending = it.head_end;
            }
        }
        let end = self.items.last().map_or(0, |it| it.head_end);
        if end > pending {
            out.push(IoSlice::new(&self.heads[pending..end]));
        }
        out
    }

    /// Empties the batch, handing back each reply's tag and buffer.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (T, IoBuf)> + '_ {
        self.heads.clear();
        self.payload_bytes = 0;
        self.items.drain(..).map(|it| (it.tag, it.buf))
    }
}

/// Writes every byte of `bufs` and flushes: one vectored write when the
/// stream supports it (more only on partial writes), else coalesced
/// through `staging`.
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut [IoSlice<'_>],
    staging: &mut Vec<u8>,
) -> io::Result<()> {
    if w.is_write_vectored() {
        write_all_vectored(w, bufs).await?;
    } else {
        write_all_coalesced(w, bufs, staging).await?;
    }
    w.flush().await
}

/// `writev` until everything is written, advancing through the slices
/// after each partial write.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    // Skip leading empty slices.
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = std::future::poll_fn(|cx| Pin::new(&mut *w).poll_write_vectored(cx, bufs)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// For streams without vectored writes: small slices are copied into
/// `staging` and written together; a slice of [`STAGING`] bytes or more
/// is written as it is.
async fn write_all_coalesced<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &[IoSlice<'_>],
    staging: &mut Vec<u8>,
) -> io::Result<()> {
    staging.clear();
    for s in bufs {
        if staging.len() + s.len() > STAGING && !staging.is_empty() {
            w.write_all(staging).await?;
            staging.clear();
        }
        if s.len() >= STAGING {
            w.write_all(s).await?;
        } else {
            staging.extend_from_slice(s);
        }
    }
    if !staging.is_empty() {
        w.write_all(staging).await?;
        staging.clear();
    }
    Ok(())
}

/// A writer for tests: takes at most `max` bytes per call, counts the
/// calls, vectored or not.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::task::{Context, Poll};

    pub(crate) struct Trickle {
        pub max: usize,
        pub vectored: bool,
        pub calls: usize,
        pub out: Vec<u8>,
    }

    impl Trickle {
        pub(crate) fn new(max: usize, vectored: bool) -> Trickle {
            Trickle {
                max,
                vectored,
                calls: 0,
                out: Vec::new(),
            }
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            let mut left = self.max;
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(left);
                self.out.extend_from_slice(&b[..k]);
                left -= k;
                n += k;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Trickle;
    use super::*;

    /// Four replies: header + payload, two headers alone, header +
    /// payload; the batch and the bytes expected on the wire.
    fn sample() -> (Batch<u32>, Vec<u8>) {
        let mut b = Batch::default();
        let mut want = Vec::new();
        let parts: [(&[u8], Vec<u8>, usize); 4] = [
            (b"HEAD-A", (0..100u8).collect(), 100),
            (b"HB", vec![9; 10], 0),
            (b"HEAD-C", Vec::new(), 0),
            (b"D", (0..50u8).rev().collect(), 40),
        ];
        for (i, (h, buf, payload)) in parts.into_iter().enumerate() {
            b.heads_mut().extend_from_slice(h);
            want.extend_from_slice(h);
            want.extend_from_slice(&buf[..payload]);
            b.push(i as u32, buf.into(), payload);
        }
        (b, want)
    }

    #[test]
    fn slices_merge_headers_without_payload() {
        let (b, want) = sample();
        let s = b.slices();
        // HEAD-A | payload A | HB HEAD-C D | payload D
        assert_eq!(s.len(), 4);
        assert_eq!(&*s[2], b"HBHEAD-CD");
        assert_eq!(
            s.iter().flat_map(|x| x.iter().copied()).collect::<Vec<_>>(),
            want
        );
    }

    #[test]
    fn trailing_headers_are_written() {
        let mut b: Batch<()> = Batch::default();
        b.heads_mut().extend_from_slice(b"one");
        b.push((), IoBuf::from(vec![1, 2]), 2);
        b.heads_mut().extend_from_slice(b"two");
        b.push((), IoBuf::new(), 0);
        b.heads_mut().extend_from_slice(b"three");
        b.push((), IoBuf::new(), 0);
        let got: Vec<u8> = b.slices().iter().flat_map(|x| x.iter().copied()).collect();
        assert_eq!(got, b"one\x01\x02twothree");
        let back: Vec<_> = b.drain().collect();
        assert_eq!(back.len(), 3);
        assert!(b.is_empty() && b.slices().is_empty());
    }

    #[tokio::test]
    async fn partial_writes_advance_through_the_slices() {
        for max in [1, 3, 7, 64, 1000] {
            let (b, want) = sample();
            let mut w = Trickle::new(max, true);
            let mut s = b.slices();
            write_all(&mut w, &mut s, &mut Vec::new()).await.unwrap();
            assert_eq!(w.out, want, "max {max}");
            assert_eq!(w.calls, want.len().div_ceil(max), "max {max}");
        }
    }

    #[tokio::test]
    async fn one_call_when_the_stream_takes_everything() {
        let (b, want) = sample();
        let mut w = Trickle::new(usize::MAX, true);
        write_all(&mut w, &mut b.slices(), &mut Vec::new())
            .await
            .unwrap();
        assert_eq!((w.calls, w.out), (1, want));
    }

    #[tokio::test]
    async fn non_vectored_streams_get_coalesced_writes() {
        let (b, want) = sample();
        let mut w = Trickle::new(usize::MAX, false);
        let mut staging = Vec::new();
        write_all(&mut w, &mut b.slices(), &mut staging)
            .await
            .unwrap();
        assert_eq!((w.calls, &w.out), (1, &want));
        // A big payload is written directly, small pieces around it staged.
        let mut b: Batch<()> = Batch::default();
        b.heads_mut().extend_from_slice(b"h1");
        b.push((), IoBuf::from(vec![7; STAGING * 2]), STAGING * 2);
        b.heads_mut().extend_from_slice(b"h2");
        b.push((), IoBuf::new(), 0);
        let mut w = Trickle::new(usize::MAX, false);
        write_all(&mut w, &mut b.slices(), &mut staging)
            .await
            .unwrap();
        assert_eq!(w.calls, 3);
        assert_eq!(w.out.len(), 4 + STAGING * 2);
        // And partial writes still deliver everything.
        let (b, want) = sample();
        let mut w = Trickle::new(5, false);
        write_all(&mut w, &mut b.slices(), &mut staging)
            .await
            .unwrap();
        assert_eq!(w.out, want);
    }

    #[test]
    fn batch_bounds() {
        let mut b: Batch<()> = Batch::default();
        for _ in 0..MAX_BATCH_REPLIES - 1 {
            b.push((), IoBuf::new(), 0);
        }
        assert!(!b.is_full());
        b.push((), IoBuf::new(), 0);
        assert!(b.is_full());
        b.drain().for_each(drop);
        b.push((), IoBuf::zeroed(MAX_BATCH_BYTES), MAX_BATCH_BYTES);
        assert!(b.is_full(), "payload bytes bound the batch too");
    }
}
