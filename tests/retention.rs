//! Log retention: `tick` deletes entries of the notification log and the audit log older
//! than `daemon.log_retention`, and keeps the rest; the store helper deletes in batches.

use std::sync::{Arc, Mutex};

use guardline::engine::{AuditEntry, Engine};
use guardline::notify::{Delivered, Outbox, Templates};
use guardline::pseudonym::Pseudonymizer;
use guardline::rules::RuleSet;
use guardline::store::{self, Batch, Space, Store, codec};

const DAY: i64 = 86_400;

fn engine(store: Arc<dyn Store>, dir: &std::path::Path) -> Engine {
    let path = dir.join("g.toml");
    std::fs::write(&path, "[daemon]\nlog_retention = \"730d\"\n").unwrap();
    let cfg = guardline::config::Config::load(&path).unwrap();
    assert_eq!(cfg.daemon.log_retention.as_secs(), 730 * DAY as u64);
    let rules = RuleSet::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts"))
        .unwrap();
    Engine::open(
        store,
        24,
        Arc::new(rules),
        cfg.notify.clone(),
        Templates::new(guardline::config::Language::Zh),
        Arc::new(Mutex::new(Outbox::default())),
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(guardline::metrics::Metrics::new()),
        Pseudonymizer::from_key(b"retention test key 0123"),
        Default::default(),
        None,
    )
    .unwrap()
}

fn delivered(id: u64, at: i64) -> (Vec<u8>, Vec<u8>) {
    let d = Delivered {
        id,
        key: format!("k{id}"),
        receiver: "mail".into(),
        fingerprint: format!("{id:016x}"),
        rule: "wage_income_drop".into(),
        county: None,
        status: guardline::alerts::Status::Firing,
        escalation: false,
        attempts: 1,
        delivered_at: at,
    };
    let mut k = at.to_be_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    // Version 1 of the notification log's value.
    (k, codec::encode(1, &d))
}

#[test]
fn a_tick_deletes_log_entries_past_the_retention_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(store::open(dir.path()).unwrap());
    let now = guardline::model::now();
    let t = now.timestamp();
    let mut b = Batch::default();
    for (id, age_days) in [(1, 900), (2, 731), (3, 729), (4, 10), (5, 0)] {
        let (k, v) = delivered(id, t - age_days * DAY);
        b.put(Space::NotifyLog, k, v);
    }
    store.commit(b).unwrap();
    let mut e = engine(Arc::clone(&store), dir.path());
    for (age_days, target) in [(800, "old"), (100, "recent"), (0, "today")] {
        e.audit(&AuditEntry {
            at: t - age_days * DAY,
            token: "ops".into(),
            role: "admin".into(),
            action: "silence".into(),
            target: target.into(),
            detail: String::new(),
        })
        .unwrap();
    }
    // Without a retention nothing goes.
    e.tick(now).unwrap();
    assert_eq!(e.notification_log(100).unwrap().len(), 5);
    assert_eq!(e.audit_log(100).unwrap().len(), 3);

    e.set_log_retention(std::time::Duration::from_secs(730 * DAY as u64));
    let ids = |e: &Engine| -> Vec<u64> {
        e.notification_log(100)
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect()
    };
    // One day of the backlog per pass, the oldest day first.
    e.tick(now).unwrap();
    assert_eq!(
        ids(&e),
        vec![5, 4, 3, 2],
        "newest first, the entry of 900 days gone"
    );
    e.tick(now).unwrap();
    assert_eq!(ids(&e), vec![5, 4, 3], "then the one of 731 days");
    let targets: Vec<String> = e
        .audit_log(100)
        .unwrap()
        .into_iter()
        .map(|a| a.target)
        .collect();
    assert_eq!(targets, vec!["today", "recent"]);
    // Nothing else was touched.
    e.tick(now).unwrap();
    assert_eq!(e.notification_log(100).unwrap().len(), 3);
}

#[test]
fn prune_before_deletes_in_batches_only_the_keys_before_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(dir.path()).unwrap();
    let mut b = Batch::default();
    for i in 0u64..25 {
        b.put(Space::Audit, i.to_be_bytes().to_vec(), vec![1]);
    }
    b.put(Space::NotifyLog, 3u64.to_be_bytes().to_vec(), vec![1]);
    store.commit(b).unwrap();
    let n = store::prune_before(&store, Space::Audit, &20u64.to_be_bytes(), 7).unwrap();
    assert_eq!(n, 20);
    let left: Vec<u64> = store
        .scan(Space::Audit)
        .unwrap()
        .into_iter()
        .map(|(k, _)| u64::from_be_bytes(k.try_into().unwrap()))
        .collect();
    assert_eq!(left, (20..25).collect::<Vec<_>>());
    assert_eq!(
        store.scan(Space::NotifyLog).unwrap().len(),
        1,
        "other spaces stay"
    );
    assert_eq!(
        store::prune_before(&store, Space::Audit, &20u64.to_be_bytes(), 7).unwrap(),
        0
    );
}
