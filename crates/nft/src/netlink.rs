//! Element changes straight to nf_tables: one netlink batch, one round trip.
//!
//! Before every transaction libnftables reads the generation, the table, its
//! chains, its sets, the changed sets' elements and the objects back from
//! the kernel (six netlink round trips, most of its 0.3-0.4 ms per change)
//! to check the script against them. An update of a table this enforcer
//! made needs none of that: the sets and their types are the renderer's, so
//! the elements are encoded here, as nft 1.0 encodes them (checked against
//! `nft --debug=mnl`), and sent as one batch the kernel applies atomically
//! or not at all. Anything the kernel refuses (the table gone, a set of
//! another shape) fails the whole batch, and the caller falls back to
//! libnftables, whose message says what is wrong.
//!
//! Open-port sets (`inet_service`, `flags interval`) hold a range as two
//! elements: its first port, and the port after its last flagged as an
//! interval's end; a range up to 65535 has no end element and says so in
//! its user data (nft lists it as open to the end). Allowlist sets
//! (`ipv4_addr . inet_service`, intervals) hold one element from the
//! network's first address and first port to its last address and last port.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use cassette_model::Cidr;
use cassette_ruleset::{Element, SetDelta};

const NETLINK_NETFILTER: libc::c_int = 12;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
/// nft's user data on an interval open to the end of the key's range:
/// `NFTNL_UDATA_SET_ELEM_FLAGS` (1), 4 bytes, `NFTNL_SET_ELEM_F_INTERVAL_OPEN`.
const INTERVAL_OPEN: [u8; 6] = [1, 4, 1, 0, 0, 0];

/// Elements per message: an attribute's length is 16 bits, and an
/// allowlist element of IPv6 takes 60 bytes (512 of them, 30 KiB).
const ELEMENTS_PER_MESSAGE: usize = 512;
/// The socket's send buffer, for the largest batch: a whole firewall
/// applied at once, 1,024 rules of 64 networks each, is about 4 MiB. A
/// batch the buffer cannot take is refused by `send` (and applied by
/// libnftables).
const SEND_BUFFER: libc::c_int = 8 << 20;

/// How long to wait for the kernel's answer to a batch (it answers at once;
/// this only bounds a wait that would otherwise have no end).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A netfilter netlink socket in the network namespace it was opened in.
pub struct Netlink {
    socket: OwnedFd,
    next_seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain syscalls on a descriptor this function owns; every
        // pointer passed points at a live local of the size given.
        let socket = unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let fd = socket.as_raw_fd();
        // Port 0: bound, the kernel chooses ours; connected, the socket
        // takes no message from any sender but the kernel, so no process of
        // the instance can answer a batch in the kernel's name.
        let kernel = kernel_address();
        // SAFETY: as above.
        unsafe {
            check(libc::bind(fd, address_ptr(&kernel), ADDRESS_LENGTH))?;
            check(libc::connect(fd, address_ptr(&kernel), ADDRESS_LENGTH))?;
            // Room for a large batch: needs CAP_NET_ADMIN, which nf_tables
            // needs anyway; without it the default buffer takes most.
            set_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &SEND_BUFFER);
            // Errors come back without the refused message (we know it).
            set_option(fd, SOL_NETLINK, NETLINK_CAP_ACK, &1 as &libc::c_int);
            let timeout = libc::timeval {
                tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
                tv_usec: 0,
            };
            check(set_option(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout,
            ))?;
        }
        let next_seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() | 1);
        Ok(Self { socket, next_seq })
    }

    /// Applies `deltas` to `table inet <table>` as one transaction: all of
    /// them or, on any error, none.
    pub fn apply(&mut self, table: &str, deltas: &[SetDelta]) -> Result<(), String> {
        let first = self.next_seq;
        let batch = encode_batch(first, table, deltas);
        if batch.overflowed {
            return Err("a set's element list is too long for one message".to_owned());
        }
        self.next_seq = first.wrapping_add(batch.messages + 2);
        self.send(&batch.bytes)
            .map_err(|e| format!("cannot send to nf_tables: {e}"))?;
        self.await_answers(first, &batch)
    }

    /// The port the kernel gave this socket.
    #[cfg(test)]
    pub(crate) fn port_id(&self) -> u32 {
        let mut address = kernel_address();
        let mut length = ADDRESS_LENGTH;
        // SAFETY: the address is live and as long as said.
        let got = unsafe {
            libc::getsockname(
                self.socket.as_raw_fd(),
                (&mut address as *mut libc::sockaddr_nl).cast(),
                &mut length,
            )
        };
        assert_eq!(got, 0, "{}", io::Error::last_os_error());
        address.nl_pid
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: `bytes` is live for the call.
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
            )
        };
        match sent {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != bytes.len() => Err(io::Error::other("short send")),
            _ => Ok(()),
        }
    }

    /// Waits for an answer to each element message (an ack, or the error
    /// that failed the batch). Answers to earlier batches (one abandoned
    /// after a timeout) are skipped by their sequence numbers.
    fn await_answers(&self, first: u32, batch: &Batch) -> Result<(), String> {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut acked = 0;
        while acked < batch.messages {
            let mut sender = kernel_address();
            let mut sender_length = ADDRESS_LENGTH;
            // SAFETY: the buffer and the address are live and as long as said.
            let read = unsafe {
                libc::recvfrom(
                    self.socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                    (&mut sender as *mut libc::sockaddr_nl).cast(),
                    &mut sender_length,
                )
            };
            if read < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("no answer from nf_tables: {error}"));
            }
            // Only the kernel answers (the connected socket sees to it too).
            if sender.nl_pid != 0 {
                continue;
            }
            for answer in answers(&buffer[..read as usize]) {
                let offset = answer.seq.wrapping_sub(first);
                if offset > batch.messages + 1 {
                    continue;
                }
                if answer.error != 0 {
                    let what = match offset {
                        0 => "the batch's start".to_owned(),
                        o if o == batch.messages + 1 => "the batch's end".to_owned(),
                        o => batch.described[o as usize - 1].clone(),
                    };
                    return Err(format!(
                        "nf_tables refused {what}: {}",
                        io::Error::from_raw_os_error(-answer.error)
                    ));
                }
                acked += 1;
            }
        }
        Ok(())
    }
}

const ADDRESS_LENGTH: libc::socklen_t = std::mem::size_of::<libc::sockaddr_nl>() as _;

fn address_ptr(address: &libc::sockaddr_nl) -> *const libc::sockaddr {
    (address as *const libc::sockaddr_nl).cast()
}

/// A syscall's -1 as the error it set.
fn check(returned: libc::c_int) -> io::Result<()> {
    match returned {
        0.. => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// `setsockopt` with `value`'s bytes.
///
/// # Safety
/// `fd` must be an open socket and `T` the option's C type.
unsafe fn set_option<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> libc::c_int {
    libc::setsockopt(
        fd,
        level,
        name,
        (value as *const T).cast(),
        std::mem::size_of::<T>() as libc::socklen_t,
    )
}

/// The kernel's netlink address: port 0, no groups.
fn kernel_address() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all zeros is a valid value.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    address
}

/// A batch ready to send: its bytes, how many element messages it holds
/// (sequence numbers `first + 1 ..= first + messages`), and what each does.
struct Batch {
    bytes: Vec<u8>,
    /// An attribute outgrew its 16-bit length (never, with
    /// `ELEMENTS_PER_MESSAGE`): the bytes must not be sent.
    overflowed: bool,
    messages: u32,
    described: Vec<String>,
}

fn encode_batch(first: u32, table: &str, deltas: &[SetDelta]) -> Batch {
    let mut out = Writer::default();
    let subsystem = NFNL_SUBSYS_NFTABLES;
    out.message(
        (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first),
        0,
        subsystem,
        |_| {},
    );
    let mut seq = first;
    let mut described = Vec::new();
    for delta in deltas {
        for (kind, verb, elements) in [
            (NFT_MSG_DELSETELEM, "deleting", &delta.removed),
            (NFT_MSG_NEWSETELEM, "adding", &delta.added),
        ] {
            for elements in elements.chunks(ELEMENTS_PER_MESSAGE) {
                seq = seq.wrapping_add(1);
                described.push(format!("{verb} elements of set {}", delta.set));
                let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
                let kind = NFNL_SUBSYS_NFTABLES << 8 | kind;
                out.message((kind, flags, seq), NFPROTO_INET, 0, |out| {
                    out.string(NFTA_SET_ELEM_LIST_TABLE, table);
                    out.string(NFTA_SET_ELEM_LIST_SET, delta.set);
                    out.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |out| {
                        for element in elements {
                            encode_element(out, element);
                        }
                    });
                });
            }
        }
    }
    let messages = seq.wrapping_sub(first);
    let end = (NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq.wrapping_add(1));
    out.message(end, 0, subsystem, |_| {});
    Batch {
        bytes: out.bytes,
        overflowed: out.overflowed,
        messages,
        described,
    }
}

fn encode_element(out: &mut Writer, element: &Element) {
    match element {
        Element::Ports(ports) => {
            let (first, last) = (ports.first().get(), ports.last().get());
            out.nested(NFTA_LIST_ELEM, |out| {
                key(out, NFTA_SET_ELEM_KEY, &first.to_be_bytes());
                if last == u16::MAX {
                    out.attr(NFTA_SET_ELEM_USERDATA, &INTERVAL_OPEN);
                }
            });
            if last < u16::MAX {
                out.nested(NFTA_LIST_ELEM, |out| {
                    out.attr(
                        NFTA_SET_ELEM_FLAGS,
                        &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
                    );
                    key(out, NFTA_SET_ELEM_KEY, &(last + 1).to_be_bytes());
                });
            }
        }
        Element::Allowed(network, ports) => {
            let (low, high) = network_ends(network);
            out.nested(NFTA_LIST_ELEM, |out| {
                key(out, NFTA_SET_ELEM_KEY, &concat(&low, ports.first().get()));
                key(
                    out,
                    NFTA_SET_ELEM_KEY_END,
                    &concat(&high, ports.last().get()),
                );
            });
        }
    }
}

fn key(out: &mut Writer, kind: u16, value: &[u8]) {
    out.nested(kind, |out| out.attr(NFTA_DATA_VALUE, value));
}

/// An address and a port as a concatenated key: each field padded to 4 bytes.
fn concat(address: &[u8], port: u16) -> Vec<u8> {
    let mut key = address.to_vec();
    key.extend_from_slice(&port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

/// A network's first and last address, in network byte order.
fn network_ends(network: &Cidr) -> (Vec<u8>, Vec<u8>) {
    let bytes = |addr: IpAddr| match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    (bytes(network.addr()), bytes(network.last_addr()))
}

/// Netlink messages and attributes, lengths filled in as each closes.
#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl Writer {
    /// `nlmsghdr` + `nfgenmsg` (family, version 0, `res_id` in network
    /// order: the subsystem, for a batch's start and end) + what `body` writes.
    fn message(
        &mut self,
        (kind, flags, seq): (u16, u16, u32),
        family: u8,
        res_id: u16,
        body: impl FnOnce(&mut Self),
    ) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(&flags.to_ne_bytes());
        self.bytes.extend_from_slice(&seq.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        self.bytes.push(family);
        self.bytes.push(0);
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        body(self);
        let length = (self.bytes.len() - start) as u32;
        self.bytes[start..start + 4].copy_from_slice(&length.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        self.bytes
            .extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    fn string(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    fn nested(&mut self, kind: u16, body: impl FnOnce(&mut Self)) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        body(self);
        let length = u16::try_from(self.bytes.len() - start).unwrap_or_else(|_| {
            self.overflowed = true;
            u16::MAX
        });
        self.bytes[start..start + 2].copy_from_slice(&length.to_ne_bytes());
    }

    fn pad(&mut self) {
        while self.bytes.len() % 4 != 0 {
            self.bytes.push(0);
        }
    }
}

/// An `NLMSG_ERROR` answer: the sequence number of the message it answers,
/// and 0 (an ack) or a negative errno.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    seq: u32,
    error: i32,
}

/// The `NLMSG_ERROR` answers in one datagram; anything else is skipped, and
/// so is a message whose length does not fit the datagram.
fn answers(datagram: &[u8]) -> Vec<Answer> {
    let mut found = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let length = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if length < 16 || length > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        // nlmsgerr: the error, then the header of the message it answers
        // (whose sequence number is 8 bytes into it).
        if kind == NLMSG_ERROR && length >= 16 + 4 + 16 {
            let error = i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
            let seq = u32::from_ne_bytes([rest[28], rest[29], rest[30], rest[31]]);
            found.push(Answer { seq, error });
        }
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_model::{Port, PortRange};

    fn ports(first: u32, last: u32) -> Element {
        Element::Ports(PortRange::new(first, last).unwrap())
    }

    /// The batch's element message, as `nft --debug=mnl` printed what nft
    /// 1.0.6 sent for `add element inet cassette tcp_open { 80, 65535 }`
    /// (less the set id nft adds for sets made in the same batch).
    #[test]
    fn ports_are_encoded_as_nft_encodes_them() {
        let deltas = [SetDelta {
            set: "tcp_open",
            removed: vec![],
            added: vec![
                Element::Ports(PortRange::single(Port::new(80).unwrap())),
                ports(65535, 65535),
            ],
        }];
        let batch = encode_batch(0, "cassette", &deltas);
        assert_eq!(batch.messages, 1);
        let message = &batch.bytes[20..batch.bytes.len() - 20];
        let mut expected: Vec<u8> = Vec::new();
        // nlmsghdr: length, type (10 << 8 | 12), flags, seq 1, port 0.
        expected.extend_from_slice(&124u32.to_ne_bytes());
        expected.extend_from_slice(&((10u16 << 8) | 12).to_ne_bytes());
        expected.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE).to_ne_bytes());
        expected.extend_from_slice(&1u32.to_ne_bytes());
        expected.extend_from_slice(&0u32.to_ne_bytes());
        expected.extend_from_slice(&[1, 0, 0, 0]);
        let attr = |length: u16, kind: u16| {
            let mut a = length.to_ne_bytes().to_vec();
            a.extend_from_slice(&kind.to_ne_bytes());
            a
        };
        expected.extend(attr(13, 1));
        expected.extend_from_slice(b"cassette\0\0\0\0");
        expected.extend(attr(13, 2));
        expected.extend_from_slice(b"tcp_open\0\0\0\0");
        expected.extend(attr(72, 3 | NLA_F_NESTED));
        expected.extend(attr(16, 1 | NLA_F_NESTED));
        expected.extend(attr(12, 1 | NLA_F_NESTED));
        expected.extend(attr(6, 1));
        expected.extend_from_slice(&[0x00, 0x50, 0, 0]);
        expected.extend(attr(24, 1 | NLA_F_NESTED));
        expected.extend(attr(8, 3));
        expected.extend_from_slice(&[0, 0, 0, 1]);
        expected.extend(attr(12, 1 | NLA_F_NESTED));
        expected.extend(attr(6, 1));
        expected.extend_from_slice(&[0x00, 0x51, 0, 0]);
        expected.extend(attr(28, 1 | NLA_F_NESTED));
        expected.extend(attr(12, 1 | NLA_F_NESTED));
        expected.extend(attr(6, 1));
        expected.extend_from_slice(&[0xff, 0xff, 0, 0]);
        expected.extend(attr(10, 6));
        expected.extend_from_slice(&[1, 4, 1, 0, 0, 0, 0, 0]);
        assert_eq!(message, &expected[..]);
        // The batch's start and end: NFNL_MSG_BATCH_BEGIN/END, seq 0 and 2,
        // for the nf_tables subsystem.
        let begin = &batch.bytes[..20];
        assert_eq!(&begin[4..6], &0x10u16.to_ne_bytes());
        assert_eq!(&begin[16..20], &[0, 0, 0, 10]);
        let end = &batch.bytes[batch.bytes.len() - 20..];
        assert_eq!(&end[4..6], &0x11u16.to_ne_bytes());
        assert_eq!(&end[8..12], &2u32.to_ne_bytes());
    }

    /// As nft sent `delete element inet cassette tcp4_allow { 192.0.2.7 . 1000-2000 }`.
    #[test]
    fn allowlist_elements_span_the_network_and_the_ports() {
        let deltas = [SetDelta {
            set: "tcp4_allow",
            removed: vec![Element::Allowed(
                Cidr::parse("192.0.2.7").unwrap(),
                PortRange::new(1000, 2000).unwrap(),
            )],
            added: vec![],
        }];
        let batch = encode_batch(7, "cassette", &deltas);
        let message = &batch.bytes[20..batch.bytes.len() - 20];
        assert_eq!(&message[4..6], &((10u16 << 8) | 14).to_ne_bytes());
        assert_eq!(&message[8..12], &8u32.to_ne_bytes());
        let elements = &message[20 + 16 + 16..];
        let mut expected = Vec::new();
        for (length, kind) in [(40u16, 0x8003u16), (36, 0x8001), (16, 0x8001), (12, 1)] {
            expected.extend_from_slice(&length.to_ne_bytes());
            expected.extend_from_slice(&kind.to_ne_bytes());
        }
        expected.extend_from_slice(&[0xc0, 0x00, 0x02, 0x07, 0x03, 0xe8, 0, 0]);
        for (length, kind) in [(16u16, 0x800au16), (12, 1)] {
            expected.extend_from_slice(&length.to_ne_bytes());
            expected.extend_from_slice(&kind.to_ne_bytes());
        }
        expected.extend_from_slice(&[0xc0, 0x00, 0x02, 0x07, 0x07, 0xd0, 0, 0]);
        assert_eq!(elements, &expected[..]);
    }

    /// A whole firewall's worth of IPv6 allowlist elements: split into
    /// messages whose element lists fit their 16-bit lengths.
    #[test]
    fn long_element_lists_are_split_across_messages() {
        let added: Vec<Element> = (0..3000u32)
            .map(|i| {
                let network = Cidr::parse(&format!("2001:db8:{:x}::/48", i)).unwrap();
                Element::Allowed(network, PortRange::new(1000, 2000).unwrap())
            })
            .collect();
        let deltas = [SetDelta {
            set: "tcp6_allow",
            removed: vec![],
            added,
        }];
        let batch = encode_batch(0, "cassette", &deltas);
        assert!(!batch.overflowed);
        assert_eq!(batch.messages, 6);
        // Walk the messages: each one's length leads to the next, and each
        // element list's length is its message's rest.
        let mut rest = &batch.bytes[..];
        let mut seen = 0;
        while !rest.is_empty() {
            let length = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            if kind == (10 << 8) | NFT_MSG_NEWSETELEM {
                let list = &rest[20 + 16 + 16..length];
                let list_length = u16::from_ne_bytes(list[..2].try_into().unwrap());
                assert_eq!(usize::from(list_length), list.len());
                seen += 1;
            }
            rest = &rest[length..];
        }
        assert_eq!(seen, 6);
    }

    #[test]
    fn networks_end_at_their_last_address() {
        let ends = |s: &str| network_ends(&Cidr::parse(s).unwrap());
        assert_eq!(
            ends("10.0.0.0/8"),
            (vec![10, 0, 0, 0], vec![10, 255, 255, 255])
        );
        assert_eq!(ends("0.0.0.0/0"), (vec![0; 4], vec![255; 4]));
        let (low, high) = ends("2001:db8::/32");
        assert_eq!(low[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(high[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert!(low[4..].iter().all(|b| *b == 0) && high[4..].iter().all(|b| *b == 0xff));
        assert_eq!(ends("::/0").1, vec![0xff; 16]);
    }

    #[test]
    fn answers_are_read_from_errors_only_and_stop_at_a_bad_length() {
        let answer = |seq: u32, error: i32| {
            let mut m = 36u32.to_ne_bytes().to_vec();
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(&error.to_ne_bytes());
            m.extend_from_slice(&[0; 8]);
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&[0; 4]);
            m
        };
        let mut datagram = answer(5, 0);
        datagram.extend(answer(6, -17));
        assert_eq!(
            answers(&datagram),
            vec![Answer { seq: 5, error: 0 }, Answer { seq: 6, error: -17 }]
        );
        datagram.extend_from_slice(&1000u32.to_ne_bytes());
        datagram.extend_from_slice(&[0; 12]);
        assert_eq!(answers(&datagram).len(), 2);
        assert!(answers(&datagram[..20]).is_empty());
    }
}
