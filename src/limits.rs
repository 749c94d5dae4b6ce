//! Process limits raised at start: every call holds ~2 sockets in the proxy (Twilio's and
//! OpenAI's), so 1,000 concurrent calls need more descriptors than the usual soft limit of 1,024.

/// What [`raise_nofile_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit before.
    pub before: u64,
    /// Soft limit now.
    pub now: u64,
    /// Hard limit (the ceiling an unprivileged process can raise to).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (never lowers it).
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    let (before, hard) = rlimit::Resource::NOFILE.get()?;
    let now = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(NofileLimit { before, now, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let l = raise_nofile_limit().unwrap();
        assert!(l.now >= l.before);
        assert_eq!(rlimit::Resource::NOFILE.get().unwrap().0, l.now);
        assert!(l.now <= l.hard);
    }
}
