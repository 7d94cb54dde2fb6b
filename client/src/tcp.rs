//! Settings every Cairn TCP connection gets, on either end.
//!
//! - `TCP_NODELAY`: a small gRPC reply or Raft frame must not wait for Nagle.
//! - On loopback, a loss-based congestion control instead of BBR. Linux's BBR
//!   sizes its window from bandwidth × minimum RTT; on loopback the RTT is a
//!   few microseconds and a segment is 64 KiB, so the window falls to its
//!   floor of a few segments. A burst of a few hundred KiB (one revision's
//!   events for a thousand watchers) then ends with one unacknowledged
//!   segment that the receiver's delayed ACK holds for ~40 ms, and the rest of
//!   the burst waits with it (measured: watch event p99 42 ms under BBR, 5 ms
//!   under CUBIC, same build). Congestion control has no work to do on
//!   loopback, so nothing is lost by leaving BBR there; other paths keep the
//!   system's choice.

use tokio::net::TcpStream;

/// Applies the settings above; failures are ignored (each is an
/// optimization, and the connection works without it).
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    if stream.peer_addr().is_ok_and(|a| a.ip().is_loopback()) {
        loopback_congestion_control(stream);
    }
}

#[cfg(target_os = "linux")]
fn loopback_congestion_control(stream: &TcpStream) {
    // CUBIC is Linux's default built-in; Reno is always there.
    let _ = set_congestion_control(stream, "cubic") || set_congestion_control(stream, "reno");
}

/// `TCP_CONGESTION`; false if the kernel refused the name.
#[cfg(target_os = "linux")]
fn set_congestion_control(stream: &TcpStream, name: &str) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: the socket is open for as long as `stream` is borrowed, and the
    // option value is a byte string of the given length.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn loopback_congestion_control(_: &TcpStream) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::AsRawFd;

    use tokio::net::{TcpListener, TcpStream};

    use super::set_congestion_control;

    fn congestion_control(s: &TcpStream) -> String {
        let mut buf = [0u8; 16];
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: the socket is open; `buf` and `len` describe a writable buffer.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt(TCP_CONGESTION)");
        let name = &buf[..len as usize];
        String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or(name)).into_owned()
    }

    #[tokio::test]
    async fn loopback_sockets_leave_bbr_and_nagle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        for s in [&client, &server] {
            // Start from BBR where this kernel has it (the case that stalls),
            // from Reno otherwise, so that `tune` always has something to change.
            let start = if set_congestion_control(s, "bbr") {
                "bbr"
            } else {
                assert!(set_congestion_control(s, "reno"));
                "reno"
            };
            assert_eq!(congestion_control(s), start);
            super::tune(s);
            let now = congestion_control(s);
            assert!(now == "cubic" || now == "reno", "{start} -> {now}");
            assert!(s.nodelay().unwrap());
        }
    }
}
