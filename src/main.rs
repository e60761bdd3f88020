//! The `guardline` command: parses the command line, sets up logging, runs a subcommand.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use guardline::commands;

/// mimalloc instead of the system allocator: ingest and evaluation allocate many small
/// values, and glibc's malloc spent a third of the ingest time in its free lists
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "guardline",
    version,
    about = "Early warning of households at risk of falling back into poverty (防止返贫动态监测预警)"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, default_value = "/etc/guardline/guardline.toml")]
        config: PathBuf,
    },
    /// Validate the configuration and rule files; exits non-zero with file:line:field errors.
    Check {
        #[arg(long, default_value = "/etc/guardline/guardline.toml")]
        config: PathBuf,
    },
    /// Serve synthetic departmental feeds over HTTP.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:18700")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 5000)]
        households: u32,
        /// Publication date of the simulated data (default: today in China Standard Time).
        #[arg(long)]
        as_of: Option<chrono::NaiveDate>,
        /// Print the planted cases and decoys as JSON and exit.
        #[arg(long)]
        list_planted: bool,
    },
    /// Inspect and replay quarantined records (stop the daemon first: the store is locked).
    Quarantine {
        #[arg(long, global = true, default_value = "/etc/guardline/guardline.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: QuarantineCmd,
    },
    /// Per rule: alerts, dispositions and precision (stop the daemon first: the store is locked).
    Report {
        #[arg(long, default_value = "/etc/guardline/guardline.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Work with the routing tree.
    Routes {
        #[arg(long, global = true, default_value = "/etc/guardline/guardline.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: RoutesCmd,
    },
    /// Work with feed definitions.
    Feeds {
        #[arg(long, global = true, default_value = "/etc/guardline/guardline.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: FeedsCmd,
    },
    /// Replay the stored history through the rules (stop the daemon first, or use a copy).
    Backtest {
        #[arg(long, default_value = "/etc/guardline/guardline.toml")]
        config: PathBuf,
        /// The rule folder to replay (default: the configuration's rules_dir).
        #[arg(long)]
        rules: Option<PathBuf>,
        #[arg(long)]
        from: chrono::NaiveDate,
        #[arg(long)]
        to: chrono::NaiveDate,
        #[arg(long, default_value = "1d", value_parser = guardline::config::parse_duration)]
        step: std::time::Duration,
        /// A second rule folder: report the difference.
        #[arg(long)]
        against: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run rule unit tests: a rules folder (with its tests/ subfolder) or test files.
    TestRules {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Measure ingest, detection, evaluation, memory, restart and scrapes at province scale
    /// (BENCHMARKS.md). The generated feeds, the store and the snapshot take about 6 GB per
    /// million households in --dir; a run the free space cannot hold is refused
    Bench {
        #[arg(long, default_value_t = 600_000)]
        households: u32,
        /// Runs per figure (the median is reported)
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Ingests of the whole world, each into an empty store (the median is reported, of
        /// an even number the slower middle one; default: --runs)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        ingest_runs: Option<u32>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The store and generated configuration go here (emptied first)
        #[arg(long, default_value = "../guardline-bench")]
        dir: PathBuf,
        /// The configuration whose feeds and rules are measured
        #[arg(long, default_value = "config/demo.toml")]
        config: PathBuf,
        /// Print the figures as JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Run the simulator and the daemon together on config/demo.toml.
    Demo {
        #[arg(long, default_value = "config/demo.toml")]
        config: PathBuf,
        /// Delete the demo's data directory first.
        #[arg(long)]
        fresh: bool,
        /// Stop after this long (e.g. 30s) instead of waiting for Ctrl-C.
        #[arg(long, value_parser = guardline::config::parse_duration)]
        exit_after: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
enum QuarantineCmd {
    /// List quarantined records: id, time, reason, record id, detail.
    List {
        #[arg(long)]
        feed: Option<String>,
    },
    /// Show one record with its reason and its (pseudonymised) content.
    Show { id: String },
    /// Map and apply quarantined records again with the current configuration.
    Replay {
        #[arg(long)]
        feed: Option<String>,
        /// Only these ids (default: all, or all of --feed).
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RoutesCmd {
    /// Show which routes and receivers an alert with these labels would reach.
    Test {
        /// Labels as label=value, e.g. county=632522 severity=critical rule=medical_burden
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

#[derive(Subcommand)]
enum FeedsCmd {
    /// Fetch one page of a feed and show how its first records map; writes nothing.
    Test {
        name: String,
        #[arg(long, default_value_t = 5)]
        records: usize,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GUARDLINE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => commands::run(&config).await,
            Command::Check { config } => commands::check(&config).map(|s| println!("{s}")),
            Command::Simulate {
                listen,
                seed,
                households,
                as_of,
                list_planted,
            } => {
                commands::simulate(
                    listen,
                    commands::sim_options(seed, households, as_of),
                    list_planted,
                )
                .await
            }
            Command::Demo {
                config,
                fresh,
                exit_after,
            } => commands::demo(&config, fresh, exit_after).await,
            Command::Bench {
                households,
                runs,
                ingest_runs,
                seed,
                dir,
                config,
                json,
            } => {
                commands::bench(
                    guardline::bench::BenchOptions {
                        households,
                        runs,
                        ingest_runs: ingest_runs.unwrap_or(runs),
                        seed,
                        dir,
                        config,
                    },
                    json,
                )
                .await
            }
            Command::Backtest {
                config,
                rules,
                from,
                to,
                step,
                against,
                format,
            } => {
                let format = match format {
                    Format::Table => commands::BacktestFormat::Table,
                    Format::Json => commands::BacktestFormat::Json,
                    Format::Csv => commands::BacktestFormat::Csv,
                };
                commands::backtest(&commands::BacktestArgs {
                    config,
                    rules,
                    from,
                    to,
                    step,
                    against,
                    format,
                })
                .map(|s| print!("{s}"))
            }
            Command::TestRules { paths } => match guardline::ruletest::run_paths(&paths) {
                Ok(r) => {
                    print!("{}", r.text);
                    if r.failed > 0 {
                        Err(anyhow::anyhow!("{} rule tests failed", r.failed))
                    } else {
                        Ok(())
                    }
                }
                Err(p) => Err(anyhow::anyhow!("{p}")),
            },
            Command::Quarantine { config, action } => {
                let action = match action {
                    QuarantineCmd::List { feed } => commands::QuarantineAction::List { feed },
                    QuarantineCmd::Show { id } => commands::QuarantineAction::Show { id },
                    QuarantineCmd::Replay { feed, ids } => {
                        commands::QuarantineAction::Replay { feed, ids }
                    }
                };
                commands::quarantine(&config, action).map(|s| print!("{s}"))
            }
            Command::Report { config, json } => {
                commands::report(&config, json).map(|s| print!("{s}"))
            }
            Command::Routes {
                config,
                action: RoutesCmd::Test { labels },
            } => commands::routes_test(&config, &labels).map(|s| print!("{s}")),
            Command::Feeds {
                config,
                action: FeedsCmd::Test { name, records },
            } => commands::feeds_test(&config, &name, records)
                .await
                .map(|s| print!("{s}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
