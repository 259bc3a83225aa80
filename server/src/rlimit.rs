//! The process's open-file limit: every WebSocket is a file descriptor, and Linux starts
//! processes with a soft limit of 1,024 although the hard limit is usually far higher.

/// Raise this process's soft open-file limit to its hard limit; the limit now in effect.
/// Call it once at startup, before serving (`proxim serve` does).
#[cfg(unix)]
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised).map_err(std::io::Error::from)?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// This process's soft open-file limit; `None` when there is none.
#[cfg(unix)]
pub(crate) fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// This process's soft open-file limit: none on this platform.
#[cfg(not(unix))]
pub(crate) fn open_file_limit() -> Option<u64> {
    None
}

/// Raise this process's soft open-file limit: nothing to do on this platform.
#[cfg(not(unix))]
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    Ok(u64::MAX)
}

#[cfg(all(test, unix))]
mod tests {
    #[test]
    fn the_soft_limit_reaches_the_hard_limit() {
        let limit = super::raise_open_file_limit().expect("raise");
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, now.maximum);
        assert_eq!(Some(limit), now.current.or(Some(u64::MAX)));
    }
}
