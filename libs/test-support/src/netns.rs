//! Hosts on one machine, for faults that cross a network: each host a network namespace of its
//! own with one address, all on a bridge in the test's namespace, so that the test and the
//! services it starts reach every host directly, and a partition between hosts is a pair of
//! blackhole routes inside their namespaces (nothing else changes: the processes, their sockets
//! and the test's own reach all stay). Loopback ports cannot be cut apart like this: every
//! process on one loopback shares one routing table.
//!
//! It needs root and Debian's iproute2 (`ip netns`, `ip link … type bridge|veth`); nothing else.
//! Every name carries a random tag so that tests in parallel do not meet, and [`Hosts`] removes
//! its namespaces and bridge on drop.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Network namespaces on a bridge, with addresses `10.<a>.<b>.1`, `.2`, … (the bridge is `.254`).
#[derive(Debug)]
pub struct Hosts {
    tag: String,
    subnet: [u8; 3],
    count: usize,
}

/// Runs `ip` with `args`, failing with what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (Debian's iproute2): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Hosts {
    /// `count` hosts (at most 253) on a fresh bridge; an error when this machine does not allow
    /// it (not root, no iproute2).
    pub fn create(count: usize) -> Result<Hosts, String> {
        assert!(count < 254, "one /24 holds at most 253 hosts");
        let id = uuid::Uuid::new_v4();
        let bytes = id.as_bytes();
        let hosts = Hosts {
            // Link names may have 15 characters: `pb`/`pv` + 8 + the host's digit stays within.
            tag: id.simple().to_string()[..8].to_owned(),
            // 10.200.0.0–10.249.255.0: away from the usual 10.0.x and container networks.
            subnet: [10, 200 + bytes[8] % 50, bytes[9]],
            count,
        };
        // From here on, a failure leaves only what drop removes.
        hosts.build()?;
        Ok(hosts)
    }

    fn build(&self) -> Result<(), String> {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.bridge_address()), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for index in 0..self.count {
            let namespace = self.namespace(index);
            let outside = self.outside(index);
            ip(&["netns", "add", &namespace])?;
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
            ])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{}/24", self.address(index)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The bridge's end of host `index`'s veth pair.
    fn outside(&self, index: usize) -> String {
        format!("pv{}{index}", self.tag)
    }

    fn bridge(&self) -> String {
        format!("pb{}", self.tag)
    }

    fn bridge_address(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// The namespace of host `index` (0-based), for `ip netns exec`.
    pub fn namespace(&self, index: usize) -> String {
        format!("parley-{}-{}", self.tag, index + 1)
    }

    /// The address of host `index` (0-based).
    pub fn address(&self, index: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, u8::try_from(index + 1).expect("at most 253 hosts"))
    }

    /// Cuts host `index` off from every other host, both ways; the test's namespace still
    /// reaches all of them (clients keep their connections to the cut-off host, as clients in
    /// its part of a real network would).
    pub fn isolate(&self, index: usize) -> Result<(), String> {
        self.routes("add", index)
    }

    /// Undoes [`Hosts::isolate`].
    pub fn rejoin(&self, index: usize) -> Result<(), String> {
        self.routes("del", index)
    }

    fn routes(&self, verb: &str, index: usize) -> Result<(), String> {
        for other in (0..self.count).filter(|&o| o != index) {
            for (from, to) in [(index, other), (other, index)] {
                let to = format!("{}/32", self.address(to));
                ip(&["-n", &self.namespace(from), "route", verb, "blackhole", &to])?;
            }
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // A veth pair goes with either end: the bridge's ends are deleted here, not left to the
        // namespaces' teardown, which the kernel may put off while a socket of theirs lingers.
        for index in 0..self.count {
            let _ = ip(&["link", "del", &self.outside(index)]);
            let _ = ip(&["netns", "del", &self.namespace(index)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
