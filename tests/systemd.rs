//! The systemd files: `systemd-analyze verify` finds nothing to say about the unit,
//! `systemd-analyze security --offline=true` rates its exposure 2.0 or lower, and the
//! sysusers and tmpfiles snippets create the user and the directories (in a scratch root,
//! never on this machine).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_guardline");
/// The ExecStart= line as shipped; the verify test points it at the freshly built binary.
const EXEC_START: &str = "ExecStart=/usr/local/bin/guardline run";
/// The highest overall exposure accepted.
const MAX_EXPOSURE: f64 = 2.0;

fn systemd_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name)
}

/// Runs a systemd tool; a missing tool fails the test and says how to install it.
fn run(tool: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {tool}: {e}. The systemd tests need systemd's tools \
             (Debian: apt-get install systemd; scripts/test installs it)"
        )
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_unit_verifies_without_a_word() {
    let unit = std::fs::read_to_string(systemd_file("guardline.service")).unwrap();
    assert_eq!(
        unit.matches(EXEC_START).count(),
        1,
        "the unit should start the daemon with `{EXEC_START} …`"
    );
    // verify checks that ExecStart's binary exists: the same unit, pointed at this build.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("guardline.service");
    std::fs::write(
        &copy,
        unit.replace(EXEC_START, &format!("ExecStart={BIN} run")),
    )
    .unwrap();
    let out = run("systemd-analyze", &["verify".as_ref(), copy.as_os_str()]);
    let said = text(&out);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
}

#[test]
fn the_unit_is_rated_2_0_or_lower() {
    let unit = systemd_file("guardline.service");
    let out = run(
        "systemd-analyze",
        &[
            "security".as_ref(),
            "--offline=true".as_ref(),
            "--no-pager".as_ref(),
            unit.as_os_str(),
        ],
    );
    let said = text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze security ({}):\n{said}",
        out.status
    );
    // "→ Overall exposure level for guardline.service: 1.1 OK 🙂"
    let exposure: f64 = said
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for guardline.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{said}"));
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} is above {MAX_EXPOSURE}:\n{said}"
    );
}

/// The effective user id, from /proc (std has no getuid).
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// uid (or gid) of `name` in a passwd- or group-style file.
fn id_of(file: &Path, name: &str) -> u32 {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == name)
        .and_then(|f| f.get(2)?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}:\n{text}", file.display()))
}

#[test]
fn sysusers_and_tmpfiles_snippets_create_user_and_directories() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir(r.join("etc")).unwrap();
    let root_arg = format!("--root={}", r.display());

    let sysusers = systemd_file("guardline.sysusers");
    let out = run(
        "systemd-sysusers",
        &[root_arg.as_ref(), sysusers.as_os_str()],
    );
    assert!(
        out.status.success(),
        "systemd-sysusers ({}):\n{}",
        out.status,
        text(&out)
    );
    let uid = id_of(&r.join("etc/passwd"), "guardline");
    let gid = id_of(&r.join("etc/group"), "guardline");
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("guardline:")
            && l.contains(":/var/lib/guardline:")
            && l.ends_with("nologin")),
        "{passwd}"
    );

    // Creating files owned by another user needs root; the snippet's syntax is still
    // checked by the service manager when installed.
    if euid() != Some(0) {
        eprintln!("not root: the tmpfiles snippet is not applied");
        return;
    }
    let tmpfiles = systemd_file("guardline.tmpfiles");
    let out = run(
        "systemd-tmpfiles",
        &[root_arg.as_ref(), "--create".as_ref(), tmpfiles.as_os_str()],
    );
    let said = text(&out);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-tmpfiles ({}):\n{said}",
        out.status
    );
    for (dir, owner, mode) in [
        ("etc/guardline", 0, 0o750),
        ("etc/guardline/alerts", 0, 0o750),
        ("var/lib/guardline", uid, 0o750),
    ] {
        let m = std::fs::metadata(r.join(dir)).unwrap();
        assert!(m.is_dir(), "{dir}");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (owner, gid, mode),
            "{dir}: owner, group, mode"
        );
    }
}
