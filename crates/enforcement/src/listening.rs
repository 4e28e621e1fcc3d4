//! The instance's listening sockets, from `/proc/net/{tcp,tcp6,udp,udp6}` of
//! the enforcer's own network namespace (which is the instance's): the
//! troubleshooting checklist's "is it listening on the right port?", answered
//! with facts instead of `netstat`; and how many TCP connections are
//! established to each listening port (what a change that closes it cuts).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use cassette_model::Protocol;

/// A TCP socket in LISTEN, or a bound, unconnected UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listening {
    pub protocol: Protocol,
    pub port: u16,
    pub address: IpAddr,
}

/// The instance's sockets: those listening, and the number of established
/// TCP connections per listening TCP port (accepted ones: outbound
/// connections use other local ports).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sockets {
    pub listening: Vec<Listening>,
    pub established: Vec<(u16, u32)>,
}

/// `st` of an established TCP socket, of a listening one (TCP_LISTEN), and
/// of an unconnected UDP one (TCP_CLOSE, which the kernel reuses for UDP).
const TCP_ESTABLISHED: &str = "01";
const TCP_LISTEN: &str = "0A";
const UDP_UNCONNECTED: &str = "07";

/// Every listening socket under `proc_net` (normally `/proc/net`), and the
/// established connections to them. A missing table (IPv6 disabled)
/// contributes nothing.
pub fn instance_sockets(proc_net: &Path) -> std::io::Result<Sockets> {
    let mut listening = Vec::new();
    let mut established = Vec::new();
    for (file, protocol, state) in [
        ("tcp", Protocol::Tcp, TCP_LISTEN),
        ("tcp6", Protocol::Tcp, TCP_LISTEN),
        ("udp", Protocol::Udp, UDP_UNCONNECTED),
        ("udp6", Protocol::Udp, UDP_UNCONNECTED),
    ] {
        match std::fs::read_to_string(proc_net.join(file)) {
            Ok(text) => {
                listening.extend(parse(&text, protocol, state));
                if protocol == Protocol::Tcp {
                    established.extend(parse(&text, protocol, TCP_ESTABLISHED));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    listening.sort();
    listening.dedup();
    let mut counts: std::collections::BTreeMap<u16, u32> = std::collections::BTreeMap::new();
    for socket in &established {
        let listens = listening
            .iter()
            .any(|l| l.protocol == Protocol::Tcp && l.port == socket.port);
        if listens {
            *counts.entry(socket.port).or_default() += 1;
        }
    }
    Ok(Sockets {
        listening,
        established: counts.into_iter().collect(),
    })
}

/// The sockets in state `state` of one `/proc/net` table (header line first;
/// `local_address` is `ADDR:PORT` in hex, the address as the kernel's words).
fn parse(text: &str, protocol: Protocol, state: &str) -> Vec<Listening> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let st = fields.nth(1)?;
            if st != state {
                return None;
            }
            let (address, port) = local.split_once(':')?;
            Some(Listening {
                protocol,
                port: u16::from_str_radix(port, 16).ok()?,
                address: address_of(address)?,
            })
        })
        .collect()
}

/// The kernel prints each 32-bit word of the address in host byte order.
fn address_of(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| {
        hex.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_tcp_and_bound_udp_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n\
   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n";
        let sockets = parse(tcp, Protocol::Tcp, TCP_LISTEN);
        assert_eq!(
            sockets,
            [
                Listening {
                    protocol: Protocol::Tcp,
                    port: 5432,
                    address: "0.0.0.0".parse().unwrap()
                },
                Listening {
                    protocol: Protocol::Tcp,
                    port: 8080,
                    address: "127.0.0.1".parse().unwrap()
                },
            ],
            "the established connection is not listening"
        );
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4 1\n\
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 5 1\n";
        let six = parse(tcp6, Protocol::Tcp, TCP_LISTEN);
        assert_eq!(six[0].address, "::".parse::<IpAddr>().unwrap());
        assert_eq!(six[0].port, 22);
        assert_eq!(six[1].address, "::1".parse::<IpAddr>().unwrap());
        let udp = "   sl  local_address rem_address   st\n\
  1: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 6 2\n";
        assert_eq!(parse(udp, Protocol::Udp, UDP_UNCONNECTED)[0].port, 5353);
        assert!(parse("header\ngarbage line\n", Protocol::Tcp, TCP_LISTEN).is_empty());
    }

    #[test]
    fn reads_this_machines_tables() {
        let sockets = instance_sockets(Path::new("/proc/net"));
        assert!(sockets.is_ok(), "{sockets:?}");
    }

    #[test]
    fn counts_established_connections_to_listening_ports_only() {
        let dir = tempfile::tempdir().unwrap();
        // Listening on 8080; two accepted connections to it (local port
        // 8080), one outbound connection from local port 50000.
        let tcp = "  sl  local_address rem_address   st\n\
   0: 00000000:1F90 00000000:0000 0A 0 0 0 0 0\n\
   1: 0100007F:1F90 0200007F:C350 01 0 0 0 0 0\n\
   2: 0100007F:1F90 0200007F:C351 01 0 0 0 0 0\n\
   3: 0100007F:C350 0300007F:0050 01 0 0 0 0 0\n";
        std::fs::write(dir.path().join("tcp"), tcp).unwrap();
        let sockets = instance_sockets(dir.path()).unwrap();
        assert_eq!(sockets.listening.len(), 1);
        assert_eq!(sockets.established, [(8080, 2)]);
    }
}
