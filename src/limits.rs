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

/// Descriptors the process needs beside its calls: listening sockets, the store's files, the
/// log, scrapes and admin requests, the io_uring rings.
pub const SPARE_DESCRIPTORS: u64 = 64;

/// Descriptors `max_calls` calls need: two sockets each (Twilio's and OpenAI's), plus
/// [`SPARE_DESCRIPTORS`].
pub fn descriptors_needed(max_calls: usize) -> u64 {
    (max_calls as u64)
        .saturating_mul(2)
        .saturating_add(SPARE_DESCRIPTORS)
}

/// Refuses a hard `RLIMIT_NOFILE` too low for `max_calls`: past it calls would fail with
/// EMFILE in the middle of the night instead of at start.
pub fn check_nofile(hard: u64, max_calls: usize) -> Result<(), String> {
    let needed = descriptors_needed(max_calls);
    if hard < needed {
        return Err(format!(
            "the hard RLIMIT_NOFILE is {hard}, below the {needed} descriptors MAX_CALLS={max_calls} \
             needs (2 per call + {SPARE_DESCRIPTORS}): raise it (ulimit -Hn, LimitNOFILE= in systemd, \
             the container's nofile ulimit) or lower MAX_CALLS"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hard_limit_below_two_descriptors_per_call_is_refused_by_name() {
        assert!(check_nofile(4064, 2000).is_ok());
        let err = check_nofile(4063, 2000).unwrap_err();
        assert!(err.contains("4063") && err.contains("4064"), "{err}");
        assert!(err.contains("MAX_CALLS=2000"), "{err}");
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let l = raise_nofile_limit().unwrap();
        assert!(l.now >= l.before);
        assert_eq!(rlimit::Resource::NOFILE.get().unwrap().0, l.now);
        assert!(l.now <= l.hard);
    }
}
