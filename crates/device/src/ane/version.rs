//! The macOS version, read from `kern.osproductversion` (`26.3`, `15.7.4`) or from
//! `NSProcessInfo`'s version string (`Version 15.7.4 (Build 24G517)`).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacOsVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl MacOsVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> MacOsVersion {
        MacOsVersion {
            major,
            minor,
            patch,
        }
    }
}

impl FromStr for MacOsVersion {
    type Err = String;

    /// Accepts `MAJOR[.MINOR[.PATCH]]`, optionally after `Version ` and before ` (Build …)`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a macOS version (expected e.g. 15.7.4)");
        let text = s.trim();
        let text = text.strip_prefix("Version ").unwrap_or(text);
        let number = text.split_whitespace().next().ok_or_else(bad)?;
        let mut parts = number.split('.');
        let mut next = |required: bool| -> Result<u32, String> {
            match parts.next() {
                Some(p) => p.parse().map_err(|_| bad()),
                None if required => Err(bad()),
                None => Ok(0),
            }
        };
        let version = MacOsVersion::new(next(true)?, next(false)?, next(false)?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

impl fmt::Display for MacOsVersion {
    /// `macOS 26.3` or `macOS 15.7.4`: the patch level only when there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "macOS {}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysctl_and_process_info_forms() {
        assert_eq!("26.3".parse(), Ok(MacOsVersion::new(26, 3, 0)));
        assert_eq!("15.7.4\n".parse(), Ok(MacOsVersion::new(15, 7, 4)));
        assert_eq!("14".parse(), Ok(MacOsVersion::new(14, 0, 0)));
        assert_eq!(
            "Version 15.7.4 (Build 24G517)".parse(),
            Ok(MacOsVersion::new(15, 7, 4))
        );
    }

    #[test]
    fn rejects_what_is_not_a_version() {
        for bad in [
            "",
            "Version",
            "15.x",
            "15..1",
            "1.2.3.4",
            "-1.0",
            "Darwin 25",
        ] {
            assert!(bad.parse::<MacOsVersion>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn orders_and_prints_versions() {
        assert!(MacOsVersion::new(15, 7, 4) < MacOsVersion::new(26, 0, 0));
        assert!(MacOsVersion::new(15, 10, 0) > MacOsVersion::new(15, 7, 4));
        assert_eq!(MacOsVersion::new(26, 3, 0).to_string(), "macOS 26.3");
        assert_eq!(MacOsVersion::new(15, 7, 4).to_string(), "macOS 15.7.4");
    }
}
