//! What the program a spawn starts needs in order to be loaded under Landlock.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What the program a spawn starts needs to be loaded: Landlock grants.
#[derive(Debug)]
pub(crate) struct StartupPaths {
    pub(super) program: PathBuf,
    pub(super) interpreter: Option<PathBuf>,
    pub(super) library_dirs: Vec<PathBuf>,
}

impl StartupPaths {
    /// Resolves `program` as `execvp` would (through `PATH` when it has no slash), and
    /// reads its ELF interpreter.
    pub(crate) fn for_program(program: &OsStr, path_var: Option<&OsStr>) -> Result<Self> {
        let program = resolve_program(program, path_var).ok_or_else(|| Error::SandboxSetup {
            layer: "spawn",
            source: format!("program {} not found", Path::new(program).display()).into(),
        })?;
        let interpreter = elf_interpreter(&program);
        let library_dirs = [
            "/lib",
            "/lib64",
            "/usr/lib",
            "/usr/lib64",
            "/usr/local/lib",
            "/etc/ld.so.cache",
        ]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
        Ok(StartupPaths {
            program,
            interpreter,
            library_dirs,
        })
    }
}

fn resolve_program(program: &OsStr, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return std::fs::canonicalize(program).ok();
    }
    let default_path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    let path_var = path_var.unwrap_or(&default_path);
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// The `PT_INTERP` of a 64-bit little-endian ELF file (the dynamic loader), if any. Reads
/// only the headers and the interpreter's name.
fn elf_interpreter(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(program).ok()?;
    let read = |offset: u64, len: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    };
    let header = read(0, 64)?;
    if header.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(&header, 0x20)?;
    let phentsize = usize::from(u16_at(&header, 0x36)?);
    let phnum = usize::from(u16_at(&header, 0x38)?);
    if phentsize < 56 {
        return None;
    }
    let table = read(phoff, phentsize.checked_mul(phnum)?)?;
    for ph in table.chunks_exact(phentsize) {
        if u32_at(ph, 0)? == 3 {
            // PT_INTERP: a path of at most PATH_MAX bytes.
            let len = usize::try_from(u64_at(ph, 32)?).ok()?.min(4096);
            let raw = read(u64_at(ph, 8)?, len)?;
            let raw = raw.split(|&b| b == 0).next()?;
            return std::fs::canonicalize(OsStr::from_bytes(raw)).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_of_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let interp = elf_interpreter(&exe);
        // A dynamically linked test binary names its loader; a static one has none.
        if let Some(interp) = interp {
            assert!(interp.is_file(), "{}", interp.display());
            assert!(
                interp.to_string_lossy().contains("ld"),
                "{}",
                interp.display()
            );
        }
        assert_eq!(elf_interpreter(Path::new("/proc/self/status")), None);
    }

    #[test]
    fn resolves_programs_like_execvp() {
        let sh = resolve_program(OsStr::new("sh"), Some(OsStr::new("/usr/bin:/bin"))).unwrap();
        assert!(sh.is_absolute() && sh.is_file());
        assert_eq!(
            resolve_program(OsStr::new("no-such-program-xyz"), Some(OsStr::new("/bin"))),
            None
        );
    }
}
