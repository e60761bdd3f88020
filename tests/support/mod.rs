//! Real processes on loopback for the end-to-end tests: the guardline binary (daemon and
//! simulator) and an aiosmtpd SMTP server.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_guardline");

/// The mapping of a roster feed in the simulator's (and the test servers') field names.
pub const ROSTER_MAP: &str = r#"[feeds.map]
record_id = "record_id"
household = "hh_id"
village = "village_code"
village_name = "village_name"
category = "category"
head_name = "head_name"
members = "members"
member_id = "id_number"
income_per_capita = "income_per_capita"
"#;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `f` every 200 ms until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The aiosmtpd server of tests/support/smtp_sink.py.
pub struct Smtp {
    child: Child,
    _stdin: ChildStdin,
    pub port: u16,
    pub out: PathBuf,
}

impl Smtp {
    pub fn start(dir: &Path, fail_first: u32) -> Smtp {
        Self::start_with(dir, fail_first, false)
    }

    /// With `starttls`, the server requires STARTTLS with a certificate from a new CA whose
    /// certificate it writes to `dir/ca.pem`.
    pub fn start_with(dir: &Path, fail_first: u32, starttls: bool) -> Smtp {
        let out = dir.join(format!("mail-{fail_first}.jsonl"));
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/support/smtp_sink.py"))
            .arg("--out")
            .arg(&out)
            .args(["--fail-first", &fail_first.to_string()])
            .args(["--user", "guardline", "--password", "s3cret"]);
        if starttls {
            cmd.arg("--starttls-dir").arg(dir);
        }
        let errors = std::fs::File::create(dir.join(format!("smtp-{fail_first}.log"))).unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stderr(errors)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (scripts/test installs aiosmtpd)");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| {
                panic!(
                    "SMTP sink did not start (is aiosmtpd installed? run scripts/test): {line:?}"
                )
            })
            .trim()
            .parse()
            .unwrap();
        Smtp {
            child,
            _stdin: stdin,
            port,
            out,
        }
    }

    pub fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `guardline simulate` as a child process.
pub struct Simulator {
    child: Child,
    pub addr: SocketAddr,
}

impl Simulator {
    pub fn start(seed: u64, households: u32) -> Simulator {
        Self::start_at(seed, households, "127.0.0.1:0")
    }

    /// Serving on `listen` (an address a daemon was configured with before it started).
    pub fn start_at(seed: u64, households: u32, listen: &str) -> Simulator {
        let mut child = Command::new(BIN)
            .args(["simulate", "--listen", listen, "--seed", &seed.to_string()])
            .args(["--households", &households.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut addr = None;
        for _ in 0..4 {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(rest) = line.strip_prefix("serving http://") {
                addr = rest.split('/').next().and_then(|a| a.parse().ok());
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        Simulator {
            child,
            addr: addr.expect("simulator prints its address"),
        }
    }

    pub fn planted(&self) -> serde_json::Value {
        get_json(&format!("http://{}/planted", self.addr))
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn get_text(url: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    })
}

pub fn get_json(url: &str) -> serde_json::Value {
    serde_json::from_str(&get_text(url).unwrap_or_else(|| panic!("GET {url}"))).unwrap()
}

/// `guardline run` as a child process; stderr goes to `log`.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    pub http: SocketAddr,
}

impl Daemon {
    pub fn start(config: &Path, log: &Path) -> Daemon {
        let offset = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("GUARDLINE_LOG", "info")
            .env("SMTP_PASSWORD", "s3cret")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        let log = log.to_path_buf();
        let http = wait_for(Duration::from_secs(60), "the daemon's HTTP address", || {
            let text = std::fs::read_to_string(&log).ok()?;
            let text = &text[offset as usize..];
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the daemon exited ({status}) at start:\n{text}");
            }
            text.lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("address=").nth(1))
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        });
        Daemon { child, log, http }
    }

    pub fn metrics(&self) -> String {
        get_text(&format!("http://{}/metrics", self.http)).unwrap_or_default()
    }

    /// The value of one sample line of /metrics, e.g. `guardline_feed_polls_total{feed="a",outcome="success"}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("daemon did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a child process when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// A daemon configuration for tests: the simulator's four feeds polled every 2 s, an SMTP
/// receiver with AUTH, and the file receiver.
pub fn config(dir: &Path, sim: SocketAddr, smtp_port: u16) -> PathBuf {
    let text = format!(
        r#"
[daemon]
data_dir = "{data}"
listen = "127.0.0.1:0"
rules_dir = "{rules}"
evaluation_interval = "1s"
pseudonym_key_file = "{data}/pseudonym.key"
create_pseudonym_key = true

[[feeds]]
name = "roster"
kind = "roster"
url = "http://{sim}/feeds/roster"
schedule = "*/2 * * * * *"
page_size = 250
{roster_map}
[[feeds]]
name = "wages"
department = "人社"
kind = "samples"
url = "http://{sim}/feeds/wages"
schedule = "*/2 * * * * *"
page_size = 3000
[feeds.map]
record_id = "record_id"
person = "id_number"
time = "month"
values = [{{ indicator = "wage_income", field = "amount" }}]

[[feeds]]
name = "medical"
department = "医保"
kind = "samples"
url = "http://{sim}/feeds/medical"
schedule = "*/2 * * * * *"
page_size = 500
[feeds.map]
record_id = "claim_id"
person = "id_number"
time = "settle_date"
time_format = "%Y-%m-%d"
values = [{{ indicator = "medical_oop", field = "out_of_pocket" }}, {{ indicator = "medical_total", field = "total_cost" }}]

[[feeds]]
name = "water"
kind = "intervals"
url = "http://{sim}/feeds/water"
schedule = "*/2 * * * * *"
[feeds.map]
record_id = "event_id"
village = "village_code"
interval_id = "event_id"
start = "start_time"
end = "end_time"

[[receivers]]
name = "log"
type = "file"
path = "notifications.log"

[[receivers]]
name = "mail"
type = "smtp"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
username = "guardline"
password_env = "SMTP_PASSWORD"
from = "guardline <guardline@county.test>"
to = ["operator@county.test"]
timeout = "10s"

[notify]
receivers = ["log", "mail"]
retry_initial = "1s"
retry_max = "2s"
"#,
        data = dir.join("data").display(),
        rules = repo().join("alerts").display(),
        roster_map = ROSTER_MAP,
    );
    let path = dir.join("guardline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The (rule, entity) an e-mail announces, read from its decoded body.
pub fn announced(mail: &serde_json::Value) -> (String, String) {
    let body = mail["body"].as_str().unwrap();
    let field = |prefix: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|s| s.trim().to_string())
    };
    let rule = field("预警规则：").expect("rule line");
    let entity = match (field("户编号："), field("所属乡镇："), field("数据源：")) {
        (Some(h), _, _) => format!("household/{h}"),
        (None, Some(t), _) => format!("township/{t}"),
        (None, None, Some(f)) => format!("feed/{f}"),
        (None, None, None) => {
            let v = field("所属村：").expect("village line");
            let code = v
                .rsplit('（')
                .next()
                .unwrap()
                .trim_end_matches('）')
                .to_string();
            format!("village/{code}")
        }
    };
    (rule, entity)
}

/// A port free on loopback right now, and not handed out before by this test process: the
/// listener that found it is closed at once, so the system may offer the same port again
/// (two calls in a row once gave the demo's simulator and daemon the same port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// `config/demo.toml` for a test: free ports, a data folder in `dir`, the repository's rules,
/// `households` households. Returns the file and the daemon's HTTP port.
pub fn demo_config(dir: &Path, households: u32) -> (PathBuf, u16) {
    let (sim, api) = (free_port(), free_port());
    let text = std::fs::read_to_string(repo().join("config/demo.toml"))
        .unwrap()
        .replace("127.0.0.1:18700", &format!("127.0.0.1:{sim}"))
        .replace("127.0.0.1:9187", &format!("127.0.0.1:{api}"))
        .replace(
            "../guardline-demo-data",
            &dir.join("data").display().to_string(),
        )
        .replace(
            "\"../alerts\"",
            &format!("\"{}\"", repo().join("alerts").display()),
        )
        .replace("households = 5000", &format!("households = {households}"));
    let cfg = dir.join("demo.toml");
    std::fs::write(&cfg, text).unwrap();
    (cfg, api)
}

/// `guardline run` as a bare child process (stderr appended to `log`), without waiting for
/// it to serve: for tests that kill it at any moment, start-up included.
pub fn spawn_daemon(config: &Path, log: &Path) -> KillOnDrop {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    KillOnDrop(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("GUARDLINE_LOG", "info")
            .env("SMTP_PASSWORD", "s3cret")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap(),
    )
}

/// SIGTERM to `pid` (`kill -TERM`): the daemon stops cleanly, without waiting for it.
pub fn sigterm(pid: u32) {
    signal(pid, "TERM");
}

/// SIGKILL to `pid` (`kill -KILL`): no handler runs, nothing is flushed.
pub fn sigkill(pid: u32) {
    signal(pid, "KILL");
}

/// `kill -NAME pid` (std has no signal API without unsafe code).
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// An offline `guardline` command (e.g. `report`, `backtest`): its stdout; panics with
/// stdout and stderr if it fails.
pub fn offline(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "guardline {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The rules that the four feeds of [`config`] feed.
pub const RULES_OF_FOUR_FEEDS: [&str; 7] = [
    "income_below_line",
    "wage_income_drop",
    "medical_burden",
    "medical_burden_policy_lifted",
    "medical_burden_policy_ordinary",
    "water_outage_long",
    "water_outage_spread",
];

/// The simulator's planted `cases` (or `decoys`) of the rules of the four feeds of [`config`],
/// as (rule, entity).
pub fn planted_set(sim: &Simulator, key: &str) -> std::collections::BTreeSet<(String, String)> {
    sim.planted()[key]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| RULES_OF_FOUR_FEEDS.contains(&c["rule"].as_str().unwrap()))
        .map(|c| {
            (
                c["rule"].as_str().unwrap().to_string(),
                c["entity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
