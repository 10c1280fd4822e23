//! The harness of the sandbox test binaries (`harness = false`: a process must be
//! single-threaded to enter a sandbox, and libtest runs tests on other threads), and
//! helpers they share.

use std::time::Duration;

use sealpipe::sandbox::Sandbox;
use sealpipe::Policy;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A test: its name, its body, and why it cannot run here (`None`: it can).
pub type Test = (&'static str, fn(), Option<String>);

/// Runs `tests` as libtest would, with its arguments: name filters, `--exact`, `--list`,
/// `--ignored` (only the ignored tests), `--include-ignored`. A test that cannot run here
/// is reported `ignored` with the reason, never passed. Exits with 101 if one failed.
pub fn run(tests: Vec<Test>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let exact = flag("--exact");
    let selected = |name: &str| {
        filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    name == *f
                } else {
                    name.contains(f.as_str())
                }
            })
    };
    // As libtest: `--ignored` selects only the ignored tests (run here, they fail where the
    // kernel lacks what they need), `--include-ignored` runs every test.
    let run_ignored = flag("--ignored") || flag("--include-ignored");
    let tests: Vec<Test> = tests
        .into_iter()
        .filter(|t| selected(t.0) && (t.2.is_some() || !flag("--ignored")))
        .collect();
    if flag("--list") {
        for (name, _, _) in &tests {
            println!("{name}: test");
        }
        return;
    }
    println!("\nrunning {} tests", tests.len());
    let (mut passed, mut failed, mut ignored) = (0, Vec::new(), 0);
    for (name, f, ignore) in tests {
        if let Some(reason) = ignore.filter(|_| !run_ignored) {
            println!("test {name} ... ignored, {reason}");
            ignored += 1;
            continue;
        }
        match std::panic::catch_unwind(f) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name);
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; {ignored} ignored\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(101);
    }
}

/// A 64-bit FNV-1a-style checksum of `bytes`, 8 bytes at a time.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(0xcbf2_9ce4_8422_2325, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        (h ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3)
    })
}

/// In a peer: enters `profile`, or exits with 90 after printing why it could not.
pub fn enter(profile: Sandbox) {
    if let Err(e) = profile.enter() {
        eprintln!(
            "peer: enter failed: {e} ({:?})",
            std::error::Error::source(&e)
        );
        std::process::exit(90);
    }
}

/// The payload of the peer's next message.
pub fn reply(peer: &super::Peer) -> Vec<u8> {
    peer.channel
        .recv_timeout(&Policy::immutable(), TIMEOUT)
        .expect("reply")
        .payload()
        .to_vec()
}

/// Waits for `child` and returns its exit code (128 + signal if killed).
pub fn wait_child(child: &mut std::process::Child) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().expect("wait");
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
