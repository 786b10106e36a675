//! [`BloomFilter`]: `ExistenceFilter.unchanged_names`, tested as the
//! Firebase SDKs do (MD5 of the full resource name, split into two
//! little-endian 64-bit hashes, `h(i) = h1 + i·h2 mod bit count`).

use md5::{Digest, Md5};

/// A bloom filter of the full resource names of every document a target matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    bitmap: Vec<u8>,
    bit_count: u64,
    hash_count: u32,
}

/// A bloom filter the server sent that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unusable bloom filter: {0}")]
pub struct BloomFilterError(&'static str);

impl BloomFilter {
    /// From the wire: bitmap, padding (unused bits of the last byte), hash count.
    pub fn new(bitmap: Vec<u8>, padding: i32, hash_count: i32) -> Result<Self, BloomFilterError> {
        if !(0..8).contains(&padding) {
            return Err(BloomFilterError("padding is not in 0..8"));
        }
        if hash_count < 0 {
            return Err(BloomFilterError("negative hash count"));
        }
        if bitmap.is_empty() && padding != 0 {
            return Err(BloomFilterError("padding without a bitmap"));
        }
        if !bitmap.is_empty() && hash_count == 0 {
            return Err(BloomFilterError("a bitmap without hashes"));
        }
        let bit_count = bitmap.len() as u64 * 8 - padding as u64;
        Ok(BloomFilter {
            bitmap,
            bit_count,
            hash_count: hash_count as u32,
        })
    }

    /// `false` means the name is certainly not in the set.
    pub fn might_contain(&self, name: &str) -> bool {
        if self.bit_count == 0 {
            return false;
        }
        let digest = Md5::digest(name.as_bytes());
        let h1 = u64::from_le_bytes(digest[..8].try_into().expect("16 bytes"));
        let h2 = u64::from_le_bytes(digest[8..16].try_into().expect("16 bytes"));
        (0..u64::from(self.hash_count)).all(|i| {
            let index = h1.wrapping_add(i.wrapping_mul(h2)) % self.bit_count;
            self.bitmap[(index / 8) as usize] & (1 << (index % 8)) != 0
        })
    }

    /// Build one (tests and the simulator): the server's side.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>, bits: u64, hash_count: u32) -> Self {
        let bytes = bits.div_ceil(8).max(1) as usize;
        let mut f = BloomFilter {
            bitmap: vec![0; bytes],
            bit_count: bytes as u64 * 8,
            hash_count,
        };
        for name in names {
            let digest = Md5::digest(name.as_bytes());
            let h1 = u64::from_le_bytes(digest[..8].try_into().expect("16 bytes"));
            let h2 = u64::from_le_bytes(digest[8..16].try_into().expect("16 bytes"));
            for i in 0..u64::from(hash_count) {
                let index = h1.wrapping_add(i.wrapping_mul(h2)) % f.bit_count;
                f.bitmap[(index / 8) as usize] |= 1 << (index % 8);
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_and_most_others_are_not() {
        let names: Vec<String> = (0..100)
            .map(|i| format!("projects/p/databases/(default)/documents/c/{i}"))
            .collect();
        let f = BloomFilter::of(names.iter().map(String::as_str), 1000, 7);
        assert!(names.iter().all(|n| f.might_contain(n)));
        let false_positives = (100..1100)
            .filter(|i| f.might_contain(&format!("projects/p/databases/(default)/documents/c/{i}")))
            .count();
        assert!(false_positives < 50, "{false_positives}");
        assert!(BloomFilter::new(vec![], 1, 0).is_err());
        assert!(BloomFilter::new(vec![1], 8, 1).is_err());
        assert!(!BloomFilter::new(vec![], 0, 0).unwrap().might_contain("x"));
    }

    /// The JS SDK's golden case: an empty filter's bitmap with one bit set
    /// is not needed; check the byte/bit layout instead (bit i of byte i/8,
    /// least significant first).
    #[test]
    fn bit_layout_is_least_significant_first() {
        let f = BloomFilter::new(vec![0b0000_0001, 0], 0, 1).unwrap();
        assert_eq!(f.bit_count, 16);
        let any = (0..200)
            .map(|i| format!("n{i}"))
            .find(|n| f.might_contain(n))
            .unwrap();
        let d = Md5::digest(any.as_bytes());
        let h1 = u64::from_le_bytes(d[..8].try_into().unwrap());
        assert_eq!(h1 % 16, 0);
    }
}
