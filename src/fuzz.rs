//! Entry points for fuzzers (built with `cfg(fuzzing)` by cargo-fuzz) and for replaying the
//! committed corpora on stable in `cargo test`.
//!
//! Each entry point takes arbitrary bytes and must never panic, hang, leak a descriptor or
//! read out of bounds; where a simple model of the correct answer exists, it asserts that
//! the implementation agrees with it (an assertion failure is a finding).
#![cfg_attr(not(fuzzing), allow(unreachable_pub))] // public only to the fuzz crate

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{self, MemfdFlags, OFlags, SealFlags};

use crate::error::Error;
use crate::seals::{Policy, Seals};
use crate::wire;

/// Decodes `data` as a wire message. If it is accepted, re-encoding its header and region
/// lengths must reproduce the input exactly, and every field must be within protocol limits.
pub fn wire_decode(data: &[u8]) {
    let Ok(h) = wire::decode(data) else { return };
    assert!(h.region_count <= wire::MAX_REGIONS);
    assert!(h.payload_len <= wire::MAX_PAYLOAD);
    let range = wire::payload_range(&h);
    assert_eq!(range.end, data.len());
    let lens: Vec<u64> = (0..h.region_count)
        .map(|i| wire::region_len(data, i))
        .collect();
    let mut buf = vec![0u8; wire::HEADER_LEN + wire::REGION_DESC_LEN * lens.len()];
    let n = wire::encode(&mut buf, lens.iter().copied(), h.payload_len).expect("re-encode");
    assert_eq!(&buf[..n], &data[..range.start]);
}

/// Decodes `data` as a handshake message. If it is accepted, re-encoding it must reproduce
/// the input exactly, and the regions decoder must reject the same bytes (a handshake
/// message is never mistaken for regions, or the other way round).
pub fn handshake_decode(data: &[u8]) {
    let Ok(m) = wire::decode_handshake(data) else {
        return;
    };
    let (buf, n) = wire::encode_handshake(&m);
    assert_eq!(&buf[..n], data);
    assert!(wire::decode(data).is_err());
}

/// Builds a real descriptor from the first bytes of `data` (kind of file, seals, real size),
/// verifies it against a policy and declared length from the rest, and checks the verdict
/// against the specification table in `PROTOCOL.md`.
pub fn seal_policy(data: &[u8]) {
    let mut b = [0u8; 20];
    let n = data.len().min(b.len());
    b[..n].copy_from_slice(&data[..n]);
    let kind = b[0] % 7;
    let seals_to_add = u32::from(b[1] & 0x3f);
    let real = u64::from(u16::from_le_bytes([b[2], b[3]])) * 64; // up to 4 MiB
    let declared = match b[4] % 4 {
        0 => real,
        1 => real.wrapping_add(u64::from(b[5])),
        2 => real.wrapping_sub(u64::from(b[5])),
        _ => u64::from_le_bytes(b[6..14].try_into().unwrap_or_default()),
    };
    let limit = if b[14] & 1 == 0 {
        Policy::DEFAULT_MAX_REGION_LEN
    } else {
        u64::from(u32::from_le_bytes(b[15..19].try_into().unwrap_or_default()))
    };
    let policy = if b[19] & 1 == 0 {
        Policy::immutable()
    } else {
        Policy::read_only_view()
    }
    .max_region_len(limit);

    let Some(fd) = make_fd(kind, seals_to_add, real) else {
        return;
    };
    let actual_seals = fs::fcntl_get_seals(&fd)
        .ok()
        .map(|s| Seals::from_bits(s.bits()));
    let result = crate::verify::check(fd.as_fd(), declared, &policy, 0);

    // The specification, in the order PROTOCOL.md lists the checks.
    match (kind, actual_seals) {
        (2..=4 | 6, _) | (_, None) => {
            assert!(matches!(result, Err(Error::NotMemfd { .. })), "{result:?}")
        }
        (_, Some(have)) => {
            let missing = policy.missing_seals(have);
            if !missing.is_empty() {
                assert!(
                    matches!(result, Err(Error::MissingSeals { missing: m, .. }) if m == missing),
                    "{result:?}"
                );
            } else if declared == 0 {
                assert!(
                    matches!(result, Err(Error::EmptyRegion { .. })),
                    "{result:?}"
                );
            } else if declared > limit || declared > isize::MAX as u64 {
                assert!(
                    matches!(result, Err(Error::RegionTooLarge { .. })),
                    "{result:?}"
                );
            } else if declared != real {
                assert!(
                    matches!(result, Err(Error::SizeMismatch { .. })),
                    "{result:?}"
                );
            } else {
                assert!(matches!(result, Ok(s) if s == have), "{result:?}");
            }
        }
    }
}

/// 0: sealable memfd, 1: memfd without sealing, 2: pipe, 3: eventfd, 4: O_PATH memfd,
/// 5: sealable memfd with exec bits (F_SEAL_EXEC then implies write seals), 6: a sealable
/// memfd reopened write-only (cannot be mapped for reading).
fn make_fd(kind: u8, seals: u32, len: u64) -> Option<OwnedFd> {
    let memfd = |flags: MemfdFlags| -> Option<OwnedFd> {
        let fd = fs::memfd_create("fuzz", MemfdFlags::CLOEXEC | flags).ok()?;
        fs::ftruncate(&fd, len).ok()?;
        // Adding seals may legitimately fail (e.g. not sealable); the verdict must still hold.
        let _ = fs::fcntl_add_seals(&fd, SealFlags::from_bits_retain(seals));
        Some(fd)
    };
    match kind {
        0 => memfd(MemfdFlags::ALLOW_SEALING | MemfdFlags::NOEXEC_SEAL)
            .or_else(|| memfd(MemfdFlags::ALLOW_SEALING)),
        1 => memfd(MemfdFlags::empty()),
        2 => rustix::pipe::pipe().ok().map(|(r, _w)| r),
        3 => rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).ok(),
        4 => {
            let m = memfd(MemfdFlags::ALLOW_SEALING)?;
            let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&m));
            fs::open(
                path.as_str(),
                OFlags::PATH | OFlags::CLOEXEC,
                fs::Mode::empty(),
            )
            .ok()
        }
        5 => memfd(MemfdFlags::ALLOW_SEALING),
        _ => {
            let m = memfd(MemfdFlags::ALLOW_SEALING)?;
            let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&m));
            fs::open(
                path.as_str(),
                OFlags::WRONLY | OFlags::CLOEXEC,
                fs::Mode::empty(),
            )
            .ok()
        }
    }
}

#[cfg(test)]
mod replay {
    //! Feeds every committed corpus and regression file through its entry point.

    fn replay(target: &str, entry: fn(&[u8])) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                entry(&std::fs::read(&path).unwrap());
                n += 1;
            }
        }
        assert!(n > 0, "no corpus committed for {target}");
    }

    #[test]
    fn wire_decode_corpus() {
        replay("wire_decode", super::wire_decode);
    }

    #[test]
    fn handshake_decode_corpus() {
        replay("handshake_decode", super::handshake_decode);
    }

    #[test]
    fn seal_policy_corpus() {
        replay("seal_policy", super::seal_policy);
    }
}
