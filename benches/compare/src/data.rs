//! What is sent and how the other side checks it. Every payload is written by the producer
//! and every byte of it is read and checked by the consumer: a transport that drops,
//! reorders or corrupts data fails the run instead of looking fast.

/// Set by `--inject-fault`: producers that honour it corrupt message [`FAULTY_SEQ`], to
/// show that the consumers' checks catch it (the contender must come out as `FAIL`).
pub static INJECT_FAULT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The message corrupted under `--inject-fault`.
pub const FAULTY_SEQ: u64 = 1000;

fn corrupt(seq: u64) -> bool {
    seq == FAULTY_SEQ && INJECT_FAULT.load(std::sync::atomic::Ordering::Relaxed)
}

/// A small message of `W` words, every word the sequence number.
pub fn small<const W: usize>(seq: u64) -> [u64; W] {
    let mut m = [seq; W];
    if corrupt(seq) {
        m[W - 1] ^= 1 << 40;
    }
    m
}

/// Checks a small message of `W` words against `seq`.
pub fn check_small<const W: usize>(msg: &[u64; W], seq: u64) {
    assert!(
        msg.iter().all(|&w| w == seq),
        "small message {seq}: bad or missing data"
    );
}

/// Fills `buf` (a whole number of words) with the small-message pattern for `seq`.
pub fn fill_small_bytes(buf: &mut [u8], seq: u64) {
    for w in buf.chunks_exact_mut(8) {
        w.copy_from_slice(&seq.to_le_bytes());
    }
    if corrupt(seq) {
        let n = buf.len();
        buf[n - 3] ^= 1;
    }
}

/// Checks a small message given as bytes.
pub fn check_small_bytes(buf: &[u8], size: usize, seq: u64) {
    assert_eq!(buf.len(), size, "small message {seq}: wrong length");
    assert!(
        buf.chunks_exact(8).all(|w| w == seq.to_le_bytes()),
        "small message {seq}: bad or missing data"
    );
}

/// A bulk payload: word `i` is `i * K`, except the first and last words, which carry the
/// sequence number (stamped per message with [`Bulk::stamp`]).
pub struct Bulk {
    /// The payload bytes (producer side).
    pub bytes: Vec<u8>,
}

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Bulk {
    /// A payload of `size` bytes (a multiple of 8, at least 16).
    pub fn new(size: usize) -> Bulk {
        let mut bytes = vec![0u8; size];
        for (i, w) in bytes.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&(i as u64).wrapping_mul(K).to_le_bytes());
        }
        Bulk { bytes }
    }

    /// Writes `seq` into the first and last word.
    pub fn stamp(&mut self, seq: u64) {
        let n = self.bytes.len();
        self.bytes[..8].copy_from_slice(&seq.to_le_bytes());
        self.bytes[n - 8..].copy_from_slice(&seq.to_le_bytes());
    }
}

/// Sum of words 1..words-1 of the unstamped pattern.
fn base_sum(words: usize) -> u64 {
    (1..words as u64 - 1).fold(0u64, |s, i| s.wrapping_add(i.wrapping_mul(K)))
}

/// What a consumer knows to check bulk payloads of `size` bytes.
pub struct BulkCheck {
    base_sum: u64,
    size: usize,
}

impl BulkCheck {
    /// For payloads of `size` bytes.
    pub fn new(size: usize) -> BulkCheck {
        BulkCheck {
            base_sum: base_sum(size / 8),
            size,
        }
    }

    /// Reads every byte of `buf` and panics unless it is the payload stamped with `seq`.
    pub fn check(&self, buf: &[u8], seq: u64) {
        assert_eq!(buf.len(), self.size, "bulk message {seq}: wrong length");
        let sum = word_sum(buf);
        let first = u64::from_le_bytes(buf[..8].try_into().unwrap());
        let last = u64::from_le_bytes(buf[buf.len() - 8..].try_into().unwrap());
        let expected = self.base_sum.wrapping_add(seq.wrapping_mul(2));
        assert!(
            first == seq && last == seq && sum == expected,
            "bulk message {seq}: bad data (first {first}, last {last})"
        );
    }
}

/// Wrapping sum of the little-endian words of `buf`.
pub fn word_sum(buf: &[u8]) -> u64 {
    match bytemuck::try_cast_slice::<u8, u64>(buf) {
        Ok(words) => {
            // Four independent accumulators so the loop is bound by loads, not by one add chain.
            let mut acc = [0u64; 4];
            let mut chunks = words.chunks_exact(4);
            for c in &mut chunks {
                for j in 0..4 {
                    acc[j] = acc[j].wrapping_add(u64::from_le(c[j]));
                }
            }
            let rest = chunks
                .remainder()
                .iter()
                .fold(0u64, |s, &w| s.wrapping_add(u64::from_le(w)));
            acc.iter().fold(rest, |s, &w| s.wrapping_add(w))
        }
        Err(_) => buf.chunks_exact(8).fold(0u64, |s, w| {
            s.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()))
        }),
    }
}
