//! The Landlock layer: the ruleset a sandbox restricts itself with.

use std::os::fd::OwnedFd;
use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope, ABI,
};

use super::startup::StartupPaths;
use super::{Enforcement, Sandbox};
use crate::error::{Error, Result};

impl Sandbox {
    pub(super) fn landlock_ruleset(
        &self,
        kernel_abi: u32,
        startup: Option<&StartupPaths>,
        report: &mut Enforcement,
    ) -> Result<OwnedFd> {
        let abi = crate_abi(kernel_abi);
        let setup = |e: landlock::RulesetError| Error::SandboxSetup {
            layer: "Landlock",
            source: Box::new(e),
        };
        let fs = AccessFs::from_all(abi);
        let net = AccessNet::from_all(abi);
        let scopes = Scope::from_all(abi);
        // The sets match the running ABI exactly, so nothing may be dropped silently.
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(fs)
            .map_err(setup)?;
        if !net.is_empty() {
            ruleset = ruleset.handle_access(net).map_err(setup)?;
        }
        if !scopes.is_empty() {
            ruleset = ruleset.scope(scopes).map_err(setup)?;
        }
        let mut created = ruleset.create().map_err(setup)?;
        let mut grants: Vec<(&Path, BitFlags<AccessFs>)> = Vec::new();
        for p in &self.read_only {
            grants.push((p, AccessFs::from_read(abi)));
        }
        for p in &self.read_write {
            grants.push((p, fs));
        }
        if let Some(startup) = startup {
            let exec = AccessFs::Execute | AccessFs::ReadFile;
            grants.push((&startup.program, exec));
            if let Some(interp) = &startup.interpreter {
                grants.push((interp, exec));
            }
            for dir in &startup.library_dirs {
                grants.push((dir, AccessFs::ReadFile | AccessFs::ReadDir));
            }
        }
        for (path, access) in &grants {
            let fd = PathFd::new(path).map_err(|e| Error::SandboxSetup {
                layer: "Landlock",
                source: Box::new(e),
            })?;
            // A rule on a file may only carry file rights.
            let access = if path.is_dir() {
                *access
            } else {
                *access & AccessFs::from_file(abi)
            };
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(setup)?;
        }
        let fd: Option<OwnedFd> = created.into();
        let fd = fd.ok_or(Error::SandboxUnavailable {
            layer: "Landlock",
            required: kernel_abi,
            available: 0,
        })?;
        report.landlock_abi = kernel_abi;
        report.landlock_fs_rights = fs.bits();
        report.landlock_paths = grants.len();
        report.landlock_tcp = net.contains(AccessNet::BindTcp | AccessNet::ConnectTcp);
        report.scoped_abstract_unix = scopes.contains(Scope::AbstractUnixSocket);
        report.scoped_signals = scopes.contains(Scope::Signal);
        Ok(fd)
    }
}

/// Maps the kernel's Landlock ABI number onto the crate's enum (which is not built from
/// numbers on purpose); an ABI newer than the crate knows gets the newest it knows.
fn crate_abi(v: u32) -> ABI {
    match v {
        0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        7 => ABI::V7,
        8 => ABI::V8,
        9 => ABI::V9,
        _ => ABI::V10,
    }
}
