//! Operating-system randomness in blocks: [`PooledRng`] hands out bytes from a
//! per-thread pool that is refilled from the OS 4 KiB at a time, so the hot paths that
//! need a few random bytes per message (a nonce per sealed chunk, a trace id per task,
//! a challenge per heartbeat) make one `getrandom` call per few hundred messages
//! instead of one each. The bytes are the OS's own; each is zeroed as it is handed
//! out, so none is handed out twice or kept afterwards. (A process that forked would
//! hand the same pooled bytes out in parent and child; nothing in this workspace forks.)

use rand_core::{CryptoRng, OsRng, RngCore};
use zeroize::Zeroize;

/// Bytes of OS randomness fetched at once.
const POOL: usize = 4096;

struct Pool {
    bytes: Box<[u8; POOL]>,
    /// The first byte not handed out yet.
    next: usize,
}

thread_local! {
    static POOLED: std::cell::RefCell<Pool> = std::cell::RefCell::new(Pool {
        bytes: Box::new([0; POOL]),
        next: POOL,
    });
}

/// OS randomness from a per-thread pool (see the module docs). A unit struct: use it
/// where an `RngCore + CryptoRng` is asked for (`&mut PooledRng`).
#[derive(Clone, Copy, Debug, Default)]
pub struct PooledRng;

impl RngCore for PooledRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if dest.len() > POOL / 4 {
            // large requests go straight to the OS rather than draining the pool
            OsRng.fill_bytes(dest);
            return;
        }
        POOLED.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.next + dest.len() > POOL {
                OsRng.fill_bytes(&mut pool.bytes[..]);
                pool.next = 0;
            }
            let at = pool.next;
            let taken = &mut pool.bytes[at..at + dest.len()];
            dest.copy_from_slice(taken);
            taken.zeroize();
            pool.next += dest.len();
        });
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for PooledRng {}

/// `n` random bytes from [`PooledRng`] as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = zeroize::Zeroizing::new(vec![0u8; n]);
    PooledRng.fill_bytes(&mut bytes);
    hex::encode(&*bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_never_handed_out_twice() {
        // 16-byte draws across several refills: no two alike, and none all zero
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(3 * POOL / 16) {
            let mut b = [0u8; 16];
            PooledRng.fill_bytes(&mut b);
            assert_ne!(b, [0; 16]);
            assert!(seen.insert(b), "a repeated draw");
        }
        // a large draw bypasses the pool, an odd-sized one straddles a refill
        let mut big = vec![0u8; POOL];
        PooledRng.fill_bytes(&mut big);
        assert!(big.iter().any(|&b| b != 0));
        for n in [1, 7, 1000, 1023] {
            let mut b = vec![0u8; n];
            PooledRng.fill_bytes(&mut b);
        }
        for n in [0, 7, 16, POOL + 1] {
            let h = random_hex(n);
            assert_eq!(h.len(), 2 * n);
            assert!(h
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(random_hex(16), random_hex(16));
    }
}
