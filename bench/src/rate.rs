//! Pacing: when request number `n` may start under `--rate`.
//!
//! Requests are scheduled on a fixed grid (`n / rate` seconds after the start)
//! rather than by sleeping `1 / rate` after each one: a late request then does
//! not push every later one back, so the achieved rate stays the asked one
//! whenever the cluster keeps up (open loop, bounded by `--clients` in flight).

use std::time::Duration;

/// Offset from the run's start at which request `ticket` is due.
/// `rate` is requests per second and must be positive.
pub fn due(ticket: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(ticket as f64 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_evenly_spaced() {
        assert_eq!(due(0, 100.0), Duration::ZERO);
        assert_eq!(due(1, 100.0), Duration::from_millis(10));
        assert_eq!(due(250, 100.0), Duration::from_millis(2500));
        assert_eq!(due(3, 0.5), Duration::from_secs(6));
    }

    #[test]
    fn fractional_rates_and_large_tickets() {
        assert_eq!(due(2, 0.25), Duration::from_secs(8));
        let d = due(1_000_000, 3.0);
        assert!((d.as_secs_f64() - 333_333.333).abs() < 0.001);
    }
}
