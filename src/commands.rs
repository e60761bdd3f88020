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
    let rules = RuleSet::load_dir(&cfg.daemon.rules_dir).map_err(|p| anyhow::anyhow!("{p}"))?;
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
    Ok(format!(
        "{}: ok: {} feeds, {} receivers, {} rules from {}",
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
    daemon::run(cfg, rules, daemon::shutdown_on_signals(), None).await
}

pub fn sim_options(seed: u64, households: u32, as_of: Option<NaiveDate>) -> SimOptions {
    SimOptions {
        seed,
        households,
        as_of: as_of.unwrap_or_else(|| crate::model::now().date_naive()),
    }
}

/// `guardline simulate`.
pub async fn simulate(
    listen: SocketAddr,
    opts: SimOptions,
    list_planted: bool,
) -> anyhow::Result<()> {
    let world = Arc::new(simulate::generate(&opts));
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
    let world = Arc::new(simulate::generate(&opts));
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
    daemon::run(cfg, rules, stop_rx, None).await
}
