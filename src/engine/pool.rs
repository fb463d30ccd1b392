//! Buffer pool: freed storage buffers are kept by size class and handed out again.
//!
//! A buffer freed while recorded-but-unsubmitted work may still read it goes to `pending`.
//! Kernel outputs may reuse pending buffers (the command encoder orders the accesses), but
//! host uploads (`queue.write_buffer`, which runs before the next submit) take only `settled`
//! buffers, freed before the last submit.

use std::collections::HashMap;

/// Round a byte size up to its size class: 256 B granularity below 64 KiB, then four
/// classes per power of two (at most 25% waste).
pub fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(4);
    if b <= 65536 {
        return b.div_ceil(256) * 256;
    }
    let p = 63 - b.leading_zeros() as u64; // 2^p <= b < 2^(p+1)
    let step = 1u64 << (p - 2);
    b.div_ceil(step) * step
}

/// Counters for tests and `proxdm bench`: how much the pool created and reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created over the engine's life.
    pub created: u64,
    /// Bytes of all buffers created (live or pooled).
    pub bytes_created: u64,
    /// Allocations served from the pool.
    pub reused: u64,
    /// Buffers sitting idle in the pool now.
    pub idle: u64,
}

#[derive(Default)]
pub(crate) struct Pool {
    settled: HashMap<u64, Vec<wgpu::Buffer>>,
    pending: HashMap<u64, Vec<wgpu::Buffer>>,
    pub(crate) stats: PoolStats,
}

impl Pool {
    /// A free buffer of class `class`; `for_upload` restricts to settled buffers.
    pub(crate) fn take(&mut self, class: u64, for_upload: bool) -> Option<wgpu::Buffer> {
        let b = if for_upload {
            self.settled.get_mut(&class).and_then(Vec::pop)
        } else {
            self.pending
                .get_mut(&class)
                .and_then(Vec::pop)
                .or_else(|| self.settled.get_mut(&class).and_then(Vec::pop))
        };
        if b.is_some() {
            self.stats.reused += 1;
            self.stats.idle -= 1;
        }
        b
    }

    pub(crate) fn put(&mut self, class: u64, buffer: wgpu::Buffer) {
        self.pending.entry(class).or_default().push(buffer);
        self.stats.idle += 1;
    }

    /// Called after a submit: everything freed so far is safe for host writes.
    pub(crate) fn settle(&mut self) {
        for (class, mut v) in self.pending.drain() {
            self.settled.entry(class).or_default().append(&mut v);
        }
    }

    /// Drops every idle buffer (frees GPU memory).
    pub(crate) fn trim(&mut self) {
        self.settled.clear();
        self.stats.idle = self.pending.values().map(|v| v.len() as u64).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_request_and_waste_little() {
        for b in [
            1u64,
            4,
            255,
            256,
            257,
            65535,
            65536,
            65537,
            100_000,
            1 << 20,
            (1 << 20) + 1,
            123_456_789,
        ] {
            let c = size_class(b);
            assert!(c >= b, "class {c} < {b}");
            assert!(
                c as f64 <= (b.max(256) as f64) * 1.25 + 256.0,
                "class {c} wastes too much for {b}"
            );
            assert_eq!(size_class(c), c, "class of a class is itself");
            assert_eq!(c % 4, 0);
        }
    }
}
