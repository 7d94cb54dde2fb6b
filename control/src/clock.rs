//! The wall clock as the control plane records it (audit records, session
//! expiry, `create_time`/`update_time`, gateway liveness). A leaf, so the
//! modules that stamp times do not import the audit log for a clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by this instance's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (APISIX's `create_time`/`update_time`).
pub fn now_secs() -> u64 {
    now_ms() / 1000
}
