//! `guardline bench`: the province-scale measurements of BENCHMARKS.md.
//!
//! The simulator's generator makes a world of N households (24 months of wages and claims);
//! the simulator's HTTP server serves it in-process on loopback; the production poll path
//! (fetch, decode, map, join, validate, apply, commit) ingests it into a fresh store. Then:
//! full evaluation, incremental detection of 10,000 new records, and, in a separate
//! `guardline run` process on the same store, restart to ready (from the store, as after a
//! crash, and from the state snapshot the clean stop before wrote), peak memory and
//! `/metrics` scrapes. Figures are medians of `runs` runs; ingest is the median of
//! `ingest_runs` ingests of the same feeds, each into a fresh store (the last one's store is
//! the one measured after it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;

use crate::feeds::{self, FeedClient};
use crate::model::now;
use crate::notify::Outbox;
use crate::simulate;

pub struct BenchOptions {
    pub households: u32,
    pub runs: u32,
    /// Ingests of the whole world, each into a fresh store; the median is reported.
    pub ingest_runs: u32,
    pub seed: u64,
    /// Where the store and the generated configuration go (emptied first).
    pub dir: PathBuf,
    /// The demo configuration whose feeds and rules are measured.
    pub config: PathBuf,
}

/// One ingest of the whole world into a fresh store.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Ingest {
    pub seconds: f64,
    pub records_per_second: f64,
    /// Each feed's name and seconds, in the order they were polled.
    pub feeds: Vec<(String, f64)>,
    /// Records read, and of them applied as new (the rest duplicates, rejected or
    /// waiting): alike in every ingest, as each starts from an empty store.
    pub records: u64,
    pub accepted: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Figures {
    pub households: u64,
    pub villages: u64,
    pub records: u64,
    pub generate_seconds: f64,
    /// The median ingest's.
    pub ingest_seconds: f64,
    pub ingest_records_per_second: f64,
    /// Every ingest's, in the order they ran.
    pub ingests: Vec<Ingest>,
    pub evaluation_checks: u64,
    pub evaluation_seconds_median: f64,
    pub evaluation_checks_per_second: f64,
    pub alerts_firing: u64,
    pub incremental_records: u64,
    pub incremental_ms_median: f64,
    /// Of which: bytes to committed state (decode, map, join, apply, commit).
    pub incremental_ingest_ms_median: f64,
    pub incremental_alerts: u64,
    pub store_bytes: u64,
    /// After a clean stop: the working set comes from the state snapshot.
    pub restart_seconds_median: f64,
    /// After a crash: the working set comes from the last snapshot, and the keys the
    /// journal names since (one page of 10,000 records).
    pub restart_after_crash_seconds_median: f64,
    /// The changed keys those restarts read again (median).
    pub restart_after_crash_caught_up_keys: u64,
    /// Without a snapshot (removed): the working set comes from the store.
    pub restart_from_store_seconds_median: f64,
    /// The largest of all restarts, both kinds.
    pub daemon_peak_rss_bytes: u64,
    pub rss_bytes_per_household: f64,
    /// The largest of the restarts from the state snapshot (after a crash or a clean stop).
    pub daemon_peak_rss_after_clean_stop_bytes: u64,
    pub scrape_ms_median: f64,
    pub scrape_bytes: u64,
    /// mimalloc's purge delay the bench ran with (`MIMALLOC_PURGE_DELAY`, see
    /// [`ALLOCATOR_SETTINGS`]).
    pub allocator_purge_delay: String,
    /// Whether mimalloc could use transparent huge pages (`MIMALLOC_ALLOW_THP`).
    pub allocator_allow_thp: String,
    /// The machine the bench ran on, as the system describes it.
    pub machine: Machine,
    /// The machine's speed before the world is generated, and after the last restart.
    pub probe_before: Probe,
    pub probe_after: Probe,
}

/// A fixed amount of work timed on one thread: the machine's speed at the time of a bench.
/// The same code ran up to three times slower in one bench than in another (BENCHMARKS.md), on
/// every path: on another host (see [`Machine`]), or in another hour. Two benches' figures
/// compare only when their machines and probes agree.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Probe {
    /// SHA-256 (the pseudonymiser's hash) over 256 MiB: the processor.
    pub hash_mb_per_second: f64,
    /// Copying 256 MiB from one buffer to another, 16 times: the memory's bandwidth.
    pub copy_gb_per_second: f64,
    /// Reads that each depend on the one before, at random over 128 MiB: the memory's
    /// latency, which the working set's lookups of households and persons wait on.
    pub random_read_ns: f64,
}

/// The machine a bench ran on, read at its start from `/proc` (and the processors this
/// process may use). The benches of BENCHMARKS.md ran on virtual machines of different
/// hosts: 2 cores of an Intel Xeon in its first runs, 2 cores of an AMD EPYC in runs BI to
/// BM, where the same code ingested at about half the rate. A table that does not say which
/// cannot be compared with another.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Machine {
    /// The processor's name (`model name`); a hypervisor may report only the brand.
    pub cpu: String,
    /// Vendor, family, model and stepping, which tell apart processors of one name: an AMD
    /// family 25 model 1 is a third-generation EPYC (Milan). On ARM, the implementer,
    /// architecture, variant, part and revision.
    pub cpu_id: String,
    /// The clock the system reports for the first processor, in MHz, where it reports one.
    pub cpu_mhz: Option<f64>,
    /// Processors this process may run on (its affinity and CPU quota).
    pub cpus: u32,
    /// The memory the system has (`MemTotal`).
    pub memory_bytes: u64,
    /// Linux's release.
    pub kernel: String,
    /// Whether the processor reports that it runs under a hypervisor (its `hypervisor` flag);
    /// unknown where `/proc/cpuinfo` lists no flags (ARM).
    pub virtual_machine: Option<bool>,
}

impl Machine {
    /// This machine; what `/proc` does not tell stays empty.
    pub fn here() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
        Machine::from_proc(
            &read("/proc/cpuinfo"),
            &read("/proc/meminfo"),
            read("/proc/sys/kernel/osrelease").trim(),
            cpus,
        )
    }

    /// The description from the texts of `/proc/cpuinfo` (its first processor) and
    /// `/proc/meminfo`.
    fn from_proc(cpuinfo: &str, meminfo: &str, kernel: &str, cpus: u32) -> Machine {
        let first = cpuinfo.split("\n\n").next().unwrap_or_default();
        let field = |name: &str| {
            first
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let id_of = |parts: &[(&str, &str)]| {
            parts
                .iter()
                .filter_map(|(label, name)| {
                    let v = field(name);
                    (!v.is_empty()).then(|| format!("{label}{v}"))
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut cpu_id = id_of(&[
            ("", "vendor_id"),
            ("family ", "cpu family"),
            ("model ", "model"),
            ("stepping ", "stepping"),
        ]);
        if cpu_id.is_empty() {
            cpu_id = id_of(&[
                ("implementer ", "CPU implementer"),
                ("architecture ", "CPU architecture"),
                ("variant ", "CPU variant"),
                ("part ", "CPU part"),
                ("revision ", "CPU revision"),
            ]);
        }
        let flags = field("flags");
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        Machine {
            cpu: field("model name"),
            cpu_id,
            cpu_mhz: field("cpu MHz").parse().ok(),
            cpus,
            memory_bytes,
            kernel: kernel.to_string(),
            virtual_machine: (!flags.is_empty())
                .then(|| flags.split_whitespace().any(|f| f == "hypervisor")),
        }
    }

    /// One line for the table and the bench's output.
    pub fn describe(&self) -> String {
        let or = |v: &str, none: &str| {
            if v.is_empty() {
                none.to_string()
            } else {
                v.to_string()
            }
        };
        let clock = self
            .cpu_mhz
            .map_or("clock unknown".to_string(), |m| format!("{m:.0} MHz"));
        let host = match self.virtual_machine {
            Some(true) => " of a virtual machine",
            Some(false) => " (no hypervisor reported)",
            None => " (virtual or not: unknown)",
        };
        format!(
            "{} ({}, {clock}), {} processor{}{host}, {:.1} GiB, Linux {}",
            or(&self.cpu, "unknown processor"),
            or(&self.cpu_id, "no id"),
            self.cpus,
            if self.cpus == 1 { "" } else { "s" },
            self.memory_bytes as f64 / f64::from(1u32 << 30),
            or(&self.kernel, "unknown"),
        )
    }
}

/// Times the [`Probe`]'s work.
pub fn probe() -> Probe {
    probe_of(256 << 20, 16)
}

fn probe_of(bytes: usize, copies: u32) -> Probe {
    use sha2::Digest;
    let from = vec![0x5a_u8; bytes];
    let began = Instant::now();
    std::hint::black_box(sha2::Sha256::digest(&from));
    let hash_mb_per_second = bytes as f64 / 1e6 / began.elapsed().as_secs_f64();
    // Both buffers written once before the clock starts: the copies time the memory, not the
    // system's first touch of fresh pages.
    let mut to = vec![0_u8; bytes];
    to.copy_from_slice(&from);
    let began = Instant::now();
    for _ in 0..copies {
        to.copy_from_slice(std::hint::black_box(&from));
        std::hint::black_box(&mut to);
    }
    let copy_gb_per_second = bytes as f64 * f64::from(copies) / 1e9 / began.elapsed().as_secs_f64();
    drop((from, to));
    // One cycle through every slot in a random order (Sattolo's shuffle, from xorshift64:
    // the same cycle at every bench), then 2 Mi steps along it.
    let slots = bytes / 16;
    let mut next: Vec<u64> = (0..slots as u64).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..slots).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        next.swap(i, (x % i as u64) as usize);
    }
    const STEPS: u32 = 2 << 20;
    let began = Instant::now();
    let mut at = 0_u64;
    for _ in 0..STEPS {
        at = next[at as usize];
    }
    std::hint::black_box(at);
    let random_read_ns = began.elapsed().as_secs_f64() * 1e9 / f64::from(STEPS);
    Probe {
        hash_mb_per_second,
        copy_gb_per_second,
        random_read_ns,
    }
}

/// The allocator settings of the shipped systemd unit. The bench measures guardline as it
/// ships: without one of the variables it runs itself again with them. Set to another value,
/// the bench process (ingest, evaluation, incremental detection) runs with it and reports it;
/// the daemons it starts for the restarts, their memory and scrapes always run with these.
/// - mimalloc keeps the pages it frees instead of handing them back to the system a second
///   later. sled copies and frees B-tree nodes at a high rate; the kernel took a sixth of
///   the bench's CPU time during ingest, most of it faulting in and zeroing fresh pages.
///   With the pages kept, ingest was 20 % faster at 600,000 households (BENCHMARKS.md).
/// - mimalloc uses no transparent huge pages: with them, each 2 MiB its arenas touched was
///   resident whole, 43 MiB for a daemon on an empty store and about 75 MiB more at a
///   start of 600,000 households, with no time gained (BENCHMARKS.md). The build leaves out
///   mimalloc's request for them (its `no_thp` feature); the variable also turns them off
///   where the system gives them unasked (`always`).
pub const ALLOCATOR_SETTINGS: [(&str, &str); 2] =
    [("MIMALLOC_PURGE_DELAY", "-1"), ("MIMALLOC_ALLOW_THP", "0")];

/// Polls every feed of `cfg` to its end through `sink`, the roster's feed first.
async fn ingest_all(
    cfg: &crate::config::Config,
    sink: &crate::daemon::EngineSink,
    metrics: &Arc<crate::metrics::Metrics>,
    pseudo: &crate::pseudonym::Pseudonymizer,
) -> anyhow::Result<Ingest> {
    let mut ordered: Vec<&crate::config::FeedConfig> = cfg.feeds.iter().collect();
    ordered.sort_by_key(|feed| !feed.inputs().contains(&crate::rules::Input::Roster));
    eprintln!("ingesting {} feeds …", ordered.len());
    let mut ingest = Ingest::default();
    let began = Instant::now();
    for feed in ordered {
        let client = FeedClient::build(feed, Arc::clone(metrics))?;
        let t = Instant::now();
        let (counts, caught_up) = feeds::poll(feed, &client, pseudo, sink)
            .await
            .with_context(|| format!("polling feed {}", feed.name))?;
        if !caught_up {
            bail!("feed {} did not catch up in one poll", feed.name);
        }
        let n = counts.accepted + counts.duplicate + counts.rejected + counts.waiting;
        let seconds = t.elapsed().as_secs_f64();
        eprintln!(
            "  {:<14} {:>10} records in {:>7.2} s ({} rejected, {} waiting)",
            feed.name, n, seconds, counts.rejected, counts.waiting
        );
        sink.engine.lock().await.poll_finished(&feed.name, true);
        ingest.feeds.push((feed.name.clone(), seconds));
        ingest.accepted += counts.accepted;
        ingest.records += n;
    }
    ingest.seconds = began.elapsed().as_secs_f64();
    ingest.records_per_second = ingest.records as f64 / ingest.seconds;
    Ok(ingest)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The demo configuration the bench rewrites, and the rules folder beside it: read before
/// anything is generated, so that a bench started where they are not fails at once.
struct Template {
    text: String,
    rules: PathBuf,
}

impl Template {
    fn read(opts: &BenchOptions) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&opts.config).with_context(|| {
            format!(
                "reading {} (run from the repository root)",
                opts.config.display()
            )
        })?;
        let base = opts
            .config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let rules = std::fs::canonicalize(base.join("../alerts")).with_context(|| {
            format!("finding the rules folder next to {}", opts.config.display())
        })?;
        Ok(Template { text, rules })
    }
}

/// The demo configuration rewritten for the bench: the in-process simulator's address, a
/// daemon port, the bench's data folder, absolute rules folder, no page limits.
fn write_config(
    opts: &BenchOptions,
    template: &Template,
    sim: std::net::SocketAddr,
    listen: u16,
) -> anyhow::Result<PathBuf> {
    let rules = &template.rules;
    let data = std::fs::canonicalize(&opts.dir)?;
    let text = template
        .text
        .replace("127.0.0.1:18700", &sim.to_string())
        .replace("127.0.0.1:9187", &format!("127.0.0.1:{listen}"))
        .replace(
            "\"../guardline-demo-data/pseudonym.key\"",
            &format!("\"{}\"", data.join("pseudonym.key").display()),
        )
        .replace(
            "\"../guardline-demo-data\"",
            &format!("\"{}\"", data.join("data").display()),
        )
        .replace("\"../alerts\"", &format!("\"{}\"", rules.display()))
        // Province-scale feeds are larger than a poll's default limits.
        .replace(
            "[[feeds]]\n",
            "[[feeds]]\nmax_records_per_poll = 1000000000\nmax_pages_per_poll = 1000000\n",
        )
        // The restart measurement polls rarely: it measures the store, not the feeds.
        .replace(
            "schedule = \"*/20 * * * * *\"",
            "schedule = \"0 0 3 * * *\"",
        );
    let path = opts.dir.join("bench.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The disk a bench of `households` fills: about 6 GB per million households, and 1 GB
/// besides. Measured (BENCHMARKS.md): the folder peaked at 4.6 GB at 1,000,000 households
/// and 1.0 GB at 200,000 (the feeds 3.1 GB per million, the store 0.8 GB, the state
/// snapshot and its next copy while it is written); the rest is room for a base of the
/// months written beside the last and for sled's log between its cleanings.
fn disk_needed(households: u32) -> u64 {
    u64::from(households) * 6_000 + 1_000_000_000
}

/// Bytes free for an unprivileged user on the file system of `dir`, from `df` (std has no
/// statvfs without unsafe code); `None` if `df` cannot tell.
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-Pk", "--"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    // POSIX format: a header, then `filesystem 1024-blocks used available capacity mount`.
    let kb: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, usize)> {
    let r = client.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    let body = r.bytes().await.ok()?;
    Some((status, body.len()))
}

pub async fn run(opts: &BenchOptions) -> anyhow::Result<Figures> {
    let template = Template::read(opts)?;
    // A run that fills the disk half-way wastes an hour and starves the machine: checked
    // before the folder is emptied, counting what emptying it frees.
    std::fs::create_dir_all(&opts.dir)?;
    let needed = disk_needed(opts.households);
    if let Some(free) = free_bytes(&opts.dir).map(|f| f + dir_size(&opts.dir))
        && free < needed
    {
        bail!(
            "{} has {:.1} GB free, and {} households need about {:.1} GB: free space, or choose --dir elsewhere",
            opts.dir.display(),
            free as f64 / 1e9,
            opts.households,
            needed as f64 / 1e9
        );
    }
    std::fs::remove_dir_all(&opts.dir)
        .with_context(|| format!("emptying {}", opts.dir.display()))?;
    std::fs::create_dir_all(&opts.dir)?;
    let mut f = Figures {
        households: u64::from(opts.households),
        allocator_purge_delay: std::env::var(ALLOCATOR_SETTINGS[0].0).unwrap_or_default(),
        allocator_allow_thp: std::env::var(ALLOCATOR_SETTINGS[1].0).unwrap_or_default(),
        ..Figures::default()
    };

    f.machine = Machine::here();
    eprintln!("machine: {}", f.machine.describe());
    f.probe_before = probe();
    eprintln!(
        "machine probe: SHA-256 {:.0} MB/s, copies {:.1} GB/s, random reads {:.0} ns",
        f.probe_before.hash_mb_per_second,
        f.probe_before.copy_gb_per_second,
        f.probe_before.random_read_ns
    );
    eprintln!("generating {} households …", opts.households);
    let began = Instant::now();
    let mut sim_opts = crate::commands::sim_options(opts.seed, opts.households, None);
    // The feeds' records go to files: at millions of households they do not fit in memory
    // next to the engine.
    sim_opts.spill = Some(opts.dir.join("world"));
    let world = Arc::new(simulate::generate(&sim_opts).context("generating the province")?);
    f.generate_seconds = began.elapsed().as_secs_f64();
    f.villages = world.villages as u64;
    // Earners for the incremental pages: 10,000 distinct ones per run where there are enough.
    let wanted = 10_000 * opts.runs.max(1) as usize;
    let mut earners = std::collections::BTreeSet::new();
    world.wages.each(|r| {
        if let Some(id) = r["id_number"].as_str() {
            earners.insert(id.to_string());
        }
        earners.len() < wanted
    })?;
    let wages_sample: Vec<String> = earners.into_iter().collect();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sim_stop = stop_rx.clone();
    let (sim, sim_task) = simulate::serve(Arc::clone(&world), "127.0.0.1:0".parse()?, async move {
        let _ = sim_stop.wait_for(|v| *v).await;
    })
    .await?;
    // The feed server runs until the bench's end; one ending before would fail an ingest
    // with "connection refused" and nothing else to go on.
    let mut supervisor = crate::supervise::Supervisor::default();
    let _sim_task = supervisor.watch("the bench's feed server", sim_task);
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config_path = write_config(opts, &template, sim, listen)?;
    let (cfg, rules) = crate::commands::load(&config_path)?;
    let n_rules = rules.rules.len() as u64;

    // Ingest through the production poll path, roster first, `ingest_runs` times: each
    // into a fresh store (the one before deleted), the last one's kept for what follows.
    let pseudo = crate::daemon::pseudonymizer(&cfg)?;
    let ingest_runs = opts.ingest_runs.max(1);
    let mut kept = None;
    for run in 0..ingest_runs {
        if run > 0 {
            std::fs::remove_dir_all(&cfg.daemon.data_dir).with_context(|| {
                format!(
                    "removing {} before ingest {}",
                    cfg.daemon.data_dir.display(),
                    run + 1
                )
            })?;
        }
        let (cfg, rules) = crate::commands::load(&config_path)?;
        let outbox = Arc::new(std::sync::Mutex::new(Outbox::default()));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let (mut engine, store) = crate::commands::open_engine(
            &cfg,
            rules,
            Arc::clone(&outbox),
            Arc::clone(&metrics),
            None,
        )?;
        engine.set_feeds(&cfg.feeds);
        let sink = crate::daemon::EngineSink {
            engine: Arc::new(tokio::sync::Mutex::new(engine)),
            store,
        };
        eprintln!("ingest {} of {ingest_runs}:", run + 1);
        let ingest = ingest_all(&cfg, &sink, &metrics, &pseudo)
            .await
            .with_context(|| match supervisor.try_next_end() {
                Some(ended) => format!("ingest {}: {ended} during it", run + 1),
                None => format!("ingest {} (the feed server still runs)", run + 1),
            })?;
        if let Some(first) = f.ingests.first()
            && (ingest.records != first.records || ingest.accepted != first.accepted)
        {
            bail!(
                "ingest {} read {} records and applied {} as new, where the first read {} and applied {}: \
                 each ingest must read the same feeds into an empty store; is another bench or daemon using {}?",
                run + 1,
                ingest.records,
                ingest.accepted,
                first.records,
                first.accepted,
                opts.dir.display()
            );
        }
        f.records = ingest.records;
        f.ingests.push(ingest);
        if run + 1 == ingest_runs {
            kept = Some((sink, outbox));
        }
        // Otherwise the engine is dropped here: it waits for a base still being written
        // before the store closes.
    }
    let Some((sink, outbox)) = kept else {
        bail!("no ingest ran");
    };
    f.ingest_seconds = median(f.ingests.iter().map(|i| i.seconds).collect());
    f.ingest_records_per_second = f.records as f64 / f.ingest_seconds;

    // Full evaluation (after a reload): every rule on every household and place.
    let mut engine = sink.engine.lock().await;
    let mut times = Vec::new();
    for run in 0..opts.runs.max(1) {
        let t = Instant::now();
        let report = engine.evaluate_all(now())?;
        times.push(t.elapsed().as_secs_f64());
        if run == 0 {
            f.evaluation_checks = report.checks;
        }
    }
    f.evaluation_seconds_median = median(times);
    f.evaluation_checks_per_second = f.evaluation_checks as f64 / f.evaluation_seconds_median;
    f.alerts_firing = engine.alerts().firing_households().len() as u64;
    eprintln!(
        "  full evaluation: {} checks ({} rules) in {:.2} s",
        f.evaluation_checks, n_rules, f.evaluation_seconds_median
    );

    // Incremental: a page of 10,000 new wage records (this month; one in ten a collapse),
    // from bytes to notifications in the outbox.
    let wages = cfg
        .feeds
        .iter()
        .find(|feed| feed.name == "wages")
        .context("the bench needs the demo's `wages` feed")?;
    let month = crate::model::Month::of(now());
    let mut times = Vec::new();
    let mut ingest_times = Vec::new();
    for run in 0..opts.runs.max(1) as usize {
        let body = wage_page(&wages_sample, &format!("BENCH{run}"), run * 10_000, month)?;
        let before = outbox.lock().map(|o| o.len()).unwrap_or(0);
        let t = Instant::now();
        let text = feeds::decode::to_text(body, wages.encoding, "bench")?;
        let decoded = feeds::decode::decode(&text, wages, "bench")?;
        let mapped = feeds::map_page(wages, decoded.records, &pseudo);
        engine.ingest(wages, mapped, now(), None)?;
        ingest_times.push(t.elapsed().as_secs_f64() * 1000.0);
        engine.evaluate_touched(now())?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let after = outbox.lock().map(|o| o.len()).unwrap_or(0);
        f.incremental_alerts += (after - before) as u64;
        f.incremental_records += 10_000;
    }
    f.incremental_ms_median = median(times);
    f.incremental_ingest_ms_median = median(ingest_times);
    drop(engine);
    drop(sink);
    f.store_bytes = dir_size(&cfg.daemon.data_dir);

    // Restart: `guardline run` on the store, to /readyz; its peak memory; /metrics scrapes.
    // Each run starts three times:
    // 1. from the store (its snapshot removed first); it writes a snapshot at its first
    //    tick, and is killed (SIGKILL) once that is in place;
    // 2. as after a crash: the bench's own engine, opened from that snapshot, commits a
    //    page of 10,000 new wage records first, so that the start reads the snapshot and
    //    the keys the journal names since; stopped cleanly (SIGTERM), writing a snapshot;
    // 3. after that clean stop: from the current snapshot.
    let exe = std::env::current_exe()
        .context("cannot find this program's own executable to start the daemons")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = format!("http://127.0.0.1:{listen}");
    let mut restarts = Vec::new();
    let mut cold_restarts = Vec::new();
    let mut journal_restarts = Vec::new();
    let mut caught_up_keys = Vec::new();
    let mut scrapes = Vec::new();
    let snapshot = crate::state::snapshot::path_in(&cfg.daemon.data_dir);
    for run in 0..3 * opts.runs.max(1) {
        let kind = run % 3;
        let cold = kind == 0;
        if cold {
            match std::fs::remove_file(&snapshot) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    bail!("removing {}: {e}", snapshot.display())
                }
                _ => {}
            }
        }
        if kind == 1 {
            let (cfg, rules) = crate::commands::load(&config_path)?;
            let (mut engine, _store) = crate::commands::open_engine(
                &cfg,
                rules,
                Arc::new(std::sync::Mutex::new(Outbox::default())),
                Arc::new(crate::metrics::Metrics::new()),
                Some(snapshot.clone()),
            )?;
            let skip = (opts.runs.max(1) + run) as usize * 10_000;
            let body = wage_page(&wages_sample, &format!("CRASH{run}"), skip, month)?;
            let text = feeds::decode::to_text(body, wages.encoding, "bench")?;
            let decoded = feeds::decode::decode(&text, wages, "bench")?;
            let mapped = feeds::map_page(wages, decoded.records, &pseudo);
            engine.ingest(wages, mapped, now(), None)?;
            engine.evaluate_touched(now())?;
        }
        let log_path = opts.dir.join(format!("daemon-{run}.log"));
        let t = Instant::now();
        let mut child = std::process::Command::new(&exe)
            .args(["run", "--config"])
            .arg(&config_path)
            // The daemon as it ships, whatever the bench process itself runs with.
            .envs(ALLOCATOR_SETTINGS)
            .env(
                "GUARDLINE_LOG",
                "warn,guardline::state::snapshot=info,guardline::daemon=debug",
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).with_context(|| {
                format!("cannot create the daemon's log {}", log_path.display())
            })?)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start the daemon {} (was it rebuilt or removed while the bench ran? \
                     `cargo build` and `cargo test --release` replace it: run the bench from a \
                     binary nothing rebuilds meanwhile)",
                    exe.display()
                )
            })?;
        let ready = loop {
            if let Some((200, _)) = get(&http, &format!("{base}/readyz")).await {
                break true;
            }
            if child.try_wait()?.is_some() || t.elapsed() > Duration::from_secs(600) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if !ready {
            let _ = child.kill();
            bail!(
                "the daemon did not become ready; see {}",
                log_path.display()
            );
        }
        let elapsed = t.elapsed().as_secs_f64();
        let log = std::fs::read_to_string(&log_path)?;
        let used_line = log
            .lines()
            .find(|l| l.contains("working set loaded from the state snapshot"));
        let used = used_line.is_some();
        if used == cold {
            let _ = child.kill();
            bail!(
                "the restart {} the state snapshot, where it should {}; see {}",
                if used { "used" } else { "did not use" },
                if cold { "load the store" } else { "read it" },
                log_path.display()
            );
        }
        match kind {
            0 => cold_restarts.push(elapsed),
            1 => {
                let keys = used_line
                    .and_then(|l| l.split("caught_up=").nth(1))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                if keys == 0 {
                    let _ = child.kill();
                    bail!(
                        "the restart after a page of records read no changes from the journal; see {}",
                        log_path.display()
                    );
                }
                caught_up_keys.push(keys as f64);
                journal_restarts.push(elapsed);
            }
            _ => restarts.push(elapsed),
        }
        for _ in 0..5 {
            let t = Instant::now();
            if let Some((200, n)) = get(&http, &format!("{base}/metrics")).await {
                scrapes.push(t.elapsed().as_secs_f64() * 1000.0);
                f.scrape_bytes = n as u64;
            }
        }
        let rss = peak_rss(child.id()).unwrap_or(0);
        f.daemon_peak_rss_bytes = f.daemon_peak_rss_bytes.max(rss);
        if !cold {
            f.daemon_peak_rss_after_clean_stop_bytes =
                f.daemon_peak_rss_after_clean_stop_bytes.max(rss);
        }
        if cold {
            // The snapshot of its first tick, and the journal it covers forgotten (the
            // bench's ingest wrote one entry per page).
            let t = Instant::now();
            while !std::fs::read_to_string(&log_path)?
                .contains("state journal entries covered by the snapshot forgotten")
            {
                if child.try_wait()?.is_some() || t.elapsed() > Duration::from_secs(600) {
                    let _ = child.kill();
                    bail!(
                        "the daemon wrote no state snapshot after loading the store; see {}",
                        log_path.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            child.kill()?;
        } else {
            // SIGTERM through the shell's kill: std has no signal API without unsafe.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    }
    f.restart_seconds_median = median(restarts);
    f.restart_from_store_seconds_median = median(cold_restarts);
    f.restart_after_crash_seconds_median = median(journal_restarts);
    f.restart_after_crash_caught_up_keys = median(caught_up_keys) as u64;
    f.scrape_ms_median = median(scrapes);
    f.probe_after = probe();
    f.rss_bytes_per_household = f.daemon_peak_rss_bytes as f64 / f64::from(opts.households.max(1));
    let _ = stop_tx.send(true);
    Ok(f)
}

/// A page of 10,000 wage records of `month` for the earners of `sample` from `skip` on, one
/// in ten a collapse, as the wages feed serves them.
fn wage_page(
    sample: &[String],
    prefix: &str,
    skip: usize,
    month: crate::model::Month,
) -> anyhow::Result<Vec<u8>> {
    let page: Vec<serde_json::Value> = sample
        .iter()
        .cycle()
        .skip(skip)
        .take(10_000)
        .enumerate()
        .map(|(i, id)| {
            let amount = if i % 10 == 0 { 100 } else { 3_200 };
            json!({"record_id": format!("{prefix}-{i}"), "id_number": id,
                   "month": month.to_string(), "amount": amount})
        })
        .collect();
    Ok(serde_json::to_vec(&json!({ "records": page }))?)
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    };
    rd.filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                dir_size(&path)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// The figures as the table of BENCHMARKS.md.
pub fn table(f: &Figures) -> String {
    let mut out = String::new();
    let mut row = |what: &str, value: String, target: &str| {
        out.push_str(&format!("| {what} | {value} | {target} |\n"));
    };
    row(
        "households / villages",
        format!("{} / {}", f.households, f.villages),
        "",
    );
    row("records ingested", f.records.to_string(), "");
    row("machine", f.machine.describe(), "");
    row(
        "mimalloc purge delay (`MIMALLOC_PURGE_DELAY`)",
        f.allocator_purge_delay.clone(),
        "",
    );
    row(
        "mimalloc transparent huge pages (`MIMALLOC_ALLOW_THP`)",
        f.allocator_allow_thp.clone(),
        "",
    );
    row(
        "machine probe: SHA-256 over 256 MiB; copies of 256 MiB; random reads over 128 MiB (before / after)",
        format!(
            "{:.0} / {:.0} MB/s; {:.1} / {:.1} GB/s; {:.0} / {:.0} ns",
            f.probe_before.hash_mb_per_second,
            f.probe_after.hash_mb_per_second,
            f.probe_before.copy_gb_per_second,
            f.probe_after.copy_gb_per_second,
            f.probe_before.random_read_ns,
            f.probe_after.random_read_ns
        ),
        "",
    );
    let rates: Vec<String> = f
        .ingests
        .iter()
        .map(|i| format!("{:.0}", i.records_per_second))
        .collect();
    let of = match f.ingests.len() {
        0 | 1 => "one ingest".to_string(),
        n => format!("the median of {n} ingests: {} records/s", rates.join(", ")),
    };
    row(
        "ingest",
        format!(
            "{:.0} records/s ({:.1} s; {of})",
            f.ingest_records_per_second, f.ingest_seconds
        ),
        "≥ 500,000/s",
    );
    row(
        "incremental: 10,000 records to outbox",
        format!(
            "{:.0} ms, of which ingest {:.0} ms ({} notifications)",
            f.incremental_ms_median, f.incremental_ingest_ms_median, f.incremental_alerts
        ),
        "≤ 200 ms",
    );
    row(
        "full evaluation",
        format!(
            "{:.0} checks/s ({} checks in {:.2} s)",
            f.evaluation_checks_per_second, f.evaluation_checks, f.evaluation_seconds_median
        ),
        "≥ 1,000,000/s",
    );
    row(
        "peak RSS per household",
        format!(
            "{:.0} B ({:.0} MiB)",
            f.rss_bytes_per_household,
            f.daemon_peak_rss_bytes as f64 / 1_048_576.0
        ),
        "≤ 1 KB",
    );
    row(
        "peak RSS per household, restarts from the state snapshot",
        format!(
            "{:.0} B ({:.0} MiB)",
            f.daemon_peak_rss_after_clean_stop_bytes as f64 / f.households.max(1) as f64,
            f.daemon_peak_rss_after_clean_stop_bytes as f64 / 1_048_576.0
        ),
        "",
    );
    row(
        "restart to ready, after a clean stop (state snapshot)",
        format!("{:.2} s", f.restart_seconds_median),
        "≤ 5 s",
    );
    row(
        "restart to ready, after a crash (snapshot and journal)",
        format!(
            "{:.2} s ({} changed keys read again)",
            f.restart_after_crash_seconds_median, f.restart_after_crash_caught_up_keys
        ),
        "≤ 5 s",
    );
    row(
        "restart to ready, without a snapshot (the store)",
        format!("{:.2} s", f.restart_from_store_seconds_median),
        "",
    );
    row(
        "/metrics scrape",
        format!("{:.1} ms ({} bytes)", f.scrape_ms_median, f.scrape_bytes),
        "≤ 20 ms",
    );
    row(
        "firing household alerts after the full evaluation",
        f.alerts_firing.to_string(),
        "",
    );
    row(
        "store on disk",
        format!("{:.0} MiB", f.store_bytes as f64 / 1_048_576.0),
        "",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_times_its_work_and_the_table_shows_it() {
        // An eighth of the bench's probe: a debug build shuffles slowly.
        let p = probe_of(32 << 20, 2);
        assert!(p.hash_mb_per_second.is_finite() && p.hash_mb_per_second > 0.0);
        assert!(p.copy_gb_per_second.is_finite() && p.copy_gb_per_second > 0.0);
        assert!(p.random_read_ns.is_finite() && p.random_read_ns > 0.0);
        let f = Figures {
            probe_before: p,
            probe_after: Probe {
                hash_mb_per_second: 123.4,
                copy_gb_per_second: 5.678,
                random_read_ns: 91.5,
            },
            ..Figures::default()
        };
        let table = table(&f);
        let row = table
            .lines()
            .find(|l| l.starts_with("| machine probe"))
            .expect("a probe row");
        assert!(
            row.contains(" / 123 MB/s; ")
                && row.contains(" / 5.7 GB/s; ")
                && row.ends_with(" / 92 ns |  |"),
            "{row}"
        );
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["probe_after"]["copy_gb_per_second"], 5.678);
    }

    #[test]
    fn the_machine_is_read_from_the_first_processor_and_the_memory_total() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\
            model\t\t: 1\nmodel name\t: AMD EPYC\nstepping\t: 1\ncpu MHz\t\t: 2445.406\n\
            flags\t\t: fpu sse2 hypervisor avx2\n\n\
            processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Other\ncpu MHz\t\t: 1.0\n";
        let meminfo = "MemFree:        1024 kB\nMemTotal:       24683584 kB\n";
        let m = Machine::from_proc(cpuinfo, meminfo, "6.18.44", 2);
        assert_eq!(
            m,
            Machine {
                cpu: "AMD EPYC".into(),
                cpu_id: "AuthenticAMD family 25 model 1 stepping 1".into(),
                cpu_mhz: Some(2445.406),
                cpus: 2,
                memory_bytes: 24_683_584 * 1024,
                kernel: "6.18.44".into(),
                virtual_machine: Some(true),
            }
        );
        assert_eq!(
            m.describe(),
            "AMD EPYC (AuthenticAMD family 25 model 1 stepping 1, 2445 MHz), \
             2 processors of a virtual machine, 23.5 GiB, Linux 6.18.44"
        );
        // ARM lists its processor by implementer and part, with neither clock nor flags.
        let arm = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd\n\
            CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\n\
            CPU part\t: 0xd0c\nCPU revision\t: 1\n";
        let on_arm = Machine::from_proc(arm, "MemTotal: 1048576 kB\n", "6.1.0", 4);
        assert_eq!(
            on_arm.describe(),
            "unknown processor (implementer 0x41 architecture 8 variant 0x1 part 0xd0c \
             revision 1, clock unknown), 4 processors (virtual or not: unknown), 1.0 GiB, \
             Linux 6.1.0"
        );
        // A system without the files gives an honest blank.
        let none = Machine::from_proc("", "", "", 1);
        assert_eq!(none.virtual_machine, None);
        assert_eq!(
            none.describe(),
            "unknown processor (no id, clock unknown), 1 processor (virtual or not: unknown), \
             0.0 GiB, Linux unknown"
        );
        let bare = Machine::from_proc("flags\t\t: fpu sse2\n", "", "", 2);
        assert_eq!(bare.virtual_machine, Some(false));
        let f = Figures {
            machine: m,
            ..Figures::default()
        };
        assert!(
            table(&f).contains("| machine | AMD EPYC (AuthenticAMD family 25 model 1 stepping 1"),
            "{}",
            table(&f)
        );
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(
            json["machine"]["cpu_id"],
            "AuthenticAMD family 25 model 1 stepping 1"
        );
        assert_eq!(json["machine"]["virtual_machine"], true);
    }

    /// Runs a bench of `households` with `config` in a folder holding an earlier run's file;
    /// it must fail. Its error (with its causes), and the folder afterwards.
    fn refused(households: u32, config: PathBuf) -> (String, Vec<std::ffi::OsString>) {
        let dir = tempfile::tempdir().unwrap();
        let opts = BenchOptions {
            households,
            runs: 1,
            ingest_runs: 1,
            seed: 1,
            dir: dir.path().join("bench"),
            config,
        };
        std::fs::create_dir_all(&opts.dir).unwrap();
        std::fs::write(opts.dir.join("an earlier run"), b"kept").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = format!("{:#}", rt.block_on(run(&opts)).unwrap_err());
        let left = std::fs::read_dir(&opts.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        (err, left)
    }

    #[test]
    fn a_bench_started_away_from_its_configuration_fails_before_it_generates_anything() {
        let (err, left) = refused(3_000, PathBuf::from("config/demo.toml.missing"));
        assert!(
            err.contains("reading config/demo.toml.missing (run from the repository root)"),
            "{err}"
        );
        assert_eq!(
            left,
            ["an earlier run"],
            "nothing generated, nothing emptied"
        );
    }

    #[test]
    fn a_bench_the_disk_cannot_hold_is_refused_before_it_generates_anything() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).expect("df reports the temporary folder");
        assert!(free > 0);
        assert_eq!(disk_needed(3_000_000), 19_000_000_000);
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
        let (err, left) = refused(u32::MAX, config);
        assert!(err.contains("GB free"), "{err}");
        assert!(
            err.contains("free space, or choose --dir elsewhere"),
            "{err}"
        );
        assert_eq!(
            left,
            ["an earlier run"],
            "nothing generated, and the earlier run's folder kept"
        );
    }
}
