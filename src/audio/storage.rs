//! The byte storage under [`AudioRing`](super::ring): rtrb's wait-free SPSC ring of `u8`.
//!
//! Under `cfg(loom)` rtrb's atomics would be invisible to the model checker, so the storage is a
//! stand-in with the same interface: a `loom` mutex around a `VecDeque`. It is at least as strong
//! as rtrb (whose commit is a Release store of the tail and whose read is an Acquire load of it),
//! so the loom models check the protocol *around* the storage (claim, close, wakeup, accounting),
//! which is the project's own code; rtrb's internals are rtrb's to prove.
//!
//! A frame is written into rtrb's uninitialised chunk (its initialised chunk would first fill
//! every byte with zero, a memset per frame the copy overwrites at once), and the header, whose
//! length is a constant, is copied and peeked with fixed-size moves when it does not wrap.

// Unsafe code here: one commit of uninitialised slots, with its SAFETY reason.
#![allow(unsafe_code)]

/// Writes `parts` one after another into the two halves of a wrapped chunk.
#[cfg(not(loom))]
fn scatter(
    first: &mut [std::mem::MaybeUninit<u8>],
    second: &mut [std::mem::MaybeUninit<u8>],
    parts: &[&[u8]],
) {
    let mut pos = 0;
    for part in parts {
        if pos < first.len() {
            let n = part.len().min(first.len() - pos);
            first[pos..pos + n].write_copy_of_slice(&part[..n]);
            second[..part.len() - n].write_copy_of_slice(&part[n..]);
        } else {
            let at = pos - first.len();
            second[at..at + part.len()].write_copy_of_slice(part);
        }
        pos += part.len();
    }
}

#[cfg(not(loom))]
mod imp {
    use rtrb::RingBuffer;

    pub(crate) struct ByteWriter(rtrb::Producer<u8>);
    pub(crate) struct ByteReader(rtrb::Consumer<u8>);

    pub(crate) fn byte_ring(capacity: usize) -> (ByteWriter, ByteReader) {
        let (p, c) = RingBuffer::new(capacity);
        (ByteWriter(p), ByteReader(c))
    }

    impl ByteWriter {
        /// Writes `header` then `body` as one commit, or nothing if they do not fit.
        pub(crate) fn write_frame<const H: usize>(
            &mut self,
            header: &[u8; H],
            body: &[u8],
        ) -> bool {
            let total = H + body.len();
            let Ok(mut chunk) = self.0.write_chunk_uninit(total) else {
                return false;
            };
            let (first, second) = chunk.as_mut_slices();
            if first.len() >= total {
                first[..H].write_copy_of_slice(header);
                first[H..total].write_copy_of_slice(body);
            } else {
                super::scatter(first, second, &[header, body]);
            }
            // SAFETY: the chunk's two slices hold exactly `total` slots, and both branches
            // above wrote every one of them (`scatter` writes its parts back to back across
            // the two slices, and the parts are `total` bytes long), so all are initialised.
            // The commit is rtrb's Release store of the tail: the bytes are visible to the
            // reader.
            unsafe { chunk.commit_all() };
            true
        }
    }

    impl ByteReader {
        /// Bytes committed by the writer and not yet consumed.
        pub(crate) fn queued(&self) -> usize {
            self.0.slots()
        }

        /// Applies `f` to the first `N` bytes, without consuming them; `None` if fewer are
        /// there. Unwrapped bytes are read in place, not copied first.
        pub(crate) fn peek<const N: usize, R>(
            &mut self,
            f: impl FnOnce(&[u8; N]) -> R,
        ) -> Option<R> {
            let chunk = self.0.read_chunk(N).ok()?;
            let (a, b) = chunk.as_slices();
            if let Some(whole) = a.first_chunk::<N>() {
                return Some(f(whole));
            }
            let mut out = [0u8; N];
            out[..a.len()].copy_from_slice(a);
            out[a.len()..].copy_from_slice(b);
            Some(f(&out)) // dropping the chunk uncommitted consumes nothing
        }

        /// Consumes `n` bytes, appending all but the first `skip` to `out` if given. The caller
        /// has checked that they are there.
        pub(crate) fn consume(&mut self, n: usize, out: Option<(usize, &mut Vec<u8>)>) {
            let Ok(chunk) = self.0.read_chunk(n) else {
                debug_assert!(false, "consume({n}) past what is queued");
                return;
            };
            if let Some((skip, out)) = out {
                let (a, b) = chunk.as_slices();
                out.extend_from_slice(a.get(skip..).unwrap_or_default());
                out.extend_from_slice(&b[skip.saturating_sub(a.len())..]);
            }
            chunk.commit_all();
        }
    }
}

#[cfg(loom)]
mod imp {
    use loom::sync::{Arc, Mutex};
    use std::collections::VecDeque;

    type Shared = Arc<Mutex<(usize, VecDeque<u8>)>>;
    pub(crate) struct ByteWriter(Shared);
    pub(crate) struct ByteReader(Shared);

    pub(crate) fn byte_ring(capacity: usize) -> (ByteWriter, ByteReader) {
        let shared = Arc::new(Mutex::new((capacity, VecDeque::new())));
        (ByteWriter(shared.clone()), ByteReader(shared))
    }

    fn lock(shared: &Shared) -> loom::sync::MutexGuard<'_, (usize, VecDeque<u8>)> {
        shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    impl ByteWriter {
        pub(crate) fn write_frame<const H: usize>(
            &mut self,
            header: &[u8; H],
            body: &[u8],
        ) -> bool {
            let mut g = lock(&self.0);
            if g.0 - g.1.len() < H + body.len() {
                return false;
            }
            g.1.extend(header.iter().chain(body).copied());
            true
        }
    }

    impl ByteReader {
        pub(crate) fn queued(&self) -> usize {
            lock(&self.0).1.len()
        }

        pub(crate) fn peek<const N: usize, R>(
            &mut self,
            f: impl FnOnce(&[u8; N]) -> R,
        ) -> Option<R> {
            let g = lock(&self.0);
            if g.1.len() < N {
                return None;
            }
            let mut out = [0u8; N];
            out.iter_mut().zip(g.1.iter()).for_each(|(o, b)| *o = *b);
            Some(f(&out))
        }

        pub(crate) fn consume(&mut self, n: usize, out: Option<(usize, &mut Vec<u8>)>) {
            let mut g = lock(&self.0);
            let taken = g.1.drain(..n);
            match out {
                Some((skip, out)) => out.extend(taken.skip(skip)),
                None => drop(taken),
            }
        }
    }
}

pub(crate) use imp::{ByteReader, ByteWriter, byte_ring};

#[cfg(all(test, not(loom)))]
mod tests {
    use super::byte_ring;

    #[test]
    fn writes_are_all_or_nothing_and_survive_wraparound() {
        let (mut w, mut r) = byte_ring(8);
        for round in 0u8..20 {
            assert!(w.write_frame(&[round, round + 1], &[round + 2, round + 3, round + 4]));
            assert!(!w.write_frame(&[0; 4], &[]), "only 3 bytes are free");
            assert_eq!(r.peek(|h: &[u8; 2]| *h), Some([round, round + 1]));
            let mut out = Vec::new();
            r.consume(5, Some((1, &mut out)));
            assert_eq!(out, [round + 1, round + 2, round + 3, round + 4]);
        }
        assert_eq!(r.peek(|h: &[u8; 1]| *h), None);
    }
}
