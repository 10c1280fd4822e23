//! What the running kernel supports, and the fallbacks sealpipe chose.

use std::sync::OnceLock;

/// What this kernel supports, probed once at first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// `memfd_create(MFD_NOEXEC_SEAL)` works (Linux 6.3+). Without it, regions are created
    /// sealable and `fchmod`ed to 0600 instead.
    pub noexec_seal: bool,
    /// `mmap(PROT_READ, MAP_SHARED)` of a write-sealed memfd works (Linux 6.7+ and fixed
    /// stable kernels). Without it, immutable regions are mapped `MAP_PRIVATE` read-only,
    /// which shows the same (unchangeable) bytes.
    pub shared_map_of_write_sealed: bool,
    /// `cachestat(2)` works (Linux 6.5+, not denied by seccomp), so [`verify()`](crate::verify()) counts the
    /// allocated pages inside a region. Without it only `st_blocks` is compared, which a
    /// peer can satisfy with pages allocated past the end of the file (see
    /// [Committed pages](crate::verify()#committed-pages)).
    pub counts_committed_pages: bool,
    /// Unix sockets can refuse descriptors (`SO_PASSRIGHTS`, Linux 6.16+). Without it, a
    /// peer can queue descriptors during a handshake or on a ring's channel; they are
    /// received and closed without blocking instead, and dropped sockets are closed on a
    /// background thread (see [`crate::Channel`]).
    pub pass_rights: bool,
}

/// The kernel capabilities sealpipe probed and the fallbacks it chose.
pub fn capabilities() -> Capabilities {
    // Probed only here, not on the receive path: it needs a socket pair, which a
    // sandboxed worker may not create (sealpipe itself just tries the option where needed).
    static PASS_RIGHTS: OnceLock<bool> = OnceLock::new();
    Capabilities {
        pass_rights: *PASS_RIGHTS.get_or_init(|| {
            crate::Channel::pair().is_ok_and(|(a, _b)| crate::closer::refuse_descriptors(&a))
        }),
        ..probed()
    }
}

/// The capabilities the receive path needs (`pass_rights` is left `false`: see
/// [`capabilities`]).
fn probed() -> Capabilities {
    static CAPS: OnceLock<Capabilities> = OnceLock::new();
    *CAPS.get_or_init(|| Capabilities {
        noexec_seal: crate::region::capabilities_noexec_seal(),
        shared_map_of_write_sealed: crate::verify::shared_map_of_write_sealed(),
        counts_committed_pages: crate::Region::new(4096)
            .and_then(crate::Region::seal)
            .is_ok_and(|r| matches!(crate::sys::pages_from(&r, 0), Ok(Some(1)))),
        pass_rights: false,
    })
}
