//! Process limits raised (and checked) at start: every call holds two sockets in the proxy
//! (Twilio's and OpenAI's), so 1,000 concurrent calls need more descriptors than the usual soft
//! limit of 1,024.

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

/// Descriptors the process needs beside its connections: listening sockets, the store's files,
/// the log, the io_uring rings, a few more for admin work.
pub const SPARE_DESCRIPTORS: u64 = 64;

/// Descriptors the configuration can use at once: every HTTP connection `MAX_CONNECTIONS` allows
/// (calls' Twilio streams included), an OpenAI socket per call (`MAX_CALLS`), the pre-warmed
/// OpenAI connections (`OPENAI_POOL_MAX` per worker), and [`SPARE_DESCRIPTORS`].
pub fn descriptors_needed(max_connections: usize, max_calls: usize, pooled: usize) -> u64 {
    [max_connections, max_calls, pooled]
        .iter()
        .fold(SPARE_DESCRIPTORS, |sum, &n| sum.saturating_add(n as u64))
}

/// Refuses a hard `RLIMIT_NOFILE` below `needed` ([`descriptors_needed`]): past it connections
/// and calls would fail with EMFILE under load instead of the server refusing to start.
pub fn check_nofile(hard: u64, needed: u64) -> Result<(), String> {
    if hard < needed {
        return Err(format!(
            "the hard RLIMIT_NOFILE is {hard}, below the {needed} descriptors this configuration \
             can use (MAX_CONNECTIONS + one OpenAI socket per call of MAX_CALLS + OPENAI_POOL_MAX \
             per worker + {SPARE_DESCRIPTORS}): raise it (ulimit -Hn, LimitNOFILE= in systemd, the \
             container's nofile ulimit) or lower MAX_CALLS"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hard_limit_below_what_the_configuration_can_use_is_refused() {
        // MAX_CALLS 2000 with the default MAX_CONNECTIONS (2 × 2000 + 256) and no pool.
        let needed = descriptors_needed(4256, 2000, 0);
        assert_eq!(needed, 6320);
        assert_eq!(
            descriptors_needed(4256, 2000, 2 * 8),
            6336,
            "8 pooled per worker, 2 workers"
        );
        assert!(check_nofile(6320, needed).is_ok());
        let err = check_nofile(6319, needed).unwrap_err();
        assert!(err.contains("6319") && err.contains("6320"), "{err}");
        assert!(err.contains("MAX_CONNECTIONS"), "{err}");
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let l = raise_nofile_limit().unwrap();
        assert!(l.now >= l.before);
        assert_eq!(rlimit::Resource::NOFILE.get().unwrap().0, l.now);
        assert!(l.now <= l.hard);
    }
}
