//! `--auto-compaction-mode` and `--auto-compaction-retention`, parsed as
//! etcd reads them. What runs the policy is `crate::compactor`.

use std::time::Duration;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Periodic(Duration),
    Revision(i64),
}

/// Parses etcd's flags: `retention` "0" disables; in periodic mode a bare
/// number is hours, otherwise a duration like "30m" or "1h30m".
pub fn parse(mode: &str, retention: &str) -> Result<Option<Policy>> {
    let r = retention.trim();
    if r.is_empty() || r == "0" {
        return Ok(None);
    }
    match mode {
        "periodic" => {
            let d = match r.parse::<u64>() {
                Ok(h) => Duration::from_secs(h * 3600),
                Err(_) => parse_duration(r)
                    .with_context(|| format!("--auto-compaction-retention {r:?}"))?,
            };
            Ok((!d.is_zero()).then_some(Policy::Periodic(d)))
        }
        "revision" => {
            let n: i64 = r
                .parse()
                .with_context(|| format!("--auto-compaction-retention {r:?}"))?;
            Ok((n > 0).then_some(Policy::Revision(n)))
        }
        other => bail!("--auto-compaction-mode must be periodic or revision, not {other:?}"),
    }
}

/// Go-style durations: a sequence of <number><unit>, units h, m, s, ms.
fn parse_duration(s: &str) -> Result<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let n: f64 = rest[..n_end].parse().context("expected a number")?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..u_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            u => bail!("unknown duration unit {u:?}"),
        };
        rest = &rest[u_end..];
        total += Duration::from_secs_f64(n * secs);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_forms() {
        assert_eq!(parse("periodic", "0").unwrap(), None);
        assert_eq!(
            parse("periodic", "1").unwrap(),
            Some(Policy::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse("periodic", "1h30m").unwrap(),
            Some(Policy::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            parse("revision", "1000").unwrap(),
            Some(Policy::Revision(1000))
        );
        assert!(parse("periodic", "5x").is_err());
        assert!(parse("weekly", "1").is_err());
    }
}
