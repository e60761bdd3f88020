//! `guardline bench` at a small size: the whole measurement runs through, and its three
//! restarts behave as the bench demands (it fails otherwise). The one after a kill starts
//! from the snapshot its predecessor wrote at its first tick, with a page of records
//! committed since by another process: the state journal must bring it up to the store.
//! No figure of time is asserted, beyond the ingest's being one of the ingests' own.

mod support;

use support::*;

#[test]
fn a_small_bench_runs_through_and_its_restart_after_a_kill_reads_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let bench = dir.path().join("bench");
    let out = offline(&[
        "bench",
        "--households",
        "3000",
        "--runs",
        "1",
        "--ingest-runs",
        "2",
        "--json",
        "--dir",
        bench.to_str().unwrap(),
    ]);
    let f: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(f["households"], 3000, "{f}");
    // Run again with the allocator settings of the shipped unit.
    assert_eq!(f["allocator_purge_delay"], "-1", "{f}");
    assert_eq!(f["allocator_allow_thp"], "0", "{f}");
    assert!(f["records"].as_u64().unwrap() > 50_000, "{f}");
    // Two ingests of the same feeds, each into a fresh store, every feed in each; the figure
    // is one of them (of two, the slower).
    let ingests = f["ingests"].as_array().unwrap();
    assert_eq!(ingests.len(), 2, "{f}");
    let feeds_of = |i: &serde_json::Value| -> Vec<String> {
        i["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|feed| feed[0].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(feeds_of(&ingests[0]).len(), 10, "{f}");
    assert_eq!(feeds_of(&ingests[0]), feeds_of(&ingests[1]), "{f}");
    assert_eq!(feeds_of(&ingests[0])[0], "roster", "{f}");
    // Each from an empty store: the same records read and applied as new (a store left from
    // the first would have made the second's records duplicates, or read none).
    for key in ["records", "accepted"] {
        assert_eq!(ingests[0][key], ingests[1][key], "{key}: {f}");
    }
    assert_eq!(ingests[1]["records"], f["records"], "{f}");
    assert!(ingests[1]["accepted"].as_u64().unwrap() > 50_000, "{f}");
    let seconds: Vec<f64> = ingests
        .iter()
        .map(|i| i["seconds"].as_f64().unwrap())
        .collect();
    assert!(seconds.iter().all(|s| *s > 0.0), "{f}");
    let median = f["ingest_seconds"].as_f64().unwrap();
    assert_eq!(median, seconds[0].max(seconds[1]), "{f}");
    // Had the second ingest found the first one's store, its polls would have started at
    // the saved cursors and read nothing: the bench fails when the ingests' records differ.
    assert_eq!(f["incremental_records"], 10_000, "{f}");
    assert!(f["incremental_alerts"].as_u64().unwrap() > 0, "{f}");
    assert!(f["evaluation_checks"].as_u64().unwrap() > 0, "{f}");
    // The page of 10,000 wage records is one run of months: its key, and whatever else the
    // page changed, are read again.
    let caught_up = f["restart_after_crash_caught_up_keys"].as_u64().unwrap();
    assert!(caught_up >= 1, "{caught_up} keys read again\n{f}");
    assert!(f["daemon_peak_rss_bytes"].as_u64().unwrap() > 0, "{f}");
    assert!(f["scrape_bytes"].as_u64().unwrap() > 10_000, "{f}");
    // The machine probe ran before and after.
    for when in ["probe_before", "probe_after"] {
        for figure in ["hash_mb_per_second", "copy_gb_per_second", "random_read_ns"] {
            assert!(
                f[when][figure].as_f64().unwrap() > 0.0,
                "{when} {figure}: {f}"
            );
        }
    }
    // The machine is described as the system reports it.
    assert_eq!(
        f["machine"]["cpus"].as_u64().unwrap(),
        std::thread::available_parallelism().unwrap().get() as u64,
        "{f}"
    );
    let total_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(total_kb > 0);
    assert_eq!(
        f["machine"]["memory_bytes"].as_u64().unwrap(),
        total_kb * 1024,
        "{f}"
    );
    assert_eq!(
        f["machine"]["kernel"].as_str().unwrap(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim(),
        "{f}"
    );
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let cpu = f["machine"]["cpu"].as_str().unwrap();
    assert!(
        cpu.is_empty() || cpuinfo.contains(cpu),
        "{cpu} is not in /proc/cpuinfo"
    );
    // Every daemon's log says which way it loaded.
    let logs: Vec<String> = (0..3)
        .map(|i| std::fs::read_to_string(bench.join(format!("daemon-{i}.log"))).unwrap())
        .collect();
    assert!(!logs[0].contains("working set loaded from the state snapshot"));
    assert!(logs[0].contains("state journal entries covered by the snapshot forgotten"));
    assert!(
        logs[1].contains(&format!("caught_up={caught_up}")),
        "{}",
        logs[1]
    );
    assert!(logs[2].contains("caught_up=0"), "{}", logs[2]);
}
