//! systemd's readiness protocol (`sd_notify(3)`), for a `Type=notify` unit
//! (deploy/systemd/cutover.service): a datagram of `KEY=value` lines to the Unix socket named
//! by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! cutover says `READY=1` once its proxy accepts (the instances re-adopted, the route table
//! set), `RELOADING=1` … `READY=1` around a reload, and `STOPPING=1` when it begins to shut
//! down. A cutover started by `cutover upgrade` also says `MAINPID=<its pid>`, so systemd
//! follows the service to the new process instead of taking the old one's exit for the
//! service's end (this needs `NotifyAccess=all`: the new process is not the unit's main
//! process when it speaks). Without `$NOTIFY_SOCKET` (not under systemd) nothing is sent.
//!
//! The instances must not speak for cutover: `NOTIFY_SOCKET` is removed from their
//! environment (crates/supervisor's `process::spawn`).

use std::os::unix::net::UnixDatagram;

/// The environment variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=value` assignments) to `$NOTIFY_SOCKET`. `Ok(false)`
/// when the variable is unset; an error when it is set but the datagram could not be sent
/// (logged by the caller: systemd would then not see the service as ready).
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let socket = socket.as_encoded_bytes();
    if let Some(name) = socket.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        use std::os::unix::ffi::OsStrExt;
        sock.send_to(state.as_bytes(), std::ffi::OsStr::from_bytes(socket))?;
    }
    Ok(true)
}

/// [`notify`], logging a failure instead of returning it.
pub fn tell(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state = %state.replace('\n', " "), "could not tell systemd (NOTIFY_SOCKET)");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_datagram_reaches_the_named_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // The environment is process-wide: this is the only test in the crate that sets it.
        std::env::set_var(super::NOTIFY_SOCKET, &path);
        let sent = super::notify("READY=1\nMAINPID=42");
        std::env::remove_var(super::NOTIFY_SOCKET);
        assert!(sent.unwrap());
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
        assert!(!super::notify("READY=1").unwrap());
    }
}
