//! Listening sockets that outlive cutover (DESIGN.md invariant 8): socket activation.
//!
//! A launcher that holds the listeners (systemd's `cutover.socket`, `systemd-socket-activate`)
//! passes them as in `sd_listen_fds(3)`: file descriptors from 3 on, `LISTEN_FDS` of them,
//! meant for the process whose pid is `LISTEN_PID`, named in `LISTEN_FDNAMES` (colon
//! separated). While cutover is down (a crash, a restart) the launcher keeps the sockets open, so
//! connections wait in the kernel's backlog instead of being refused, and the next cutover
//! accepts them.
//!
//! The names cutover understands: `public` (the proxy's listener, `service.listen`, TLS or not)
//! and `admin` (`admin.listen`). A socket with any other name (systemd names a socket by its
//! unit, `systemd-socket-activate` without `--fdname` says `unknown`) is matched by its address.
//! A socket whose address is not the one the config names is an error naming both: serving a
//! port the config does not mention would be a surprise, and so would binding a second one.
//! A listener the launcher does not pass is bound from the config as usual.
//!
//! As `sd_listen_fds` does, the variables are removed once read (so that instances cutover starts
//! do not believe them meant for them) and every inherited socket is marked close-on-exec.

use crate::runtime::StartError;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::net::TcpListener;
use tracing::info;

/// The first file descriptor a launcher passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// What a launcher's environment says, before any descriptor is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    /// `(name, fd)` for each passed socket, in order.
    pub fds: Vec<(String, RawFd)>,
}

/// Why the passed sockets cannot be used. `cutover run` exits 64 with it.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("{var}={value:?} is not a number (fix: the launcher must set {var} as sd_listen_fds(3) says, or unset it)")]
    NotANumber { var: &'static str, value: String },
    #[error("LISTEN_FDNAMES names {names} sockets but LISTEN_FDS is {fds} (fix: give --fdname one name per socket, e.g. public:admin)")]
    NameCount { names: usize, fds: usize },
    #[error("socket activation: file descriptor {fd} ({name}) {problem} (fix: pass listening TCP sockets, e.g. ListenStream= in cutover.socket)")]
    NotAListener {
        fd: RawFd,
        name: String,
        problem: String,
    },
    #[error("socket activation: two sockets are the {role} listener (fds {first} and {second}) (fix: pass one socket per name)")]
    Duplicate {
        role: &'static str,
        first: RawFd,
        second: RawFd,
    },
    #[error("socket activation: the socket named {name:?} (fd {fd}) listens on {passed}, but {field} = {configured} (fix: make ListenStream= and {field} the same address)")]
    Mismatch {
        name: String,
        fd: RawFd,
        passed: SocketAddr,
        field: &'static str,
        configured: SocketAddr,
    },
    #[error("socket activation: the socket named {name:?} (fd {fd}) listens on {passed}, which is neither service.listen = {public} nor admin.listen = {admin} (fix: name it public or admin with FileDescriptorName=, or make the addresses agree)")]
    Unmatched {
        name: String,
        fd: RawFd,
        passed: SocketAddr,
        public: SocketAddr,
        admin: SocketAddr,
    },
}

/// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` as `sd_listen_fds` does: `None` when
/// they are absent or meant for another process (`LISTEN_PID` is not `me`). Pure: no
/// descriptor is touched.
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Result<Option<Passed>, ActivationError> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::NotANumber {
            var: "LISTEN_PID",
            value: pid.to_string(),
        })?;
    if pid != me {
        return Ok(None);
    }
    let count: usize = fds
        .trim()
        .parse()
        .ok()
        .filter(|n: &usize| *n <= 1024)
        .ok_or_else(|| ActivationError::NotANumber {
            var: "LISTEN_FDS",
            value: fds.to_string(),
        })?;
    let names: Vec<String> = match names {
        Some(n) if !n.is_empty() => n.split(':').map(str::to_string).collect(),
        _ => vec!["unknown".to_string(); count],
    };
    if names.len() != count {
        return Err(ActivationError::NameCount {
            names: names.len(),
            fds: count,
        });
    }
    Ok(Some(Passed {
        fds: names.into_iter().zip(FIRST_FD..).collect(),
    }))
}

/// Listening sockets a launcher passed, by the role cutover gives them.
#[derive(Debug, Default)]
pub struct Inherited {
    public: Option<Taken>,
    admin: Option<Taken>,
    /// Passed sockets matched by address rather than by name, until [`Inherited::resolve`].
    unnamed: Vec<Taken>,
    /// The state directory's locked file, passed by the cutover being upgraded
    /// ([`crate::upgrade`]).
    lock: Option<OwnedFd>,
}

#[derive(Debug)]
struct Taken {
    name: String,
    fd: RawFd,
    socket: socket2::Socket,
}

impl Inherited {
    /// No passed sockets: every listener is bound from the config.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// Takes the sockets this process's launcher passed, and removes the variables. Call it
    /// once, first thing in `main`, before any thread starts (the environment is changed).
    pub fn from_env() -> Result<Inherited, ActivationError> {
        let var = |k| std::env::var(k).ok();
        let passed = parse(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            std::process::id(),
        );
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
        match passed? {
            Some(p) => Inherited::take(p),
            None => Ok(Inherited::none()),
        }
    }

    fn take(passed: Passed) -> Result<Inherited, ActivationError> {
        let mut out = Inherited::none();
        for (name, fd) in passed.fds {
            let not_a_listener = |problem: String| ActivationError::NotAListener {
                fd,
                name: name.clone(),
                problem,
            };
            // Before ownership is taken: the descriptor must be open and a socket, or closing
            // it later would close something else (or nothing).
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map_err(|e| not_a_listener(format!("is not open ({e})")))?;
            if !link.to_string_lossy().starts_with("socket:") {
                return Err(not_a_listener(format!(
                    "is not a socket ({})",
                    link.display()
                )));
            }
            let socket = socket2::Socket::from(own(fd));
            socket
                .set_cloexec(true)
                .map_err(|e| not_a_listener(format!("cannot be made close-on-exec ({e})")))?;
            if !socket.is_listener().unwrap_or(false)
                || socket.r#type().ok() != Some(socket2::Type::STREAM)
            {
                return Err(not_a_listener("is not a listening stream socket".into()));
            }
            if socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_none()
            {
                return Err(not_a_listener("is not a TCP socket".into()));
            }
            let taken = Taken {
                name: name.clone(),
                fd,
                socket,
            };
            let slot = match name.as_str() {
                "public" => &mut out.public,
                "admin" => &mut out.admin,
                _ => {
                    out.unnamed.push(taken);
                    continue;
                }
            };
            if let Some(first) = slot {
                return Err(ActivationError::Duplicate {
                    role: if name == "public" { "public" } else { "admin" },
                    first: first.fd,
                    second: fd,
                });
            }
            *slot = Some(taken);
        }
        Ok(out)
    }

    /// What `cutover upgrade`'s running cutover passed ([`crate::upgrade::receive`]): its
    /// listeners (checked against the config like any passed socket) and its state-dir lock.
    pub fn handed_over(public: OwnedFd, admin: OwnedFd, lock: OwnedFd) -> Inherited {
        let taken = |name: &str, fd: OwnedFd| Taken {
            name: name.to_string(),
            fd: fd.as_raw_fd(),
            socket: socket2::Socket::from(fd),
        };
        Inherited {
            public: Some(taken("public", public)),
            admin: Some(taken("admin", admin)),
            unnamed: Vec::new(),
            lock: Some(lock),
        }
    }

    /// The passed state-dir lock, if any (taken once, before [`Inherited::resolve`]).
    pub fn take_lock(&mut self) -> Option<OwnedFd> {
        self.lock.take()
    }

    /// Whether any socket was passed.
    pub fn is_empty(&self) -> bool {
        self.public.is_none() && self.admin.is_none() && self.unnamed.is_empty()
    }

    /// Matches the passed sockets against the config's addresses: `(public, admin)`, each
    /// `None` when it is to be bound from the config.
    pub fn resolve(
        self,
        public: SocketAddr,
        admin: SocketAddr,
    ) -> Result<(Option<std::net::TcpListener>, Option<std::net::TcpListener>), ActivationError>
    {
        let Inherited {
            public: mut p,
            admin: mut a,
            unnamed,
            lock: _,
        } = self;
        for t in unnamed {
            let addr = addr_of(&t);
            let slot = if p.is_none() && same(addr, public) {
                &mut p
            } else if a.is_none() && same(addr, admin) {
                &mut a
            } else {
                return Err(ActivationError::Unmatched {
                    name: t.name,
                    fd: t.fd,
                    passed: addr,
                    public,
                    admin,
                });
            };
            *slot = Some(t);
        }
        let check = |t: Option<Taken>, field: &'static str, configured: SocketAddr| {
            t.map(|t| {
                let passed = addr_of(&t);
                if !same(passed, configured) {
                    return Err(ActivationError::Mismatch {
                        name: t.name,
                        fd: t.fd,
                        passed,
                        field,
                        configured,
                    });
                }
                Ok(std::net::TcpListener::from(t.socket))
            })
            .transpose()
        };
        Ok((
            check(p, "service.listen", public)?,
            check(a, "admin.listen", admin)?,
        ))
    }
}

/// The proxy's and the admin API's listeners: the passed ones where a launcher passed them,
/// bound from the config otherwise.
pub async fn open(
    public: SocketAddr,
    admin: SocketAddr,
    inherited: Inherited,
) -> Result<(TcpListener, TcpListener), StartError> {
    let passed = !inherited.is_empty();
    let (p, a) = inherited
        .resolve(public, admin)
        .map_err(|e| StartError::Activation(Box::new(e)))?;
    let p = listen(p, "service.listen", public).await?;
    let a = listen(a, "admin.listen", admin).await?;
    if passed {
        info!(public = %public, admin = %admin, "listening on sockets the launcher passed (socket activation)");
    }
    Ok((p, a))
}

async fn listen(
    passed: Option<std::net::TcpListener>,
    field: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, StartError> {
    let bind = |source| StartError::Bind {
        field,
        addr,
        source,
    };
    match passed {
        Some(l) => {
            l.set_nonblocking(true).map_err(bind)?;
            TcpListener::from_std(l).map_err(bind)
        }
        None => TcpListener::bind(addr).await.map_err(bind),
    }
}

fn addr_of(t: &Taken) -> SocketAddr {
    t.socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Whether a passed socket bound to `passed` is the configured `configured`: the same IP, and
/// the same port unless the config asks for any port (0).
pub fn same(passed: SocketAddr, configured: SocketAddr) -> bool {
    passed.ip() == configured.ip() && (configured.port() == 0 || passed.port() == configured.port())
}

/// Takes ownership of a descriptor the launcher passed.
///
/// The one `unsafe` in this crate, and why it is sound: `fd` is one of the descriptors the
/// launcher passed to this very process (`LISTEN_PID` is our pid), it was checked open and a
/// socket just before, nothing else in cutover refers to it, and `from_env` runs once, so
/// exactly one owner ever exists.
#[allow(unsafe_code)]
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: see above: open, passed to us, and owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_or_for_another_process_means_nothing_passed() {
        assert_eq!(parse(None, None, None, 7).unwrap(), None);
        assert_eq!(parse(Some("7"), None, None, 7).unwrap(), None);
        assert_eq!(parse(Some("8"), Some("2"), None, 7).unwrap(), None);
    }

    #[test]
    fn names_and_descriptors_from_three() {
        let p = parse(Some("7"), Some("2"), Some("public:admin"), 7)
            .unwrap()
            .unwrap();
        assert_eq!(
            p.fds,
            vec![("public".to_string(), 3), ("admin".to_string(), 4)]
        );
        let p = parse(Some("7"), Some("1"), None, 7).unwrap().unwrap();
        assert_eq!(p.fds, vec![("unknown".to_string(), 3)]);
    }

    #[test]
    fn malformed_variables_are_errors_naming_them() {
        let e = parse(Some("x"), Some("1"), None, 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("LISTEN_PID=\"x\""), "{e}");
        let e = parse(Some("7"), Some("-1"), None, 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("LISTEN_FDS"), "{e}");
        let e = parse(Some("7"), Some("2"), Some("public"), 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("names 1 sockets but LISTEN_FDS is 2"), "{e}");
    }

    #[test]
    fn a_port_zero_config_takes_any_port_on_its_ip() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(same(a("127.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(same(a("127.0.0.1:8080"), a("127.0.0.1:0")));
        assert!(!same(a("127.0.0.1:8080"), a("127.0.0.1:8081")));
        assert!(!same(a("0.0.0.0:8080"), a("127.0.0.1:8080")));
    }

    #[test]
    fn a_passed_socket_on_another_address_is_an_error_naming_both() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let passed = l.local_addr().unwrap();
        let socket = socket2::Socket::from(OwnedFd::from(l));
        let inherited = Inherited {
            public: Some(Taken {
                name: "public".into(),
                fd: 3,
                socket,
            }),
            ..Inherited::none()
        };
        let configured: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = inherited
            .resolve(configured, "127.0.0.1:0".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&passed.to_string()) && e.contains("service.listen = 127.0.0.1:1"),
            "{e}"
        );
    }
}
