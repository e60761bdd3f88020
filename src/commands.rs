//! The subcommands behind the CLI: check, run, simulate, demo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::NaiveDate;

use crate::config::{Config, ReceiverConfig};
use crate::daemon;
use crate::rules::RuleSet;
use crate::simulate::{self, SimOptions};

/// Loads and validates the configuration and its rules; every problem is in the error.
pub fn load(config: &Path) -> anyhow::Result<(Config, RuleSet)> {
    let cfg = Config::load(config).map_err(|p| anyhow::anyhow!("{p}"))?;
    let mut rules = RuleSet::load_dir(&cfg.daemon.rules_dir).map_err(|p| anyhow::anyhow!("{p}"))?;
    let missing = rules.check_lines(&cfg.lines);
    if !missing.is_empty() {
        bail!("{}", missing.join("\n"));
    }
    rules.set_language(cfg.daemon.language);
    Ok((cfg, rules))
}

/// `guardline check`: validates config, rules and secrets; prints a summary.
pub fn check(config: &Path) -> anyhow::Result<String> {
    let (cfg, rules) = load(config)?;
    let mut problems = Vec::new();
    for r in &cfg.receivers {
        if let ReceiverConfig::Smtp(s) = r
            && let Some(p) = &s.password
            && let Err(e) = p.read()
        {
            problems.push(format!(
                "{}: receiver {}: password: {e}",
                cfg.file.display(),
                s.name
            ));
        }
    }
    if let Some(t) = &cfg.daemon.tokens_file
        && let Err(e) = crate::api::auth::Tokens::load(t)
    {
        problems.push(e.to_string());
    }
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    for f in &cfg.feeds {
        // Building the client reads the feed's secret and CA file, as the daemon will.
        if let Err(e) = crate::feeds::FeedClient::build(f, std::sync::Arc::clone(&metrics)) {
            problems.push(format!("{}: {e}", cfg.file.display()));
        }
        if let crate::config::FeedSource::Dir(d) = &f.source
            && !d.is_dir()
        {
            problems.push(format!(
                "{}: feed {}: dir {} is not a folder",
                cfg.file.display(),
                f.name,
                d.display()
            ));
        }
    }
    if let Some(k) = &cfg.daemon.pseudonym_key_file
        && !cfg.daemon.create_pseudonym_key
        && !k.exists()
    {
        problems.push(format!(
            "{}: daemon.pseudonym_key_file: {} does not exist",
            cfg.file.display(),
            k.display()
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let mut warnings = String::new();
    for r in &rules.rules {
        if let crate::rules::RuleKind::Absent { feed, .. } = &r.kind
            && !cfg.feeds.iter().any(|f| &f.name == feed)
        {
            warnings.push_str(&format!(
                "warning: {}: rule {} watches feed {feed:?}, which this configuration does not poll; the rule does not apply\n",
                r.file.display(),
                r.name
            ));
        }
    }
    Ok(format!(
        "{warnings}{}: ok: {} feeds, {} receivers, {} rules from {}",
        cfg.file.display(),
        cfg.feeds.len(),
        cfg.receivers.len(),
        rules.rules.len(),
        cfg.daemon.rules_dir.display()
    ))
}

/// `guardline run`.
pub async fn run(config: &Path) -> anyhow::Result<()> {
    let (cfg, rules) = load(config)?;
    daemon::run(
        config.to_path_buf(),
        cfg,
        rules,
        daemon::shutdown_on_signals(),
        None,
    )
    .await
}

pub fn sim_options(seed: u64, households: u32, as_of: Option<NaiveDate>) -> SimOptions {
    SimOptions {
        seed,
        households,
        as_of: as_of.unwrap_or_else(|| crate::model::now().date_naive()),
        spill: None,
    }
}

/// `guardline simulate`.
pub async fn simulate(
    listen: SocketAddr,
    opts: SimOptions,
    list_planted: bool,
) -> anyhow::Result<()> {
    let world = Arc::new(simulate::generate(&opts).context("generating the simulated province")?);
    if list_planted {
        let out = serde_json::json!({"cases": world.cases, "decoys": world.decoys});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut sd = daemon::shutdown_on_signals();
    let (addr, task) = simulate::serve(Arc::clone(&world), listen, async move {
        let _ = sd.wait_for(|v| *v).await;
    })
    .await
    .with_context(|| format!("binding {listen}"))?;
    println!(
        "simulator: {} households, {} wage, {} medical and {} water records; {} planted cases, {} decoys",
        world.roster.len(),
        world.wages.len(),
        world.medical.len(),
        world.water.len(),
        world.cases.len(),
        world.decoys.len()
    );
    println!(
        "serving http://{addr}/feeds/{{roster,wages,medical,water}} and http://{addr}/planted"
    );
    task.await??;
    Ok(())
}

/// `guardline demo`: the simulator and the daemon in one process.
pub async fn demo(config: &Path, fresh: bool, exit_after: Option<Duration>) -> anyhow::Result<()> {
    let (cfg, rules) = load(config).with_context(|| {
        format!(
            "loading {} (run the demo from the repository root)",
            config.display()
        )
    })?;
    let Some(sim) = cfg.simulator.clone() else {
        bail!("{}: the demo needs a [simulator] section", config.display());
    };
    if fresh && cfg.daemon.data_dir.exists() {
        std::fs::remove_dir_all(&cfg.daemon.data_dir)
            .with_context(|| format!("removing {}", cfg.daemon.data_dir.display()))?;
    }
    let opts = sim_options(sim.seed, sim.households, None);
    let world = Arc::new(simulate::generate(&opts).context("generating the simulated province")?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut signals = daemon::shutdown_on_signals();
    let stop = stop_tx.clone();
    tokio::spawn(async move {
        match exit_after {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = signals.wait_for(|v| *v) => {}
                }
            }
            None => {
                let _ = signals.wait_for(|v| *v).await;
            }
        }
        let _ = stop.send(true);
    });
    let mut sim_stop = stop_rx.clone();
    let (sim_addr, _sim_task) = simulate::serve(Arc::clone(&world), sim.listen, async move {
        let _ = sim_stop.wait_for(|v| *v).await;
    })
    .await
    .with_context(|| {
        format!(
            "binding the simulator on {} ([simulator] listen)",
            sim.listen
        )
    })?;

    let log_file: Option<PathBuf> = cfg.receivers.iter().find_map(|r| match r {
        ReceiverConfig::File { path, .. } => Some(path.clone()),
        _ => None,
    });
    println!("guardline demo — 防止返贫动态监测预警 (synthetic data only)");
    println!(
        "  simulator  http://{sim_addr}/feeds/{{roster,wages,medical,water}}: {} households in 45 counties, {} planted cases, {} decoys (http://{sim_addr}/planted)",
        world.roster.len(),
        world.cases.len(),
        world.decoys.len()
    );
    println!("  metrics    http://{}/metrics", cfg.daemon.listen);
    if let Some(p) = &log_file {
        println!(
            "  alerts     printed below; full notifications in {}",
            p.display()
        );
    }
    println!(
        "  data       {} (run with --fresh to start over; a second run sends nothing new)",
        cfg.daemon.data_dir.display()
    );
    println!("  stop       Ctrl-C\n");
    daemon::run(config.to_path_buf(), cfg, rules, stop_rx, None).await
}

/// One line describing an observation, without personal data.
fn describe(o: &crate::model::Observation) -> String {
    use crate::model::{Observation, Subject, format_yuan};
    let subject = |s: &Subject| match s {
        Subject::Person(p) => format!("person {p}"),
        Subject::Household(h) => format!("household {h}"),
        Subject::Village(v) => format!("village {v}"),
    };
    match o {
        Observation::Roster(r) => format!(
            "roster: household {} village {} ({}) {} head {} members {} income per capita {} yuan",
            r.household,
            r.village,
            r.village_name,
            r.category.name_zh(),
            r.head_masked,
            r.members.len(),
            format_yuan(r.income_per_capita)
        ),
        Observation::Sample {
            subject: s,
            month,
            values,
        } => format!(
            "sample: {} {month} {}",
            subject(s),
            values
                .iter()
                .map(|(i, v)| format!("{}={} yuan", i.name(), format_yuan(*v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Observation::Event {
            subject: s,
            kind,
            time,
            amount,
        } => format!(
            "event: {} {} {}{}",
            subject(s),
            kind.name(),
            time.format("%Y-%m-%d"),
            amount
                .map(|a| format!(" amount={} yuan", format_yuan(a)))
                .unwrap_or_default()
        ),
        Observation::Interval {
            village,
            id,
            kind,
            start,
            end,
        } => format!(
            "interval: village {village} {} {id} from {} to {}",
            kind.name(),
            start.format("%Y-%m-%d %H:%M"),
            end.map(|e| e.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "(open)".into())
        ),
    }
}

/// `guardline feeds test NAME`: fetches the first page (or file) and shows how its first
/// records map. Writes nothing.
pub async fn feeds_test(config: &Path, name: &str, n: usize) -> anyhow::Result<String> {
    use crate::config::{FeedSource, Paging};
    use crate::feeds::{FeedClient, Fetched, decode, map_page};
    let cfg = Config::load(config).map_err(|p| anyhow::anyhow!("{p}"))?;
    let Some(feed) = cfg.feeds.iter().find(|f| f.name == name) else {
        bail!(
            "{}: no feed named {name:?} (feeds: {})",
            config.display(),
            cfg.feeds
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let (pseudo, note) = match daemon::pseudonymizer(&cfg) {
        Ok(p) => (p, ""),
        Err(_) => (
            crate::pseudonym::Pseudonymizer::from_key(
                format!("feeds-test-{}", std::process::id()).as_bytes(),
            ),
            " (no pseudonymisation key found: person keys below are from a throwaway key)",
        ),
    };
    let (origin, body) = match &feed.source {
        FeedSource::Http(url) => {
            let client = FeedClient::build(feed, Arc::new(crate::metrics::Metrics::new()))?;
            let mut u = url.clone();
            match feed.paging {
                Paging::Page => {
                    u.query_pairs_mut()
                        .append_pair(&feed.page_param, "1")
                        .append_pair(&feed.limit_param, &feed.page_size.to_string());
                }
                Paging::None => {}
                _ => {
                    u.query_pairs_mut()
                        .append_pair(&feed.limit_param, &feed.page_size.to_string());
                }
            }
            match client.get(feed, &u, None).await? {
                Fetched::NotModified => {
                    bail!("{u} answered 304 Not Modified to an unconditional request")
                }
                Fetched::Body { body, .. } => (u.to_string(), body),
            }
        }
        FeedSource::Dir(d) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(d)
                .with_context(|| format!("reading {}", d.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            let Some(first) = files.into_iter().next() else {
                return Ok(format!(
                    "feed {name}: {} holds no file to test",
                    d.display()
                ));
            };
            let body =
                std::fs::read(&first).with_context(|| format!("reading {}", first.display()))?;
            (first.display().to_string(), body)
        }
    };
    let text = decode::to_text(body, feed.encoding, &origin)?;
    let decoded = decode::decode(&text, feed, &origin)?;
    let total = decoded.records.len();
    let mapped = map_page(feed, decoded.records.into_iter().take(n).collect(), &pseudo);
    let mut out = format!(
        "feed {name} ({}): {origin}: {total} records, next cursor {:?}; the first {} map as{note}:\n",
        feed.department,
        decoded.next,
        mapped.len()
    );
    for (i, m) in mapped.iter().enumerate() {
        match &m.result {
            Ok(r) => out.push_str(&format!(
                "  {i}: record {} → {}\n",
                r.id,
                describe(&r.observation)
            )),
            Err(e) => out.push_str(&format!(
                "  {i}: record {} → rejected ({}): {e}\n",
                e.record.as_deref().unwrap_or("?"),
                e.reason
            )),
        }
    }
    Ok(out)
}

/// Opens the store and the engine of a configuration without running the daemon.
fn offline_engine(cfg: &Config, rules: RuleSet) -> anyhow::Result<crate::engine::Engine> {
    let (engine, _store) = open_engine(
        cfg,
        rules,
        Arc::new(std::sync::Mutex::new(crate::notify::Outbox::default())),
        Arc::new(crate::metrics::Metrics::new()),
        None,
    )?;
    Ok(engine)
}

/// Opens the store and an engine that queues into `outbox` (nothing delivers from it).
pub(crate) fn open_engine(
    cfg: &Config,
    rules: RuleSet,
    outbox: Arc<std::sync::Mutex<crate::notify::Outbox>>,
    metrics: Arc<crate::metrics::Metrics>,
    snapshot: Option<PathBuf>,
) -> anyhow::Result<(crate::engine::Engine, Arc<dyn crate::store::Store>)> {
    let pseudo = daemon::pseudonymizer(cfg)?;
    let lines = rules.effective_lines(&cfg.lines);
    let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::open(&cfg.daemon.data_dir)?);
    let engine = crate::engine::Engine::open(
        Arc::clone(&store),
        cfg.daemon.retention_months,
        Arc::new(rules),
        cfg.notify.clone(),
        crate::notify::Templates::new(cfg.daemon.language),
        outbox,
        Arc::new(tokio::sync::Notify::new()),
        metrics,
        pseudo,
        lines,
        snapshot,
    )?;
    Ok((engine, store))
}

/// `guardline quarantine list|show|replay` (the daemon must be stopped: the store is locked).
pub fn quarantine(config: &Path, action: QuarantineAction) -> anyhow::Result<String> {
    let (cfg, rules) = load(config)?;
    let store = crate::store::open(&cfg.daemon.data_dir)?;
    let entries = crate::quarantine::entries(&store)?;
    match action {
        QuarantineAction::List { feed } => {
            let mut out = String::new();
            let mut n = 0;
            for e in entries
                .iter()
                .filter(|e| feed.as_deref().is_none_or(|f| f == e.feed))
            {
                n += 1;
                out.push_str(&format!(
                    "{}  {}  {:<20} record {}  {}\n",
                    e.id,
                    crate::alerts::format_time(e.at),
                    e.reason,
                    e.record_id.as_deref().unwrap_or("-"),
                    e.detail
                ));
            }
            out.push_str(&format!("{n} quarantined records\n"));
            Ok(out)
        }
        QuarantineAction::Show { id } => {
            let e = entries.iter().find(|e| e.id == id).ok_or_else(|| {
                anyhow::anyhow!("no quarantined record {id:?} (see `guardline quarantine list`)")
            })?;
            let raw = e
                .raw
                .as_deref()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
                .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
                .unwrap_or_else(|| "(the record could not be decoded)".into());
            Ok(format!(
                "id:      {}\nfeed:    {}\nrecord:  {}\nwhen:    {}\nreason:  {}\ndetail:  {}\nrecord (ID numbers pseudonymised, names masked):\n{raw}\n",
                e.id,
                e.feed,
                e.record_id.as_deref().unwrap_or("-"),
                crate::alerts::format_time(e.at),
                e.reason,
                e.detail
            ))
        }
        QuarantineAction::Replay { feed, ids } => {
            drop(store);
            let pseudo = daemon::pseudonymizer(&cfg)?;
            let mut engine = offline_engine(&cfg, rules)?;
            let mut replayed = Vec::new();
            let (mut ok, mut again, mut skipped) = (0, 0, 0);
            for e in entries.iter().filter(|e| {
                feed.as_deref().is_none_or(|f| f == e.feed)
                    && (ids.is_empty() || ids.contains(&e.id))
            }) {
                let (Some(fc), Some(raw)) = (
                    cfg.feeds.iter().find(|f| f.name == e.feed),
                    e.raw.as_deref(),
                ) else {
                    skipped += 1;
                    continue;
                };
                let Ok(record) = crate::feeds::json::Json::parse(raw) else {
                    skipped += 1;
                    continue;
                };
                // Person fields hold pk: tokens, which map to themselves.
                let mapped = crate::feeds::map_page(fc, vec![Ok(record)], &pseudo);
                let counts = engine.ingest(fc, mapped, crate::model::now(), None)?;
                if counts.rejected == 0 {
                    ok += 1;
                    if counts.waiting == 0 {
                        replayed.push(e.id.clone());
                    }
                } else {
                    again += 1;
                }
            }
            engine.forget_quarantined(&replayed)?;
            Ok(format!(
                "replayed {ok} records ({} applied or already present); {again} rejected again (see `quarantine list`); {skipped} could not be replayed (no raw record or feed no longer configured)\nthe daemon evaluates the rules on them at its next start\n",
                replayed.len()
            ))
        }
    }
}

pub enum QuarantineAction {
    List {
        feed: Option<String>,
    },
    Show {
        id: String,
    },
    Replay {
        feed: Option<String>,
        ids: Vec<String>,
    },
}

/// What `guardline backtest` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BacktestFormat {
    Table,
    Json,
    Csv,
}

pub struct BacktestArgs {
    pub config: PathBuf,
    pub rules: Option<PathBuf>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub step: Duration,
    pub against: Option<PathBuf>,
    pub format: BacktestFormat,
}

/// `guardline backtest`: replays the stored history (the daemon must be stopped, or point
/// the configuration at a copy of the data directory). Writes nothing, sends nothing.
pub fn backtest(a: &BacktestArgs) -> anyhow::Result<String> {
    use crate::backtest::{csv, diff, replay, summarize, table};
    use chrono::TimeZone;
    let cfg = Config::load(&a.config).map_err(|p| anyhow::anyhow!("{p}"))?;
    if a.to < a.from {
        bail!("--to {} is before --from {}", a.to, a.from);
    }
    let load_rules = |dir: &Path| -> anyhow::Result<RuleSet> {
        let r = RuleSet::load_dir(dir).map_err(|p| anyhow::anyhow!("{p}"))?;
        let missing = r.check_lines(&cfg.lines);
        if !missing.is_empty() {
            bail!("{}", missing.join("\n"));
        }
        Ok(r)
    };
    let rules = load_rules(a.rules.as_deref().unwrap_or(&cfg.daemon.rules_dir))?;
    let store = crate::store::open(&cfg.daemon.data_dir)?;
    let at_noon = |d: NaiveDate| {
        crate::model::china_offset()
            .from_local_datetime(&d.and_hms_opt(12, 0, 0).unwrap_or_default())
            .single()
            .ok_or_else(|| anyhow::anyhow!("{d} is not a valid date"))
    };
    let (from, to) = (at_noon(a.from)?, at_noon(a.to)?);
    let step = chrono::Duration::from_std(a.step).map_err(|e| anyhow::anyhow!("--step: {e}"))?;
    if step <= chrono::Duration::zero() {
        bail!("--step must be positive");
    }
    let mut world = crate::state::World::load(&store, cfg.daemon.retention_months)?;
    let sources = crate::rules::sources_of(&cfg.feeds);
    let base = replay(
        &mut world,
        &rules,
        &rules.effective_lines(&cfg.lines),
        &sources,
        from,
        to,
        step,
    )?;
    let other = match &a.against {
        None => None,
        Some(dir) => {
            let b = load_rules(dir)?;
            let mut world = crate::state::World::load(&store, cfg.daemon.retention_months)?;
            Some(replay(
                &mut world,
                &b,
                &b.effective_lines(&cfg.lines),
                &sources,
                from,
                to,
                step,
            )?)
        }
    };
    let end = to.timestamp();
    Ok(match (a.format, other) {
        (BacktestFormat::Json, None) => serde_json::to_string_pretty(&serde_json::json!({
            "from": a.from, "to": a.to, "summary": summarize(&base, end), "alerts": base,
        }))?,
        (BacktestFormat::Json, Some(b)) => serde_json::to_string_pretty(&serde_json::json!({
            "from": a.from, "to": a.to, "summary": summarize(&base, end), "against": summarize(&b, end), "diff": diff(&base, &b),
        }))?,
        (BacktestFormat::Csv, None) => csv(&base),
        (BacktestFormat::Csv, Some(b)) => {
            let d = diff(&base, &b);
            let mut out = String::from("change,rule,entity,county,fired_at,resolved_at\n");
            for (kind, list) in [("added", &d.added), ("removed", &d.removed)] {
                for line in csv(list).lines().skip(1) {
                    out.push_str(&format!("{kind},{line}\n"));
                }
            }
            for (_, e) in &d.changed {
                for line in csv(std::slice::from_ref(e)).lines().skip(1) {
                    out.push_str(&format!("changed,{line}\n"));
                }
            }
            out
        }
        (BacktestFormat::Table, None) => format!(
            "backtest {} to {}:\n{}",
            a.from,
            a.to,
            table(&summarize(&base, end))
        ),
        (BacktestFormat::Table, Some(b)) => {
            let d = diff(&base, &b);
            let mut by_rule: std::collections::BTreeMap<&str, (usize, usize, usize)> =
                Default::default();
            for e in &d.added {
                by_rule.entry(e.rule.as_str()).or_default().0 += 1;
            }
            for e in &d.removed {
                by_rule.entry(e.rule.as_str()).or_default().1 += 1;
            }
            for (e, _) in &d.changed {
                by_rule.entry(e.rule.as_str()).or_default().2 += 1;
            }
            let mut out = format!(
                "backtest {} to {}:\n{}\nagainst {}:\n{}\ndifference (against minus base):\n{:<32} {:>6} {:>8} {:>8}\n",
                a.from,
                a.to,
                table(&summarize(&base, end)),
                a.against
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                table(&summarize(&b, end)),
                "rule",
                "added",
                "removed",
                "changed"
            );
            for (rule, (ad, rm, ch)) in by_rule {
                out.push_str(&format!("{rule:<32} {ad:>6} {rm:>8} {ch:>8}\n"));
            }
            out.push_str(&format!(
                "{} added, {} removed, {} changed\n",
                d.added.len(),
                d.removed.len(),
                d.changed.len()
            ));
            out
        }
    })
}

/// `guardline routes test LABELS…`: the routes and receivers an alert with these labels reaches.
pub fn routes_test(config: &Path, labels: &[String]) -> anyhow::Result<String> {
    let cfg = Config::load(config).map_err(|p| anyhow::anyhow!("{p}"))?;
    let mut map = std::collections::BTreeMap::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("{l:?} is not label=value"))?;
        map.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
    }
    let route = &cfg.notify.route;
    let mut out = String::new();
    for r in route.resolve(&map) {
        let matchers: Vec<String> = r.matchers.iter().map(|m| m.to_string()).collect();
        out.push_str(&format!(
            "route {} [{}] -> {}\n",
            r.path,
            if matchers.is_empty() {
                "everything".to_string()
            } else {
                matchers.join(", ")
            },
            if r.receivers.is_empty() {
                "(no receiver)".to_string()
            } else {
                r.receivers.join(", ")
            }
        ));
    }
    let receivers = route.receivers_for(&map);
    out.push_str(&format!(
        "receivers: {}\n",
        if receivers.is_empty() {
            "none: the alert would not be sent".to_string()
        } else {
            receivers.join(", ")
        }
    ));
    Ok(out)
}

/// `guardline report`: per rule, the alerts, their dispositions and the precision (the share
/// of dispositions that enrolled the household). Reads the store (stop the daemon first).
pub fn report(config: &Path, json: bool) -> anyhow::Result<String> {
    use crate::alerts::{Alerts, Disposition, Status};
    let cfg = Config::load(config).map_err(|p| anyhow::anyhow!("{p}"))?;
    let store = crate::store::open(&cfg.daemon.data_dir)?;
    let alerts = Alerts::load(std::sync::Arc::new(store))?;
    #[derive(Default, serde::Serialize)]
    struct Row {
        rule: String,
        firing: u64,
        resolved: u64,
        enrolled: u64,
        dismissed: u64,
        eliminated: u64,
        without_disposition: u64,
        escalated: u64,
        precision: Option<f64>,
    }
    let mut rows: std::collections::BTreeMap<String, Row> = Default::default();
    for a in alerts.iter() {
        let r = rows.entry(a.rule.clone()).or_insert_with(|| Row {
            rule: a.rule.clone(),
            ..Row::default()
        });
        match a.status {
            Status::Firing => r.firing += 1,
            Status::Resolved => r.resolved += 1,
            Status::Pending => {}
        }
        match a.ack.as_ref().map(|k| k.disposition) {
            Some(Disposition::Enrolled) => r.enrolled += 1,
            Some(Disposition::Dismissed) => r.dismissed += 1,
            Some(Disposition::Eliminated) => r.eliminated += 1,
            None if a.status == Status::Firing => r.without_disposition += 1,
            None => {}
        }
        if a.escalated_at.is_some() {
            r.escalated += 1;
        }
    }
    for r in rows.values_mut() {
        let n = r.enrolled + r.dismissed + r.eliminated;
        r.precision = (n > 0).then(|| (r.enrolled as f64 / n as f64 * 1000.0).round() / 1000.0);
    }
    let rows: Vec<Row> = rows.into_values().collect();
    if json {
        return Ok(serde_json::to_string_pretty(&rows)? + "\n");
    }
    let mut out = format!(
        "{:<32} {:>6} {:>8} {:>8} {:>9} {:>10} {:>8} {:>9} {:>9}\n",
        "rule",
        "firing",
        "resolved",
        "enrolled",
        "dismissed",
        "eliminated",
        "open",
        "escalated",
        "precision"
    );
    for r in &rows {
        out.push_str(&format!(
            "{:<32} {:>6} {:>8} {:>8} {:>9} {:>10} {:>8} {:>9} {:>9}\n",
            r.rule,
            r.firing,
            r.resolved,
            r.enrolled,
            r.dismissed,
            r.eliminated,
            r.without_disposition,
            r.escalated,
            r.precision
                .map(|p| format!("{:.0}%", p * 100.0))
                .unwrap_or_else(|| "-".into())
        ));
    }
    Ok(out)
}

/// `guardline bench`: prints the figures as a table (or JSON) on stdout.
pub async fn bench(opts: crate::bench::BenchOptions, json: bool) -> anyhow::Result<()> {
    // The allocator reads its settings when the process starts: set, it takes a new one.
    let unset: Vec<(&str, &str)> = crate::bench::ALLOCATOR_SETTINGS
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect();
    if !unset.is_empty() {
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .envs(unset.iter().copied())
            .status()
            .with_context(|| format!("running the bench again with {unset:?} set"))?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let f = crate::bench::run(&opts).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        println!("| figure | value | target |\n|---|---|---|");
        print!("{}", crate::bench::table(&f));
    }
    Ok(())
}
