//! The systemd notification protocol (`sd_notify(3)`) without libsystemd and without unsafe
//! code: readiness, reload and stop, status lines and watchdog pings as datagrams to
//! `$NOTIFY_SOCKET`.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset or empty) every call is a no-op returning
//! `Ok(false)`, so the daemon calls them unconditionally. A failed send is an error for the
//! caller to log; it never has to stop the daemon.
//!
//! `reloading()` sends `RELOADING=1` without `MONOTONIC_USEC=`: the current
//! `CLOCK_MONOTONIC` reading is not available from std without unsafe code (`Instant` is
//! opaque) and this crate adds no dependency for it. `Type=notify` with
//! `ExecReload=kill -HUP` (the shipped unit) does not need it; systemd ≥ 253's
//! `Type=notify-reload` would.
//!
//! The environment is read only by the thin public wrappers; the work is done by functions
//! that take the socket address and the variables explicitly, which the tests use (tests run
//! in parallel threads and must not change the process environment).

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

/// How long one send may block when the service manager's queue is full.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `state` (one or more `KEY=value` lines) to `$NOTIFY_SOCKET`. `Ok(false)` when the
/// variable is unset or empty (not started by systemd), `Ok(true)` when sent.
pub fn notify(state: &str) -> io::Result<bool> {
    notify_with(std::env::var_os("NOTIFY_SOCKET").as_deref(), state)
}

/// `READY=1`: start-up (or a reload) is finished.
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// `RELOADING=1`: a reload began. Follow it with [`ready`] when the reload is over, whether
/// the new configuration was taken or refused, or systemd keeps the unit in "reloading".
/// No `MONOTONIC_USEC=` (see the module documentation).
pub fn reloading() -> io::Result<bool> {
    notify("RELOADING=1")
}

/// `STOPPING=1`: shutdown began.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `WATCHDOG=1`: the keep-alive ping; send it every [`watchdog_interval`].
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// `STATUS=…`: a one-line status shown by `systemctl status`. Line breaks become spaces
/// (a line break would start a new assignment).
pub fn status(msg: &str) -> io::Result<bool> {
    notify(&status_line(msg))
}

/// `EXTEND_TIMEOUT_USEC=…`: asks for `by` more time from now before the start (or stop)
/// timeout, e.g. while a large store is evaluated before [`ready`].
pub fn extend_timeout(by: Duration) -> io::Result<bool> {
    notify(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()))
}

/// How often to call [`watchdog`]: half of `$WATCHDOG_USEC`, when the service manager
/// enabled the watchdog for this process (`$WATCHDOG_PID`, if set, is our pid). `None`
/// otherwise, and when the variables do not parse.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var_os("WATCHDOG_USEC");
    let pid = std::env::var_os("WATCHDOG_PID");
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`notify`] with the value of `NOTIFY_SOCKET` given.
fn notify_with(socket: Option<&OsStr>, state: &str) -> io::Result<bool> {
    match socket {
        Some(s) if !s.is_empty() => notify_to(s, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the socket named as in `$NOTIFY_SOCKET`: an absolute path, or
/// `@name` for a socket in the abstract namespace.
pub fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    if state.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty notification",
        ));
    }
    let addr = socket_addr(socket)?;
    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "notification truncated: {sent} of {} bytes sent",
                state.len()
            ),
        ));
    }
    Ok(())
}

/// The address of `$NOTIFY_SOCKET`: `/path` or `@abstract-name`. Other forms (such as
/// the `vsock:` addresses of newer systemd) are refused.
fn socket_addr(socket: &OsStr) -> io::Result<SocketAddr> {
    match socket.as_bytes() {
        [b'@', name @ ..] if !name.is_empty() => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(Path::new(socket)),
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "NOTIFY_SOCKET {:?} is neither an absolute path nor @abstract-name",
                socket
            ),
        )),
    }
}

fn status_line(msg: &str) -> String {
    let one_line: String = msg
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("STATUS={one_line}")
}

/// [`watchdog_interval`] with the variables and our pid given.
fn watchdog_interval_from(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    our_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = pid {
        let pid: u32 = pid.to_str()?.trim().parse().ok()?;
        if pid != our_pid {
            return None;
        }
    }
    let usec: u64 = usec?.to_str()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn receiver(dir: &Path) -> (UnixDatagram, OsString) {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (sock, path.into_os_string())
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, path) = receiver(dir.path());
        notify_to(&path, "READY=1").unwrap();
        assert_eq!(recv(&sock), "READY=1");
        notify_to(&path, "STOPPING=1\nSTATUS=bye").unwrap();
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=bye");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("guardline-sd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn unset_or_empty_socket_is_a_no_op() {
        assert!(!notify_with(None, "READY=1").unwrap());
        assert!(!notify_with(Some(OsStr::new("")), "READY=1").unwrap());
    }

    #[test]
    fn set_socket_reports_the_send() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, path) = receiver(dir.path());
        assert!(notify_with(Some(&path), "RELOADING=1").unwrap());
        assert_eq!(recv(&sock), "RELOADING=1");
    }

    #[test]
    fn bad_addresses_and_states_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        // Relative path, bare '@', a newer systemd's vsock address.
        for bad in ["notify.sock", "@", "vsock:2:1234"] {
            let e = notify_to(OsStr::new(bad), "READY=1").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{bad}");
        }
        // Nobody listening.
        let missing = dir.path().join("missing.sock");
        assert!(notify_to(missing.as_os_str(), "READY=1").is_err());
        let (_sock, path) = receiver(dir.path());
        assert_eq!(
            notify_to(&path, "").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(
            status_line("reload refused:\nrules/x.toml:3"),
            "STATUS=reload refused: rules/x.toml:3"
        );
        assert_eq!(status_line("running"), "STATUS=running");
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec() {
        let us = |s: &str| Some(OsString::from(s));
        let half = Some(Duration::from_secs(15));
        assert_eq!(
            watchdog_interval_from(us("30000000").as_deref(), None, 42),
            half
        );
        assert_eq!(
            watchdog_interval_from(us("30000000").as_deref(), us("42").as_deref(), 42),
            half
        );
        // Meant for another process (e.g. inherited by a child).
        assert_eq!(
            watchdog_interval_from(us("30000000").as_deref(), us("41").as_deref(), 42),
            None
        );
        assert_eq!(watchdog_interval_from(None, None, 42), None);
        assert_eq!(watchdog_interval_from(us("0").as_deref(), None, 42), None);
        assert_eq!(
            watchdog_interval_from(us("soon").as_deref(), None, 42),
            None
        );
        assert_eq!(
            watchdog_interval_from(us("30000000").as_deref(), us("x").as_deref(), 42),
            None
        );
    }
}
