//! What `cairn up` and its drill share: the local stores' names and ports,
//! and the control plane's port. Its own module so that the drill does not
//! depend on `up` (which starts it).

/// (name, client port, peer port) of each store.
pub(crate) const NODES: [(&str, u16, u16); 3] = [
    ("s1", 2379, 2380),
    ("s2", 22379, 22380),
    ("s3", 32379, 32380),
];

/// The control plane's port (admin API and console).
pub(crate) const CONTROL_PORT: u16 = 9000;
