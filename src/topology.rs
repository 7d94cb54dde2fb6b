//! The ports `cairn up` and its drill share: the local stores' names and
//! ports, the control plane's, the gateway's and the echo upstream's. Its own
//! module so that the drill does not depend on `up` (which starts it).

/// (name, client port, peer port) of each store.
pub(crate) const NODES: [(&str, u16, u16); 3] = [
    ("s1", 2379, 2380),
    ("s2", 22379, 22380),
    ("s3", 32379, 32380),
];

/// The control plane's port (admin API and console).
pub(crate) const CONTROL_PORT: u16 = 9000;

/// The gateway's ports: HTTP, HTTPS, metrics; and the echo upstream's.
pub(crate) const GATEWAY_PORTS: [u16; 3] = [9080, 9443, 9091];
pub(crate) const ECHO_PORT: u16 = 9088;
