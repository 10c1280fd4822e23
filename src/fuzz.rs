//! Entry points for the fuzz targets in `fuzz/` (built with `cfg(fuzzing)` by cargo-fuzz),
//! and the replay of their committed corpora in `cargo test`.
//!
//! Each entry point takes arbitrary bytes and must never panic, hang, leak a descriptor or
//! read out of bounds; where a simple model of the correct answer exists, it asserts that
//! the implementation agrees with it (an assertion failure is a finding). The entry points
//! and their reference models live next to the code they check, in `model` submodules
//! compiled for tests and fuzzing only: `wire/model.rs`, `verify/model.rs`,
//! `ring/model.rs`.
#![cfg_attr(not(fuzzing), allow(unreachable_pub))] // public only to the fuzz crate

pub use crate::ring::model::{ring_header, ring_ops, ring_pod_ops};
pub use crate::verify::model::seal_policy;
pub use crate::wire::model::{handshake_decode, pool_framing, recv_framing, wire_decode};

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

    #[test]
    fn recv_framing_corpus() {
        replay("recv_framing", super::recv_framing);
    }

    #[test]
    fn ring_pod_ops_corpus() {
        replay("ring_pod_ops", super::ring_pod_ops);
    }

    #[test]
    fn ring_ops_corpus() {
        replay("ring_ops", super::ring_ops);
    }

    #[test]
    fn pool_framing_corpus() {
        replay("pool_framing", super::pool_framing);
    }

    #[test]
    fn ring_header_corpus() {
        replay("ring_header", super::ring_header);
    }
}
