//! Real traffic between pod namespaces: TCP and UDP echo servers and probes, and SCTP over raw
//! sockets (this kernel has no SCTP module; raw IP sockets of protocol 132 still carry real
//! SCTP-headed packets through the veths and the programs).

use std::{
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::NetNs;

/// A background server that stops (and is joined) on drop.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP echo server on `[::]:port` (dual-stack) in `ns`.
pub fn tcp_echo_server(ns: &NetNs, port: u16) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let flag = stop.clone();
    let handle = ns.spawn(move || {
        let listener = TcpListener::bind(("::", port)).expect("bind tcp server");
        listener.set_nonblocking(true).expect("nonblocking");
        tx.send(()).expect("ready");
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 512];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv().expect("server ready");
    Server {
        stop,
        handle: Some(handle),
    }
}

/// A UDP echo server on `[::]:port` in `ns`.
pub fn udp_echo_server(ns: &NetNs, port: u16) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let flag = stop.clone();
    let handle = ns.spawn(move || {
        let sock = UdpSocket::bind(("::", port)).expect("bind udp server");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 512];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    rx.recv().expect("server ready");
    Server {
        stop,
        handle: Some(handle),
    }
}

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected and the echo came back.
    Ok,
    /// Nothing came back in time: what a silent drop looks like.
    Timeout,
    /// The peer refused (a reset or an ICMP error): never what a septum deny looks like.
    Refused,
    Other,
}

fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Outcome::Refused,
        _ => Outcome::Other,
    }
}

/// Connects from `ns` to `dst:port` over TCP and checks an echo.
pub fn tcp_probe(ns: &NetNs, dst: IpAddr, port: u16, timeout: Duration) -> Outcome {
    ns.run(|| {
        let mut s = match TcpStream::connect_timeout(&SocketAddr::new(dst, port), timeout) {
            Ok(s) => s,
            Err(e) => return classify(&e),
        };
        let _ = s.set_read_timeout(Some(timeout));
        if let Err(e) = s.write_all(b"septum") {
            return classify(&e);
        }
        let mut buf = [0u8; 6];
        match s.read_exact(&mut buf) {
            Ok(()) if &buf == b"septum" => Outcome::Ok,
            Ok(()) => Outcome::Other,
            Err(e) => classify(&e),
        }
    })
}

/// Sends a datagram from `ns` to `dst:port` and waits for its echo.
pub fn udp_probe(ns: &NetNs, dst: IpAddr, port: u16, timeout: Duration) -> Outcome {
    ns.run(|| {
        let bind: SocketAddr = if dst.is_ipv6() {
            "[::]:0".parse().expect("addr")
        } else {
            "0.0.0.0:0".parse().expect("addr")
        };
        let sock = UdpSocket::bind(bind).expect("bind udp client");
        sock.set_read_timeout(Some(timeout)).expect("timeout");
        if let Err(e) = sock.send_to(b"septum", (dst, port)) {
            return classify(&e);
        }
        let mut buf = [0u8; 16];
        match sock.recv_from(&mut buf) {
            Ok((6, _)) if &buf[..6] == b"septum" => Outcome::Ok,
            Ok(_) => Outcome::Other,
            Err(e) => classify(&e),
        }
    })
}

fn raw_socket(v6: bool) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2) call; the fd is owned on success.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_SCTP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Sends one SCTP-headed packet (`sport` -> `dport`, an INIT-like chunk) from `from` to `dst`
/// and reports whether a raw SCTP socket in `to` received it within `timeout`.
pub fn sctp_probe(
    from: &NetNs,
    to: &NetNs,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    timeout: Duration,
) -> Outcome {
    use std::os::fd::AsRawFd;
    let v6 = dst.is_ipv6();
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = to.spawn(move || -> bool {
        let sock = raw_socket(v6).expect("raw sctp socket");
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        tx.send(()).expect("ready");
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
            let off = if v6 {
                0
            } else {
                ((buf[0] & 0x0f) as usize) * 4
            };
            let n = n as usize;
            if n >= off + 4 {
                let sp = u16::from_be_bytes([buf[off], buf[off + 1]]);
                let dp = u16::from_be_bytes([buf[off + 2], buf[off + 3]]);
                if sp == sport && dp == dport {
                    return true;
                }
            }
        }
        false
    });
    rx.recv().expect("receiver ready");
    from.run(|| {
        let sock = raw_socket(v6).expect("raw sctp socket");
        let mut pkt = Vec::new();
        pkt.extend_from_slice(&sport.to_be_bytes());
        pkt.extend_from_slice(&dport.to_be_bytes());
        pkt.extend_from_slice(&[0; 8]); // verification tag, checksum
        pkt.extend_from_slice(&[1, 0, 0, 20]); // INIT chunk header
        pkt.extend_from_slice(&[0; 16]);
        let (ss, len) = sockaddr(dst);
        // SAFETY: valid fd, buffer and address.
        unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&ss as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
    });
    if receiver.join().unwrap_or(false) {
        Outcome::Ok
    } else {
        Outcome::Timeout
    }
}
