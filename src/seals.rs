//! Seal sets (`F_SEAL_*`).

use std::fmt;

/// A set of memfd seals (`F_SEAL_*`), as reported by `fcntl(F_GET_SEALS)`.
///
/// Unknown bits from newer kernels are kept, so a receiver never rejects a region because
/// it carries a seal this build does not know about.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seals(u32);

impl Seals {
    /// `F_SEAL_SEAL`: no further seals can be added.
    pub const SEAL: Seals = Seals(0x1);
    /// `F_SEAL_SHRINK`: the file cannot shrink (no `SIGBUS` from truncation).
    pub const SHRINK: Seals = Seals(0x2);
    /// `F_SEAL_GROW`: the file cannot grow.
    pub const GROW: Seals = Seals(0x4);
    /// `F_SEAL_WRITE`: nobody can write the file, by any path. The contents are immutable.
    pub const WRITE: Seals = Seals(0x8);
    /// `F_SEAL_FUTURE_WRITE`: no *new* writable access can be made; writable mappings that
    /// existed before the seal (the producer's) can still write.
    pub const FUTURE_WRITE: Seals = Seals(0x10);
    /// `F_SEAL_EXEC`: the file's exec mode bits are frozen.
    pub const EXEC: Seals = Seals(0x20);

    /// The seals of an immutable region: `WRITE | SHRINK | GROW | SEAL`.
    pub const IMMUTABLE: Seals = Seals(0x8 | 0x2 | 0x4 | 0x1);
    /// The seals of a producer-writable region: `FUTURE_WRITE | SHRINK | GROW | SEAL`.
    pub const PRODUCER_WRITABLE: Seals = Seals(0x10 | 0x2 | 0x4 | 0x1);

    /// The empty set.
    pub const fn empty() -> Seals {
        Seals(0)
    }

    /// A set from raw `F_SEAL_*` bits; unknown bits are kept.
    pub const fn from_bits(bits: u32) -> Seals {
        Seals(bits)
    }

    /// The raw `F_SEAL_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every seal in `other` is also in `self`.
    pub const fn contains(self, other: Seals) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `self` and `other` have a seal in common.
    pub const fn intersects(self, other: Seals) -> bool {
        self.0 & other.0 != 0
    }

    /// The seals in `self` that are not in `other`.
    pub const fn difference(self, other: Seals) -> Seals {
        Seals(self.0 & !other.0)
    }

    /// The union of `self` and `other`.
    pub const fn union(self, other: Seals) -> Seals {
        Seals(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Seals {
    type Output = Seals;
    fn bitor(self, rhs: Seals) -> Seals {
        self.union(rhs)
    }
}

const NAMES: [(u32, &str); 6] = [
    (0x1, "SEAL"),
    (0x2, "SHRINK"),
    (0x4, "GROW"),
    (0x8, "WRITE"),
    (0x10, "FUTURE_WRITE"),
    (0x20, "EXEC"),
];

impl fmt::Display for Seals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        let mut rest = self.0;
        let mut first = true;
        for (bit, name) in NAMES {
            if rest & bit != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
                rest &= !bit;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{rest:#x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Seals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seals({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_known_and_unknown_bits() {
        assert_eq!(Seals::IMMUTABLE.to_string(), "SEAL|SHRINK|GROW|WRITE");
        assert_eq!(Seals::from_bits(0x40 | 0x2).to_string(), "SHRINK|0x40");
        assert_eq!(Seals::empty().to_string(), "none");
    }
}
