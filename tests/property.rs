//! Property: any sequence of polls, crashes (memory lost, uncommitted work gone) and
//! re-polls ends in the same stored state as one clean pass.

use std::path::Path;
use std::sync::{Arc, Mutex};

use guardline::config::{Config, FeedConfig};
use guardline::engine::Engine;
use guardline::feeds::Mapped;
use guardline::model::{
    HouseholdCategory, Indicator, Month, Observation, PersonKey, Record, RosterEntry, Subject,
    china_offset,
};
use guardline::notify::{Outbox, Templates};
use guardline::pseudonym::Pseudonymizer;
use guardline::rules::RuleSet;
use guardline::state::{CountyValue, Household, Village, World};
use guardline::store::{self, Space, Store};
use proptest::prelude::*;

const CONFIG: &str = r#"
[[feeds]]
name = "roster"
kind = "roster"
url = "http://127.0.0.1:1/roster"
schedule = "0 * * * * *"
[feeds.map]
record_id = "id"
household = "h"
village = "v"
category = "c"
head_name = "n"
members = "m"
member_id = "i"
income_per_capita = "p"

[[feeds]]
name = "wages"
kind = "samples"
url = "http://127.0.0.1:1/wages"
schedule = "0 * * * * *"
[feeds.map]
record_id = "id"
person = "i"
time = "m"
values = [{ indicator = "wage_income", field = "a" }]
"#;

struct Feeds {
    cfg: Config,
    roster: FeedConfig,
    wages: FeedConfig,
}

fn feeds(dir: &Path) -> Feeds {
    feeds_with(dir, "")
}

/// The feeds, and a receiver every alert's notifications go to.
fn feeds_notifying(dir: &Path) -> Feeds {
    feeds_with(
        dir,
        "[[receivers]]\nname = \"log\"\ntype = \"file\"\npath = \"notifications.log\"\n\n\
         [notify]\nreceivers = [\"log\"]\n",
    )
}

fn feeds_with(dir: &Path, extra: &str) -> Feeds {
    let p = dir.join("g.toml");
    std::fs::write(&p, format!("{CONFIG}\n{extra}")).unwrap();
    let cfg = Config::load(&p).unwrap();
    let roster = cfg.feeds[0].clone();
    let wages = cfg.feeds[1].clone();
    Feeds { cfg, roster, wages }
}

fn open(dir: &Path, cfg: &Config) -> Engine {
    open_with_snapshot(dir, cfg, None)
}

fn open_with_snapshot(dir: &Path, cfg: &Config, snapshot: Option<std::path::PathBuf>) -> Engine {
    open_with(
        dir,
        cfg,
        snapshot,
        Arc::new(guardline::metrics::Metrics::new()),
    )
}

fn open_with(
    dir: &Path,
    cfg: &Config,
    snapshot: Option<std::path::PathBuf>,
    metrics: Arc<guardline::metrics::Metrics>,
) -> Engine {
    let store: Arc<dyn Store> = Arc::new(store::open(dir).unwrap());
    let rules = RuleSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts")).unwrap();
    Engine::open(
        store,
        24,
        Arc::new(rules),
        cfg.notify.clone(),
        Templates::new(cfg.daemon.language),
        Arc::new(Mutex::new(Outbox::default())),
        Arc::new(tokio::sync::Notify::new()),
        metrics,
        Pseudonymizer::from_key(b"property test key 0123"),
        Default::default(),
        snapshot,
    )
    .unwrap()
}

fn now() -> chrono::DateTime<chrono::FixedOffset> {
    use chrono::TimeZone;
    china_offset()
        .with_ymd_and_hms(2026, 11, 28, 12, 0, 0)
        .unwrap()
}

fn roster_records(households: usize) -> Vec<Record> {
    (0..households)
        .map(|h| {
            let members = vec![
                PersonKey([2 * h as u8; 16]),
                PersonKey([2 * h as u8 + 1; 16]),
            ];
            roster_record(h, &format!("6325221002010{h:02}"), members, 1_000_000)
        })
        .collect()
}

/// The roster record `r{n}` of household `household` of village 632522100201.
fn roster_record(
    n: usize,
    household: &str,
    members: Vec<PersonKey>,
    income_per_capita: i64,
) -> Record {
    Record {
        id: format!("r{n}"),
        observation: Observation::Roster(RosterEntry {
            household: household.parse().unwrap(),
            village: "632522100201".parse().unwrap(),
            village_name: "村".into(),
            category: HouseholdCategory::Lifted,
            head_masked: "张*".into(),
            members,
            income_per_capita,
        }),
    }
}

fn wage_records(wages: &[(usize, u32, i64, usize)], persons: usize) -> Vec<Record> {
    let last: Month = "2026-10".parse().unwrap();
    wages
        .iter()
        .map(|(p, back, yuan, id)| Record {
            // Ids repeat on purpose: a feed may send a record again.
            id: format!("w{id}"),
            observation: Observation::Sample {
                subject: Subject::Person(PersonKey([(*p % persons) as u8; 16])),
                month: last.minus(*back),
                values: vec![(Indicator::WageIncome, yuan * 100)],
            },
        })
        .collect()
}

fn mapped(records: &[Record]) -> Vec<Mapped<'static>> {
    records
        .iter()
        .map(|r| Mapped {
            raw: None,
            result: Ok(r.clone()),
        })
        .collect()
}

/// Every stored household, roster part and months, as a start from the store reads them,
/// and the wages cursor as bytes.
fn snapshot(dir: &Path) -> (Vec<Household>, Option<Vec<u8>>) {
    let s = store::open(dir).unwrap();
    let mut households: Vec<Household> =
        World::load(&s, 24).unwrap().households().cloned().collect();
    households.sort_by(|a, b| a.id.cmp(&b.id));
    (households, s.get(Space::Cursor, b"wages").unwrap())
}

/// Polls the wage feed in pages from the stored cursor. `crashes` lists (step, stage):
/// stage 0 loses the page before its commit, stage 1 commits it without its cursor.
fn run(
    dir: &Path,
    f: &Feeds,
    households: usize,
    records: &[Record],
    page: usize,
    crashes: &[(usize, u8)],
) {
    let mut engine = open(dir, &f.cfg);
    engine
        .ingest(&f.roster, mapped(&roster_records(households)), now(), None)
        .unwrap();
    let mut step = 0;
    loop {
        let cursor: usize = engine
            .cursor("wages")
            .unwrap()
            .map_or(0, |c| c.parse().unwrap());
        if cursor >= records.len() {
            break;
        }
        let end = (cursor + page).min(records.len());
        let crash = crashes.iter().find(|(s, _)| *s == step).map(|c| c.1);
        step += 1;
        if crash == Some(0) {
            drop(engine);
            engine = open(dir, &f.cfg);
            continue;
        }
        if crash == Some(1) {
            // The page committed without its cursor (as by a daemon before cursors were
            // committed with their pages): the feed serves it again.
            engine
                .ingest(&f.wages, mapped(&records[cursor..end]), now(), None)
                .unwrap();
            drop(engine);
            engine = open(dir, &f.cfg);
            continue;
        }
        let next = end.to_string();
        engine
            .ingest(&f.wages, mapped(&records[cursor..end]), now(), Some(&next))
            .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn polls_with_crashes_end_like_one_clean_pass(
        households in 1usize..5,
        wages in proptest::collection::vec((0usize..10, 0u32..8, 1i64..6000, 0usize..40), 1..50),
        page in 1usize..7,
        crashes in proptest::collection::vec((0usize..30, 0u8..2), 0..8),
    ) {
        let records = wage_records(&wages, 2 * households);
        let clean = tempfile::tempdir().unwrap();
        let f = feeds(clean.path());
        run(clean.path(), &f, households, &records, page, &[]);
        let crashed = tempfile::tempdir().unwrap();
        run(crashed.path(), &f, households, &records, page, &crashes);
        prop_assert_eq!(snapshot(clean.path()), snapshot(crashed.path()));
    }
}

/// Everything a world holds that the public API shows.
fn same_world(a: &World, b: &World) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.n_households(), b.n_households());
    for h in a.households() {
        prop_assert_eq!(Some(h), b.household(&h.id));
    }
    let villages = |w: &World| -> Vec<Village> {
        let mut v: Vec<Village> = w.villages().cloned().collect();
        v.sort_by_key(|v| v.code);
        v
    };
    prop_assert_eq!(villages(a), villages(b));
    let counties = |w: &World| -> Vec<CountyValue> { w.counties().cloned().collect() };
    prop_assert_eq!(counties(a), counties(b));
    for ind in Indicator::ALL {
        prop_assert_eq!(a.latest_month(ind), b.latest_month(ind));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A running engine's state snapshot (after ingest, duplicates, evaluation and the
    /// periodic pass, which writes county values), written at any point of the run and
    /// brought up to the store by its journal, loads the world the store holds.
    #[test]
    fn a_running_engines_snapshot_loads_the_world_its_store_holds(
        households in 1usize..5,
        wages in proptest::collection::vec((0usize..10, 0u32..8, 1i64..6000, 0usize..40), 1..50),
        page in 1usize..7,
        snapshot_after in 0usize..12,
        late_households in 0usize..3,
    ) {
        let records = wage_records(&wages, 2 * households);
        let dir = tempfile::tempdir().unwrap();
        let f = feeds(dir.path());
        let path = guardline::state::snapshot::path_in(dir.path());
        let mut engine = open_with_snapshot(dir.path(), &f.cfg, Some(path.clone()));
        engine.set_feeds(&f.cfg.feeds);
        engine.ingest(&f.roster, mapped(&roster_records(households)), now(), None).unwrap();
        engine.poll_finished("roster", true);
        let mut written = false;
        for (i, chunk) in records.chunks(page).enumerate() {
            if i == snapshot_after {
                prop_assert!(engine.save_snapshot().unwrap(), "written");
                written = true;
                if late_households > 0 {
                    // After the snapshot: new households, and a member joins the first.
                    let mut roster = roster_records(households + late_households);
                    if let Observation::Roster(e) = &mut roster[0].observation {
                        e.members.push(PersonKey([250; 16]));
                    }
                    roster[0].id = "r0-again".into();
                    engine.ingest(&f.roster, mapped(&roster), now(), None).unwrap();
                }
            }
            engine.ingest(&f.wages, mapped(chunk), now(), None).unwrap();
            engine.evaluate_touched(now()).unwrap();
        }
        engine.poll_finished("wages", true);
        engine.tick(now()).unwrap();
        if !written {
            prop_assert!(engine.save_snapshot().unwrap(), "written");
        }
        drop(engine);
        let store = store::open(dir.path()).unwrap();
        let from_file = guardline::state::snapshot::load(&path, &store, 24);
        prop_assert!(from_file.is_some(), "current, or brought up by the journal");
        let loaded = from_file.unwrap();
        if written && late_households > 0 {
            prop_assert!(loaded.caught_up > 0, "the roster came after the snapshot");
        }
        let mut from_store = World::load(&store, 24).unwrap();
        let mut from_file = loaded.world;
        same_world(&from_file, &from_store)?;
        // The person index: a wage of each member joins the same household in both.
        let members: Vec<PersonKey> =
            from_store.households().flat_map(|h| h.members.clone()).collect();
        prop_assert!(late_households == 0 || !written || members.contains(&PersonKey([250; 16])));
        from_file.begin();
        from_store.begin();
        for (i, m) in members.iter().enumerate() {
            let probe = Record {
                id: format!("probe{i}"),
                observation: Observation::Sample {
                    subject: Subject::Person(*m),
                    month: "2026-10".parse().unwrap(),
                    values: vec![(Indicator::WageIncome, 1)],
                },
            };
            prop_assert!(from_file.apply("wages", &probe, now()).is_ok());
            prop_assert!(from_store.apply("wages", &probe, now()).is_ok());
        }
        same_world(&from_file, &from_store)?;
    }
}

/// A full evaluation while a feed has not caught up defers the rules that read it; a second
/// one must not list the entities again: once the feed catches up, each is checked once.
#[test]
fn full_evaluations_while_a_feed_is_busy_check_each_entity_once_when_it_catches_up() {
    // An engine with 20 households on the roster, evaluated once, in `dir`.
    let rostered = |dir: &Path| {
        let f = feeds(dir);
        let mut engine = open(dir, &f.cfg);
        engine.set_feeds(&f.cfg.feeds);
        engine
            .ingest(&f.roster, mapped(&roster_records(20)), now(), None)
            .unwrap();
        engine.evaluate_touched(now()).unwrap();
        engine
    };
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = rostered(reference_dir.path())
        .evaluate_all(now())
        .unwrap()
        .checks;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = rostered(dir.path());
    engine.poll_started("wages");
    let mut before = 0;
    for _ in 0..3 {
        before += engine.evaluate_all(now()).unwrap().checks;
    }
    engine.poll_finished("wages", true);
    let after = engine.evaluate_touched(now()).unwrap().checks;
    assert!(reference > 0);
    assert_eq!(before, 3 * reference, "each pass checks each entity once");
    assert_eq!(after, reference, "the deferred entities, each once");
}

/// A wage for each of the first `households` households (the household rules check them).
fn one_wage_each(households: usize) -> Vec<Mapped<'static>> {
    let w: Vec<_> = (0..households).map(|h| (2 * h, 0, 3_000, h)).collect();
    mapped(&wage_records(&w, 2 * households))
}

/// The roster of `households` again, the first five households' incomes changed, then a
/// wage for each.
fn roster_again_and_wages(engine: &mut Engine, f: &Feeds, households: usize) {
    let mut records = roster_records(households);
    for r in &mut records[..5] {
        r.id.push_str("-again");
        if let Observation::Roster(e) = &mut r.observation {
            e.income_per_capita = 500_000;
        }
    }
    engine
        .ingest(&f.roster, mapped(&records), now(), None)
        .unwrap();
    engine
        .ingest(&f.wages, one_wage_each(households), now(), None)
        .unwrap();
}

/// Households touched while a full evaluation waits for a busy feed are checked once with
/// the deferred entities: a new household added to them, the others already among them.
#[test]
fn entities_touched_while_a_full_evaluation_waits_are_checked_once() {
    // Households with a wage each, their feeds polled: the household rules check them.
    let rostered = |dir: &Path, households: usize| {
        let f = feeds(dir);
        let mut engine = open(dir, &f.cfg);
        engine.set_feeds(&f.cfg.feeds);
        engine
            .ingest(&f.roster, mapped(&roster_records(households)), now(), None)
            .unwrap();
        engine
            .ingest(&f.wages, one_wage_each(households), now(), None)
            .unwrap();
        for feed in ["roster", "wages"] {
            engine.poll_started(feed);
            engine.poll_finished(feed, true);
        }
        engine.evaluate_touched(now()).unwrap();
        (engine, f)
    };
    let full = |households: usize| {
        let dir = tempfile::tempdir().unwrap();
        rostered(dir.path(), households)
            .0
            .evaluate_all(now())
            .unwrap()
            .checks
    };
    let (twenty, twenty_one) = (full(20), full(21));
    assert!(
        twenty_one > twenty,
        "{twenty} {twenty_one}: households are checked"
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, f) = rostered(dir.path(), 20);
    engine.poll_started("wages");
    engine.evaluate_all(now()).unwrap();
    // The roster again: five households' incomes change (they wait already), one is new.
    roster_again_and_wages(&mut engine, &f, 21);
    engine.poll_finished("wages", true);
    let after = engine.evaluate_touched(now()).unwrap().checks;
    assert_eq!(
        after, twenty_one,
        "the deferred entities and the new household, each once"
    );
}

/// A full evaluation while every household rule waits for its feeds (as at a start, before
/// their first polls) checks no household, and neither do the passes while they wait. Once
/// the feeds have caught up, every household is checked, once, the ones touched meanwhile
/// (and a new one) among them.
#[test]
fn households_wait_for_their_rules_unlisted_and_are_all_checked_once_ready() {
    let dir = tempfile::tempdir().unwrap();
    let f = feeds(dir.path());
    let mut engine = open(dir.path(), &f.cfg);
    engine.set_feeds(&f.cfg.feeds);
    engine
        .ingest(&f.roster, mapped(&roster_records(20)), now(), None)
        .unwrap();
    engine
        .ingest(&f.wages, one_wage_each(20), now(), None)
        .unwrap();
    for feed in ["roster", "wages"] {
        engine.poll_finished(feed, true);
    }
    engine.evaluate_touched(now()).unwrap();
    let every = engine.evaluate_all(now()).unwrap().checks;

    for feed in ["roster", "wages"] {
        engine.poll_started(feed);
    }
    let waiting = engine.evaluate_all(now()).unwrap().checks;
    assert!(
        waiting < every / 2,
        "{waiting} of {every}: no household checked"
    );
    // Five households change and one is new while they wait: still none is checked.
    roster_again_and_wages(&mut engine, &f, 21);
    assert_eq!(engine.evaluate_touched(now()).unwrap().checks, waiting);
    engine.poll_finished("roster", true);
    engine.poll_finished("wages", true);
    let after = engine.evaluate_touched(now()).unwrap().checks;
    let dir21 = tempfile::tempdir().unwrap();
    let mut fresh = open(dir21.path(), &f.cfg);
    fresh.set_feeds(&f.cfg.feeds);
    fresh
        .ingest(&f.roster, mapped(&roster_records(21)), now(), None)
        .unwrap();
    fresh
        .ingest(&f.wages, one_wage_each(21), now(), None)
        .unwrap();
    for feed in ["roster", "wages"] {
        fresh.poll_finished(feed, true);
    }
    let every21 = fresh.evaluate_all(now()).unwrap().checks;
    assert!(every21 > every, "{every} {every21}: households are checked");
    assert_eq!(after, every21, "every household once, the new one too");
    // Nothing waits any more.
    assert_eq!(engine.evaluate_touched(now()).unwrap().checks, 0);
}

#[test]
fn a_base_of_the_months_makes_the_next_snapshot_due_at_once() {
    // The last snapshot cannot be brought across a base (the runs it would need are in the
    // base), so a start after a crash would read the store: the next snapshot is due as if
    // the changes had passed the catch-up limit. A few hundred changed keys are not.
    let dir = tempfile::tempdir().unwrap();
    let f = feeds(dir.path());
    let path = guardline::state::snapshot::path_in(dir.path());
    let mut engine = open_with_snapshot(dir.path(), &f.cfg, Some(path));
    engine.set_snapshot_interval(std::time::Duration::from_secs(3600));
    engine.set_snapshot_spacing(std::time::Duration::ZERO);
    engine.set_base_rewrite_bytes(64 << 10);
    engine
        .ingest(&f.roster, mapped(&roster_records(100)), now(), None)
        .unwrap();
    assert!(engine.save_snapshot().unwrap());
    let (mut pages_before, mut bases, mut pages_after) = (0, 0, 0);
    for back in 0..24u32 {
        let wages: Vec<(usize, u32, i64, usize)> = (0..200)
            .map(|p| (p, back, 3000 + p as i64, back as usize * 1000 + p))
            .collect();
        let before = engine.world().run_bytes();
        engine
            .ingest(&f.wages, mapped(&wage_records(&wages, 200)), now(), None)
            .unwrap();
        // A base is written on a thread of its own, which ingest does not wait for.
        engine.finish_base();
        if engine.world().run_bytes() < before {
            bases += 1;
            assert!(
                engine.snapshot_if_due().unwrap(),
                "page {back}: a snapshot is due after a base"
            );
        } else {
            assert!(
                !engine.snapshot_if_due().unwrap(),
                "page {back}: {} bytes of runs are not worth a snapshot",
                engine.world().run_bytes()
            );
            if bases == 0 {
                pages_before += 1;
            } else {
                pages_after += 1;
            }
        }
    }
    assert!(
        pages_before > 1 && bases >= 1 && pages_after > 1,
        "{pages_before} pages, {bases} bases, {pages_after} pages"
    );
}

#[test]
fn a_failed_base_of_the_months_is_tried_again_only_after_a_wait() {
    // A full disk may still take sled's small commits while a base, hundreds of MB, fails:
    // it is not written again after every commit. Here its folder cannot be created.
    let dir = tempfile::tempdir().unwrap();
    let f = feeds(dir.path());
    let metrics = Arc::new(guardline::metrics::Metrics::new());
    let mut engine = open_with(dir.path(), &f.cfg, None, Arc::clone(&metrics));
    engine.set_base_rewrite_bytes(64 << 10);
    engine.set_base_retry_wait(std::time::Duration::from_secs(3600));
    let blocker = dir.path().join("store-files");
    std::fs::write(&blocker, b"not a folder").unwrap();
    engine
        .ingest(&f.roster, mapped(&roster_records(100)), now(), None)
        .unwrap();
    let bases = |outcome: &str| metrics.base_writes.with_label_values(&[outcome]).get();
    let page = |back: u32, engine: &mut Engine| {
        let wages: Vec<(usize, u32, i64, usize)> = (0..200)
            .map(|p| (p, back, 3000 + p as i64, back as usize * 1000 + p))
            .collect();
        engine
            .ingest(&f.wages, mapped(&wage_records(&wages, 200)), now(), None)
            .unwrap();
        engine.finish_base();
    };
    let mut back = 0;
    while bases("failed") == 0 {
        assert!(back < 24, "no base was due");
        page(back, &mut engine);
        back += 1;
    }
    for _ in 0..4 {
        page(back, &mut engine);
        back += 1;
    }
    assert_eq!((bases("failed"), bases("written")), (1, 0), "waiting");
    // The folder can be created again; an evaluation tick within the wait leaves it.
    std::fs::remove_file(&blocker).unwrap();
    engine.tick(now()).unwrap();
    engine.finish_base();
    assert_eq!((bases("failed"), bases("written")), (1, 0), "still waiting");
    // The wait is over: the next tick writes it, though no commit came.
    engine.set_base_retry_wait(std::time::Duration::ZERO);
    engine.tick(now()).unwrap();
    engine.finish_base();
    assert_eq!((bases("failed"), bases("written")), (1, 1));
    page(back, &mut engine);
    let households: Vec<_> = engine.world().households().cloned().collect();
    assert_eq!(households.len(), 100);
    drop(engine);
    let again = open(dir.path(), &f.cfg);
    assert_eq!(again.world().n_households(), 100);
    for h in &households {
        assert_eq!(again.world().household(&h.id), Some(h));
    }
}

/// The sled store, whose commits fail from the `fail_from`-th on (counted from 1) while
/// `fail_from` is not 0, as on a full disk; everything else goes through.
struct CommitsFailFrom {
    inner: store::SledStore,
    commits: std::sync::atomic::AtomicUsize,
    fail_from: std::sync::atomic::AtomicUsize,
}

impl Store for CommitsFailFrom {
    fn scan(&self, space: Space) -> Result<store::Entries, store::StoreError> {
        self.inner.scan(space)
    }
    fn for_each_in(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut store::Visit<'_>,
    ) -> Result<(), store::StoreError> {
        self.inner.for_each_in(space, from, to, f)
    }
    fn last_key(&self, space: Space) -> Result<Option<Vec<u8>>, store::StoreError> {
        self.inner.last_key(space)
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, store::StoreError> {
        self.inner.get(space, key)
    }
    fn commit(&self, batch: store::Batch) -> Result<(), store::StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.commits.fetch_add(1, SeqCst) + 1;
        let from = self.fail_from.load(SeqCst);
        if from != 0 && n >= from {
            return Err(store::StoreError::NotWritable {
                dir: "data".into(),
                failure: store::WriteFailure::NoSpace,
                detail: "test: no space left".into(),
            });
        }
        self.inner.commit(batch)
    }
    fn state_stamp(&self) -> Result<Option<u64>, store::StoreError> {
        self.inner.state_stamp()
    }
    fn renew_state_stamp(&self) -> Result<u64, store::StoreError> {
        self.inner.renew_state_stamp()
    }
    fn commit_unjournaled(&self, batch: store::Batch) -> Result<(), store::StoreError> {
        self.inner.commit_unjournaled(batch)
    }
    fn write_file(
        &self,
        name: &str,
        fill: &mut store::files::Fill<'_>,
    ) -> Result<u64, store::StoreError> {
        self.inner.write_file(name, fill)
    }
    fn file_path(&self, name: &str) -> std::path::PathBuf {
        self.inner.file_path(name)
    }
    fn file_names(&self) -> Result<Vec<String>, store::StoreError> {
        self.inner.file_names()
    }
    fn remove_file(&self, name: &str) -> Result<(), store::StoreError> {
        self.inner.remove_file(name)
    }
    fn next_id(&self) -> Result<u64, store::StoreError> {
        self.inner.next_id()
    }
    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
}

/// An engine on `store` with its own outbox.
fn open_on(store: Arc<dyn Store>, cfg: &Config) -> (Engine, Arc<Mutex<Outbox>>) {
    let rules = RuleSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts")).unwrap();
    let lines = rules.effective_lines(&cfg.lines);
    let outbox = Arc::new(Mutex::new(Outbox::default()));
    let engine = Engine::open(
        store,
        24,
        Arc::new(rules),
        cfg.notify.clone(),
        Templates::new(cfg.daemon.language),
        Arc::clone(&outbox),
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(guardline::metrics::Metrics::new()),
        Pseudonymizer::from_key(b"property test key 0123"),
        lines,
        None,
    )
    .unwrap();
    (engine, outbox)
}

/// 20 households on the roster, every third below the monitoring line (so its income
/// rule fires), committed.
fn roster_some_poor(engine: &mut Engine, f: &Feeds) {
    let mut records = roster_records(20);
    for (i, r) in records.iter_mut().enumerate() {
        if let Observation::Roster(entry) = &mut r.observation
            && i % 3 == 0
        {
            entry.income_per_capita = 100;
        }
    }
    engine
        .ingest(&f.roster, mapped(&records), now(), None)
        .unwrap();
    feeds_caught_up(engine, f);
}

/// Every feed declared and caught up, so every rule is ready.
fn feeds_caught_up(engine: &mut Engine, f: &Feeds) {
    engine.set_feeds(&f.cfg.feeds);
    engine.poll_finished("roster", true);
    engine.poll_finished("wages", true);
}

type Outcome = (u64, u64, u64, Vec<String>, usize, usize);

/// What a full evaluation left: checks, fired, notifications, the alerts' counts, the
/// outbox in memory and in the store.
fn outcome(
    report: &guardline::engine::EvalReport,
    engine: &Engine,
    outbox: &Mutex<Outbox>,
    store: &dyn Store,
) -> Outcome {
    let counts = engine
        .alerts()
        .counts()
        .into_iter()
        .map(|((county, rule, severity, status), n)| {
            format!("{county:?} {rule} {severity} {} {n}", status.name())
        })
        .collect();
    (
        report.checks,
        report.fired,
        report.notifications,
        counts,
        outbox.lock().unwrap().len(),
        Outbox::load(store).unwrap().len(),
    )
}

/// A full evaluation commits in parts (100,000 entities each; here a few): parts of any
/// size leave the same alerts, notifications and outbox as a pass committed at once.
#[test]
fn a_full_evaluation_in_parts_ends_like_one_committed_at_once() {
    let run = |part: Option<usize>| {
        let dir = tempfile::tempdir().unwrap();
        let f = feeds_notifying(dir.path());
        let store: Arc<dyn Store> = Arc::new(store::open(dir.path()).unwrap());
        let (mut engine, outbox) = open_on(Arc::clone(&store), &f.cfg);
        if let Some(part) = part {
            engine.set_evaluation_part(part);
        }
        roster_some_poor(&mut engine, &f);
        let report = engine.evaluate_all(now()).unwrap();
        outcome(&report, &engine, &outbox, store.as_ref())
    };
    let whole = run(None);
    assert!(whole.1 >= 7, "the poor households' alerts fire: {whole:?}");
    assert!(whole.2 >= whole.1, "each with its notifications: {whole:?}");
    assert_eq!(whole.4, whole.5, "every notification durable: {whole:?}");
    for part in [1, 3, 7] {
        assert_eq!(run(Some(part)), whole, "in parts of {part}");
    }
}

/// Log lines written while a test holds the subscriber, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A pass that fires more alerts than it logs one by one at INFO: the first
/// `TRANSITIONS_LOGGED_PER_PASS` of the pass (not of each part) at INFO, the rest at DEBUG,
/// and one INFO line that counts them all. The delivery pass of their notifications does the
/// same with `DELIVERIES_LOGGED_PER_PASS`.
///
/// It runs alone, in a process of its own: `tracing` caches per call site whether anyone
/// listens, and another test of this binary reaching the same call site on another thread
/// while this one installs its subscriber can leave that cache at "nobody" (the INFO lines
/// went missing so once, the DEBUG ones of a call site no other test reaches did not).
#[test]
fn a_pass_with_many_transitions_logs_the_first_at_info_and_counts_the_rest() {
    const ALONE: &str = "GUARDLINE_TEST_ALONE";
    if std::env::var_os(ALONE).is_none() {
        let name = "a_pass_with_many_transitions_logs_the_first_at_info_and_counts_the_rest";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads", "1", "--nocapture"])
            .env(ALONE, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text:.4000}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let limit = guardline::engine::TRANSITIONS_LOGGED_PER_PASS as usize;
    let households = limit + 300;
    let dir = tempfile::tempdir().unwrap();
    let f = feeds_notifying(dir.path());
    let store: Arc<dyn Store> = Arc::new(store::open(dir.path()).unwrap());
    let (mut engine, outbox) = open_on(Arc::clone(&store), &f.cfg);
    // Parts of 400 entities: the count carries from one part to the next.
    engine.set_evaluation_part(400);
    // More households than `roster_records` can number, one member each.
    let records: Vec<Record> = (0..households)
        .map(|h| {
            let member = [[h as u8, (h >> 8) as u8], [7; 2]].concat().repeat(4);
            let members = vec![PersonKey(member.try_into().unwrap())];
            roster_record(h, &format!("hh-{h:05}"), members, 100)
        })
        .collect();
    engine
        .ingest(&f.roster, mapped(&records), now(), None)
        .unwrap();
    feeds_caught_up(&mut engine, &f);

    let (report, text) = evaluate_all_logged(&mut engine);
    let transitions = (report.fired + report.resolved) as usize;
    assert!(transitions >= households, "{report:?}");
    assert_eq!(lines_of(&text, " INFO "), limit, "{text:.2000}");
    assert_eq!(lines_of(&text, " DEBUG "), transitions - limit);
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("logged at debug level only"))
        .collect();
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert!(summary[0].contains(" INFO "), "{}", summary[0]);
    assert!(
        summary[0].contains(&format!("transitions={transitions}")),
        "{}",
        summary[0]
    );
    assert!(
        summary[0].contains(&format!("logged={limit}")),
        "{}",
        summary[0]
    );

    // Their notifications go out in one delivery pass, which logs the first
    // DELIVERIES_LOGGED_PER_PASS one by one at INFO, the rest at DEBUG, and counts them.
    let queued = outbox.lock().unwrap().len();
    let per_pass = guardline::notify::DELIVERIES_LOGGED_PER_PASS as usize;
    assert!(queued > per_pass, "{queued} notifications");
    let text = deliver_logged(&f.cfg, &outbox, store.as_ref(), dir.path());
    assert!(
        outbox.lock().unwrap().is_empty(),
        "every notification delivered: {text:.3000}"
    );
    let delivered_at = |level: &str| {
        text.lines()
            .filter(|l| l.contains(level) && l.contains(": notification delivered "))
            .count()
    };
    assert_eq!(delivered_at(" INFO "), per_pass, "{text:.2000}");
    assert_eq!(delivered_at(" DEBUG "), queued - per_pass);
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("notifications delivered past the first"))
        .collect();
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert!(
        summary[0].contains(" INFO ")
            && summary[0].contains(&format!("delivered={queued}"))
            && summary[0].contains(&format!("logged={per_pass}")),
        "{}",
        summary[0]
    );

    // A pass within the limit logs every transition and no summary: the households recover.
    let recovered: Vec<Record> = records
        .into_iter()
        .take(10)
        .map(|mut r| {
            if let Observation::Roster(e) = &mut r.observation {
                e.income_per_capita = 1_000_000;
            }
            r.id.push_str("-again");
            r
        })
        .collect();
    engine
        .ingest(&f.roster, mapped(&recovered), now(), None)
        .unwrap();
    let (report, text) = evaluate_all_logged(&mut engine);
    assert!(report.resolved >= 10, "{report:?}");
    assert_eq!(
        lines_of(&text, " INFO "),
        (report.fired + report.resolved) as usize
    );
    assert!(!text.contains("logged at debug level only"));
    // And their deliveries, fewer than the limit, each at INFO and no count.
    let queued = outbox.lock().unwrap().len();
    assert!(queued >= 10, "{queued} notifications of recoveries");
    let text = deliver_logged(&f.cfg, &outbox, store.as_ref(), dir.path());
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(" INFO ") && l.contains(": notification delivered "))
            .count(),
        queued,
        "{text:.2000}"
    );
    assert!(!text.contains("logged at debug level only"));
}

/// One delivery pass over `outbox`, each receiver of `cfg` a file in `dir`, with the lines it
/// logged down to DEBUG.
fn deliver_logged(cfg: &Config, outbox: &Mutex<Outbox>, store: &dyn Store, dir: &Path) -> String {
    use guardline::notify::{LastSent, Receiver, deliver_due};
    let receivers = cfg
        .receivers
        .iter()
        .map(|r| {
            let path = dir.join(format!("{}.log", r.name()));
            (
                r.name().to_string(),
                Receiver::File {
                    path,
                    stdout: false,
                },
            )
        })
        .collect();
    // The notifications were made at this file's fixed `now`, which a delivery at the
    // clock's time must not take for days ago and expire.
    let mut notify = cfg.notify.clone();
    notify.expire_after = std::time::Duration::from_secs(10 * 365 * 86_400);
    let metrics = guardline::metrics::Metrics::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ((), text) = logged(|| {
        runtime.block_on(deliver_due(
            outbox,
            &receivers,
            store,
            &notify,
            &metrics,
            &mut LastSent::new(),
            &|| false,
        ));
    });
    text
}

/// A full evaluation by `engine`, with the lines it logged down to DEBUG.
fn evaluate_all_logged(engine: &mut Engine) -> (guardline::engine::EvalReport, String) {
    let (report, text) = logged(|| engine.evaluate_all(now()));
    (report.unwrap(), text)
}

/// What `f` returns, and the lines logged on this thread while it ran, down to DEBUG.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

/// The lines of one transition each at `level` (the count line says "alert transitions").
fn lines_of(text: &str, level: &str) -> usize {
    text.lines()
        .filter(|l| l.contains(level) && l.contains(": alert transition "))
        .count()
}

/// A commit that fails in the middle of a full evaluation in parts: the parts before it
/// stay committed with their notifications, the pass reports the error, and the next pass
/// (by the same engine, or by a new one after a crash) ends like one that never failed:
/// no alert or notification lost, none twice.
#[test]
fn a_full_evaluation_whose_commit_fails_part_way_loses_and_repeats_nothing() {
    let reference = {
        let dir = tempfile::tempdir().unwrap();
        let f = feeds_notifying(dir.path());
        let store: Arc<dyn Store> = Arc::new(store::open(dir.path()).unwrap());
        let (mut engine, outbox) = open_on(Arc::clone(&store), &f.cfg);
        roster_some_poor(&mut engine, &f);
        let report = engine.evaluate_all(now()).unwrap();
        outcome(&report, &engine, &outbox, store.as_ref())
    };
    for crash in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let f = feeds_notifying(dir.path());
        let failing = Arc::new(CommitsFailFrom {
            inner: store::open(dir.path()).unwrap(),
            commits: Default::default(),
            fail_from: Default::default(),
        });
        let store: Arc<dyn Store> = failing.clone();
        let (mut engine, outbox) = open_on(Arc::clone(&store), &f.cfg);
        engine.set_evaluation_part(4);
        roster_some_poor(&mut engine, &f);
        use std::sync::atomic::Ordering::SeqCst;
        // The third part's commit fails: two parts of four households are in.
        let before = failing.commits.load(SeqCst);
        failing.fail_from.store(before + 3, SeqCst);
        assert!(engine.evaluate_all(now()).is_err());
        let durable = Outbox::load(store.as_ref()).unwrap().len();
        assert!(
            durable > 0 && durable < reference.5,
            "the first parts' notifications, and only theirs: {durable} of {}",
            reference.5
        );
        failing.fail_from.store(0, SeqCst);
        let (report_engine, report_outbox, report) = if crash {
            drop(engine);
            let (mut engine, outbox) = open_on(Arc::clone(&store), &f.cfg);
            feeds_caught_up(&mut engine, &f);
            let report = engine.evaluate_all(now()).unwrap();
            (engine, outbox, report)
        } else {
            let report = engine.evaluate_all(now()).unwrap();
            (engine, outbox, report)
        };
        let after = outcome(&report, &report_engine, &report_outbox, store.as_ref());
        // The alerts and the durable outbox are those of a pass that never failed.
        assert_eq!(after.3, reference.3, "crash {crash}");
        assert_eq!(
            after.5, reference.5,
            "crash {crash}: no notification lost or twice"
        );
        // The new engine's outbox (the daemon loads the stored one beside it) gets only
        // the notifications of the parts that failed; the same engine's holds all.
        let queued = report_outbox.lock().unwrap().len();
        if crash {
            assert_eq!(queued, reference.5 - durable);
        } else {
            assert_eq!(queued, reference.4);
        }
    }
}
