use super::*;
use crate::model::{RosterEntry, china_offset};
use crate::store::SledStore;
use chrono::TimeZone;

fn now() -> DateTime<FixedOffset> {
    china_offset()
        .with_ymd_and_hms(2026, 11, 28, 12, 0, 0)
        .unwrap()
}

fn roster(id: &str, members: &[u8]) -> Record {
    roster_record(
        id,
        members.iter().map(|m| PersonKey([*m; 16])).collect(),
        10_000,
    )
}

/// A roster record of household `id` in village 632522100201, income in yuan (the rules'
/// tests use it too).
pub(crate) fn roster_record(id: &str, members: Vec<PersonKey>, income: i64) -> Record {
    Record {
        id: format!("r-{id}"),
        observation: Observation::Roster(RosterEntry {
            household: id.parse().unwrap(),
            village: "632522100201".parse().unwrap(),
            village_name: "测试村".into(),
            category: HouseholdCategory::Lifted,
            head_masked: "张*".into(),
            members,
            income_per_capita: income * 100,
        }),
    }
}

fn wage(id: &str, person: u8, month: &str, yuan: i64) -> Record {
    wage_in_fen(
        id,
        PersonKey([person; 16]),
        month.parse().unwrap(),
        yuan * 100,
    )
}

fn wage_in_fen(id: &str, person: PersonKey, month: Month, fen: i64) -> Record {
    Record {
        id: id.into(),
        observation: Observation::Sample {
            subject: Subject::Person(person),
            month,
            values: vec![(Indicator::WageIncome, fen)],
        },
    }
}

#[test]
fn samples_join_through_the_roster_and_are_idempotent() {
    let mut w = World::new(24);
    w.begin();
    assert_eq!(
        w.apply("roster", &roster("H1", &[1, 2]), now()),
        Ok(Applied::Changed)
    );
    assert_eq!(
        w.apply("wages", &wage("w1", 1, "2026-09", 3000), now()),
        Ok(Applied::Changed)
    );
    assert_eq!(
        w.apply("wages", &wage("w2", 2, "2026-09", 1000), now()),
        Ok(Applied::Changed)
    );
    assert_eq!(
        w.apply("wages", &wage("w1", 1, "2026-09", 3000), now()),
        Ok(Applied::Duplicate)
    );
    // The same id in another feed is another record.
    assert_eq!(
        w.apply("other", &wage("w1", 1, "2026-09", 5), now()),
        Ok(Applied::Changed)
    );
    let h = w.household(&"H1".parse().unwrap()).unwrap();
    assert_eq!(
        h.value(Indicator::WageIncome, "2026-09".parse().unwrap()),
        Some(400_500)
    );
    assert_eq!(
        w.apply("wages", &wage("w3", 9, "2026-09", 1), now()),
        Err(Rejection::UnknownPerson)
    );
    assert!(matches!(
        w.apply("wages", &wage("w4", 1, "2027-01", 1), now()),
        Err(Rejection::FutureMonth(_))
    ));
    assert_eq!(
        w.apply("roster", &roster("H1", &[1, 2]), now()),
        Ok(Applied::Duplicate)
    );
}

#[test]
fn buckets_roll_beyond_retention() {
    let mut w = World::new(24);
    w.apply("roster", &roster("H1", &[1]), now()).unwrap();
    for (id, month) in [("a", "2024-11"), ("b", "2025-01"), ("c", "2026-11")] {
        w.apply("wages", &wage(id, 1, month, 1), now()).unwrap();
    }
    let h = w.household(&"H1".parse().unwrap()).unwrap();
    assert_eq!(
        h.months.len(),
        3,
        "24 months before the current month are kept"
    );
    assert!(matches!(
        w.apply("wages", &wage("d", 1, "2024-10", 1), now()),
        Err(Rejection::TooOld(_))
    ));
    let mut w = World::new(12);
    w.apply("roster", &roster("H1", &[1]), now()).unwrap();
    w.apply("wages", &wage("a", 1, "2025-11", 1), now())
        .unwrap();
    w.apply("wages", &wage("b", 1, "2026-01", 1), now())
        .unwrap();
    w.apply("wages", &wage("c", 1, "2026-11", 1), now())
        .unwrap();
    let h = w.household(&"H1".parse().unwrap()).unwrap();
    assert_eq!(h.months.len(), 3);
    // A household whose newest month moves on drops what falls out of its window.
    let mut w = World::new(12);
    w.apply("roster", &roster("H1", &[1]), now()).unwrap();
    w.apply("wages", &wage("a", 1, "2025-11", 1), now())
        .unwrap();
    let later = now() + chrono::Duration::days(62);
    w.apply("wages", &wage("b", 1, "2027-01", 1), later)
        .unwrap();
    let h = w.household(&"H1".parse().unwrap()).unwrap();
    assert_eq!(h.months.len(), 1, "2025-11 is 14 months before 2027-01");
}

#[test]
fn batch_survives_reopen_and_rollback_restores_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut w = World::new(24);
    w.begin();
    w.apply("roster", &roster("H1", &[1]), now()).unwrap();
    w.apply("wages", &wage("a", 1, "2026-09", 2000), now())
        .unwrap();
    let (batch, touched) = w.take_batch();
    assert_eq!(touched.households.len(), 1);
    store.commit(batch).unwrap();

    w.begin();
    w.apply("wages", &wage("b", 1, "2026-10", 100), now())
        .unwrap();
    w.apply("roster", &roster("H2", &[2]), now()).unwrap();
    w.rollback();
    assert!(w.household(&"H2".parse().unwrap()).is_none());
    assert_eq!(
        w.latest_month(Indicator::WageIncome),
        Some("2026-09".parse().unwrap())
    );

    let again = World::load(&store, 24).unwrap();
    let h = again.household(&"H1".parse().unwrap()).unwrap();
    assert_eq!(
        h.latest(Indicator::WageIncome),
        Some(("2026-09".parse().unwrap(), 200_000))
    );
    assert_eq!(
        again.counties().next().unwrap().households_by_category[0],
        1,
        "county counts persisted"
    );
}

#[test]
fn intervals_replace_by_id() {
    let mut w = World::new(24);
    let start = now() - chrono::Duration::days(40);
    let rec = |end: Option<DateTime<FixedOffset>>| Record {
        id: "x".into(),
        observation: Observation::Interval {
            village: "632522100201".parse().unwrap(),
            id: "out-1".into(),
            kind: crate::model::IntervalKind::WaterOutage,
            start,
            end,
        },
    };
    assert_eq!(w.apply("water", &rec(None), now()), Ok(Applied::Changed));
    assert_eq!(w.apply("water", &rec(None), now()), Ok(Applied::Duplicate));
    assert_eq!(
        w.apply("water", &rec(Some(now())), now()),
        Ok(Applied::Changed)
    );
    let v = w.village(&"632522100201".parse().unwrap()).unwrap();
    assert_eq!(v.intervals.len(), 1);
    assert!(
        v.open(crate::model::IntervalKind::WaterOutage)
            .next()
            .is_none()
    );
}

#[test]
fn a_commit_writes_its_months_as_one_run_and_a_base_holds_them_without_the_pruned_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut w = World::new(6);
    w.begin();
    w.apply("roster", &roster("H1", &[1]), now()).unwrap();
    store.commit(w.take_batch().0).unwrap();
    let months: Vec<Month> = (0..10).rev().map(|i| Month::of(now()).minus(i)).collect();
    for (i, m) in months.iter().enumerate() {
        w.begin();
        // Time moves on with the months, so the oldest fall out of the retention.
        let at = china_offset()
            .from_local_datetime(&m.first_day().and_hms_opt(12, 0, 0).unwrap())
            .unwrap();
        w.apply(
            "wages",
            &wage(&format!("w{i}"), 1, &m.to_string(), 1000 + i as i64),
            at,
        )
        .unwrap();
        let (batch, _) = w.take_batch();
        // The roster part is unchanged: only the run is written.
        let puts: Vec<Space> = batch
            .ops
            .iter()
            .filter(|(_, _, v)| v.is_some())
            .map(|(s, _, _)| *s)
            .collect();
        assert_eq!(puts, vec![Space::MonthRun], "month {m}");
        store.commit(batch).unwrap();
    }
    // The roster's run and the months'.
    assert_eq!(store.scan(Space::MonthRun).unwrap().len(), 1 + months.len());
    let id: HouseholdId = "H1".parse().unwrap();
    let in_memory = w.household(&id).unwrap().clone();
    assert!(in_memory.months.len() <= 7, "{}", in_memory.months.len());
    // From the runs, pruned months deleted in order.
    let again = World::load(&store, 6).unwrap();
    assert_eq!(again.household(&id), Some(&in_memory));
    assert_eq!(
        again.latest_month(Indicator::WageIncome),
        Some(Month::of(now()))
    );
    // From a base: the runs it holds are gone, and it holds the months kept.
    w.write_base(&store).unwrap();
    assert!(store.scan(Space::MonthRun).unwrap().is_empty());
    assert!(store.scan(Space::MonthBase).unwrap().is_empty(), "a file");
    assert_eq!(base_files(&store), ["months-base.1"]);
    let again = World::load(&store, 6).unwrap();
    assert_eq!(again.household(&id), Some(&in_memory));
}

/// The names of the store's base files.
fn base_files(store: &dyn Store) -> Vec<String> {
    let names = store.file_names().unwrap();
    names
        .into_iter()
        .filter(|n| n.starts_with("months-base."))
        .collect()
}

#[test]
fn the_roster_stores_village_names_and_a_later_feed_keeps_them() {
    // Found by the crash suite: the roster named villages in memory only, so after a
    // restart a water outage created the village again without its name.
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut w = World::new(24);
    w.begin();
    w.apply("roster", &roster("H1", &[1]), now()).unwrap();
    store.commit(w.take_batch().0).unwrap();
    let code: VillageCode = "632522100201".parse().unwrap();
    let stored = store
        .get(Space::Village, code.to_string().as_bytes())
        .unwrap();
    assert!(stored.is_some(), "the roster's village is stored");

    let mut again = World::load(&store, 24).unwrap();
    assert_eq!(again.village(&code).unwrap().name, "测试村");
    again.begin();
    let outage = Record {
        id: "o1".into(),
        observation: Observation::Interval {
            village: code,
            id: "out-1".into(),
            kind: crate::model::IntervalKind::WaterOutage,
            start: now() - chrono::Duration::days(3),
            end: None,
        },
    };
    again.apply("water", &outage, now()).unwrap();
    store.commit(again.take_batch().0).unwrap();
    let last = World::load(&store, 24).unwrap();
    assert_eq!(last.village(&code).unwrap().name, "测试村");
}

/// A store of 5,000 households (more than 1,024, so the months are read in several ranges),
/// with households that begin in different months and have gaps. Answers the world written
/// and the number of month keys.
fn thousands_of_households(store: &SledStore) -> (World, usize) {
    let mut w = World::new(24);
    w.begin();
    let mut keys = 0;
    for i in 0..5_000u32 {
        let id = format!("H{i:05}");
        let person = PersonKey((i as u128 + 1).to_le_bytes());
        let mut r = roster(&id, &[]);
        if let Observation::Roster(e) = &mut r.observation {
            e.members = vec![person];
        }
        w.apply("roster", &r, now()).unwrap();
        for k in (0..(i % 5)).filter(|&k| k != 1 || i % 7 != 0) {
            let month = Month::of(now()).minus(k);
            let fen = i64::from(i) * 100 + i64::from(k);
            let record = wage_in_fen(&format!("w{i}-{k}"), person, month, fen);
            w.apply("wages", &record, now()).unwrap();
            keys += 1;
        }
    }
    store.commit(w.take_batch().0).unwrap();
    (w, keys)
}

fn assert_same_households(a: &World, b: &World) {
    assert_eq!(a.n_households(), b.n_households());
    for h in a.households() {
        assert_eq!(b.household(&h.id), Some(h), "{}", h.id);
    }
}

/// Puts every household's roster part in a key of its own, where guardline kept them before
/// the base held them (version 2, as `HOUSEHOLD_VERSION` still reads).
fn put_roster_in_keys(b: &mut Batch, w: &World) {
    for h in w.households() {
        b.put(
            Space::Household,
            h.id.as_str().as_bytes().to_vec(),
            codec::encode(HOUSEHOLD_VERSION, h),
        );
    }
}

/// Rewrites the store's months as schema 3 kept them: one key per household and month
/// (the month, then the id), with no run and no base; the roster parts in keys.
fn store_months_per_household(store: &SledStore, w: &World) {
    let mut b = Batch::default();
    put_roster_in_keys(&mut b, w);
    for space in [Space::MonthRun, Space::MonthBase] {
        for (k, _) in store.scan(space).unwrap() {
            b.delete(space, k);
        }
    }
    b.delete(Space::Meta, month_log::BASE_KEY.to_vec());
    for name in base_files(store) {
        store.remove_file(&name).unwrap();
    }
    for h in w.households() {
        for m in &h.months {
            b.put(
                Space::HouseholdMonth,
                month_key(&h.id, m.month()),
                codec::encode(HOUSEHOLD_MONTH_VERSION, &m.to_bucket()),
            );
        }
    }
    store.commit(b).unwrap();
}

#[test]
fn a_store_of_thousands_of_households_loads_the_same_from_runs_and_from_a_base() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    assert_same_households(&w, &World::load(&store, 24).unwrap());
    let base_keys = || -> Vec<Vec<u8>> {
        let keys = store.scan(Space::MonthBase).unwrap();
        keys.into_iter().map(|(k, _)| k).collect()
    };
    // Two bases: the second deletes the first's file. Files of the next generations that a
    // failed commit or a write cut short left behind (here one that is whole, of another
    // base, and a temporary one) are never read, and the next base deletes them before it
    // writes its own.
    w.write_base(&store).unwrap();
    assert_eq!(base_files(&store), ["months-base.1"]);
    assert!(base_keys().is_empty());
    let orphan = store.file_path("months-base.2");
    std::fs::copy(store.file_path("months-base.1"), &orphan).unwrap();
    std::fs::write(store.file_path("months-base.4.tmp"), b"cut short").unwrap();
    assert_same_households(&w, &World::load(&store, 24).unwrap());
    w.write_base(&store).unwrap();
    assert_eq!(base_files(&store), ["months-base.2"]);
    assert_same_households(&w, &World::load(&store, 24).unwrap());
    // A base, then runs after it.
    commit_one_more_household(&mut w, &store);
    let again = World::load(&store, 24).unwrap();
    assert_eq!(again.n_households(), 5_001);
    assert_same_households(&w, &again);
}

/// Loads the households as a start from the store does, reading the runs after the base
/// one at a time (each is more than a byte) and all at once: both as `w` holds them.
fn assert_loads_the_same_a_run_at_a_time(w: &World, store: &dyn Store) {
    // Also two runs a read, the last read of fewer when their number is odd.
    let log = month_log::LogState::read(store).unwrap();
    let runs = log.last_run - log.base.through;
    let two = (2 * log.pending_bytes()).div_ceil(runs.max(1));
    for bytes_per_read in [1, two, u64::MAX] {
        let mut loaded = World::new(24);
        month_log::load_reading(&mut loaded, store, bytes_per_read).unwrap();
        assert_same_households(w, &loaded);
    }
}

/// Runs after a base that change households in two ranges of slots (a start gathers their
/// changes by range, and lets go of a range once its households are made), remove one and
/// put another in its slot load as they were made, read one run at a time or all at once.
#[test]
fn runs_over_thousands_of_households_load_the_same_read_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    w.write_base(&store).unwrap();
    for (run, households) in [[3u32, 4_200, 4_999], [4_200, 17, 4_500], [3, 4_999, 4_098]]
        .iter()
        .enumerate()
    {
        w.begin();
        for &i in households {
            let month = Month::of(now()).minus(run as u32 + 2);
            let person = PersonKey((i as u128 + 1).to_le_bytes());
            let record = wage_in_fen(&format!("r{run}-{i}"), person, month, 7 + i64::from(i));
            w.apply("wages", &record, now()).unwrap();
        }
        store.commit(w.take_batch().0).unwrap();
    }
    remove_household(&mut w, &store, "H00017");
    // A run that removes a household the table does not hold, then changes one it does:
    // the change still goes to its own slot.
    let h = w.household(&"H04200".parse().unwrap()).unwrap().clone();
    let mut entries = Vec::new();
    month_log::household_entries(&mut entries, &h.id, &Months::default(), Some(&h));
    assert!(!entries.is_empty());
    let mut batch = Batch::default();
    let gone = [month_log::RosterChangeRef::Gone("H00017")];
    month_log::put_run(&mut batch, &mut w.log, &gone, &entries);
    store.commit(batch).unwrap();
    commit_one_more_household(&mut w, &store);
    assert_eq!(store.scan(Space::MonthRun).unwrap().len(), 6);
    assert_loads_the_same_a_run_at_a_time(&w, &store);
    assert_same_households(&w, &World::load(&store, 24).unwrap());
}

#[test]
fn runs_after_a_base_that_change_a_month_again_and_prune_months_load_as_they_were_made() {
    // A start packs each household's months once from its base and the runs' changes:
    // those must stand as the runs made them, in their order.
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut w = World::new(24);
    let this = Month::of(now());
    let commit = |w: &mut World, records: &[(&str, Record)], at: DateTime<FixedOffset>| {
        w.begin();
        for (feed, r) in records {
            w.apply(feed, r, at).unwrap();
        }
        store.commit(w.take_batch().0).unwrap();
    };
    let m = |k: u32| this.minus(k).to_string();
    commit(
        &mut w,
        &[
            ("roster", roster("A", &[1])),
            ("roster", roster("B", &[2])),
            ("roster", roster("C", &[3])),
            ("wages", wage("a2", 1, &m(2), 100)),
            ("wages", wage("a1", 1, &m(1), 110)),
            ("wages", wage("b1", 2, &m(1), 200)),
        ],
        now(),
    );
    w.write_base(&store).unwrap();
    // A's month before this one changes in two runs; B and C get this month; D is new.
    commit(
        &mut w,
        &[
            ("wages", wage("a1b", 1, &m(1), 5)),
            ("wages", wage("b0", 2, &m(0), 210)),
            ("roster", roster("D", &[4])),
            ("wages", wage("d0", 4, &m(0), 400)),
        ],
        now(),
    );
    commit(
        &mut w,
        &[
            ("wages", wage("a1c", 1, &m(1), 7)),
            ("wages", wage("c0", 3, &m(0), 300)),
            ("wages", wage("d1", 4, &m(1), 410)),
        ],
        now(),
    );
    // Two years on, A's newest month pushes its older ones out of the window: the run
    // removes them.
    let later = now() + chrono::Duration::days(731);
    let far = this.plus(24).to_string();
    commit(&mut w, &[("wages", wage("a24", 1, &far, 120))], later);
    let a = w.household(&"A".parse().unwrap()).unwrap();
    assert_eq!(a.months.len(), 1, "{:?}", a.months);
    assert_eq!(store.scan(Space::MonthRun).unwrap().len(), 3);
    let again = World::load(&store, 24).unwrap();
    assert_eq!(again.n_households(), 4);
    assert_same_households(&w, &again);
    assert_loads_the_same_a_run_at_a_time(&w, &store);
    let b = again.household(&"B".parse().unwrap()).unwrap();
    assert_eq!(b.months.len(), 2);
    // A base written now holds the same.
    w.write_base(&store).unwrap();
    assert_same_households(&w, &World::load(&store, 24).unwrap());
}

/// The households with months and their months, sorted by id, as a base holds them.
fn households_with_months(w: &World) -> Vec<(HouseholdId, Months)> {
    let mut households: Vec<(HouseholdId, Months)> = w
        .households()
        .filter(|h| !h.months.is_empty())
        .map(|h| (h.id.clone(), h.months.clone()))
        .collect();
    households.sort_by(|a, b| a.0.cmp(&b.0));
    households
}

/// Rewrites the store's months as a guardline before base files kept them: a base in keys
/// of generation 3 (4,096 households per key, version 1) and a meta key of version 1, with
/// no run and no base file; the roster parts in keys.
fn store_base_in_keys(store: &SledStore, w: &World) {
    let mut b = Batch::default();
    put_roster_in_keys(&mut b, w);
    for (k, _) in store.scan(Space::MonthRun).unwrap() {
        b.delete(Space::MonthRun, k);
    }
    for name in base_files(store) {
        store.remove_file(&name).unwrap();
    }
    let households: Vec<(String, Months)> = households_with_months(w)
        .into_iter()
        .map(|(id, months)| (id.to_string(), months))
        .collect();
    let mut bytes = 0;
    for (i, part) in households.chunks(4096).enumerate() {
        let value = codec::encode(1, &part);
        bytes += value.len() as u64;
        b.put(Space::MonthBase, month_log::base_key(3, i as u32), value);
    }
    b.put(
        Space::Meta,
        month_log::BASE_KEY.to_vec(),
        codec::encode(1, &(3u32, w.log.last_run, bytes)),
    );
    store.commit(b).unwrap();
}

#[test]
fn a_base_in_keys_is_read_until_the_next_base_moves_it_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    store_base_in_keys(&store, &w);
    assert_eq!(store.scan(Space::MonthBase).unwrap().len(), 1);
    commit_one_more_household(&mut w, &store);
    let mut again = World::load(&store, 24).unwrap();
    assert_same_households(&w, &again);
    // The next base is a file of a generation above the keys', and deletes them.
    again.write_base(&store).unwrap();
    assert_eq!(base_files(&store), ["months-base.4"]);
    assert!(store.scan(Space::MonthBase).unwrap().is_empty());
    assert!(store.scan(Space::MonthRun).unwrap().is_empty());
    assert!(
        store.scan(Space::Household).unwrap().is_empty(),
        "the base holds the roster parts"
    );
    assert_same_households(&w, &World::load(&store, 24).unwrap());
}

/// Bases of formats 1 to 3 hold months only: the roster parts are keys of their own, and
/// the runs after the base change them. The next base holds them, and the keys go.
#[test]
fn base_files_of_formats_1_to_3_are_read_with_the_roster_in_keys_until_the_next_base() {
    for format in [1, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (mut w, _) = thousands_of_households(&store);
        w.write_base(&store).unwrap();
        let households = households_with_months(&w);
        let before = std::fs::read(store.file_path("months-base.1")).unwrap();
        month_log::rewrite_base_in_format(&store, &households, format);
        let mut b = Batch::default();
        put_roster_in_keys(&mut b, &w);
        store.commit(b).unwrap();
        let after = std::fs::read(store.file_path("months-base.1")).unwrap();
        assert_ne!(before, after, "format {format}: another layout");
        // A run after the base changes a roster part the keys hold, and adds a household.
        w.begin();
        w.apply("roster", &roster("H00007", &[7, 240]), now())
            .unwrap();
        w.apply("roster", &roster("N00001", &[241]), now()).unwrap();
        let month = Month::of(now()).to_string();
        w.apply("wages", &wage("n1", 241, &month, 950), now())
            .unwrap();
        store.commit(w.take_batch().0).unwrap();
        assert_eq!(store.scan(Space::Household).unwrap().len(), 5_000);
        let mut loaded = World::load(&store, 24).unwrap();
        assert_same_world(&loaded, &w);
        loaded.write_base(&store).unwrap();
        assert!(
            store.scan(Space::Household).unwrap().is_empty(),
            "format {format}: the next base holds the roster parts"
        );
        let loaded = World::load(&store, 24).unwrap();
        assert_same_world(&loaded, &w);
        assert_same_households(&w, &loaded);
        // Packed narrow as they are read: the same words as the world that wrote them.
        for (id, months) in &households {
            assert_eq!(
                loaded.household(id).unwrap().months,
                *months,
                "format {format}: {id}"
            );
        }
    }
}

#[test]
fn a_base_file_missing_or_damaged_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    w.write_base(&store).unwrap();
    let path = store.file_path("months-base.1");
    let good = std::fs::read(&path).unwrap();
    let load_error = || match World::load(&store, 24) {
        Ok(_) => panic!("loaded from a base file that is not the base"),
        Err(e) => e.to_string(),
    };
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let cut = good[..good.len() - 10].to_vec();
    let mut other = good.clone();
    other[..8].copy_from_slice(b"GLSTATE\x01");
    let longer = [&good[..], b"x"].concat();
    for (bytes, detail) in [
        (flipped, "checksum does not match"),
        (cut, "cut short"),
        (other, "not a base of the months"),
        (longer, "bytes after the last frame"),
    ] {
        std::fs::write(&path, bytes).unwrap();
        let e = load_error();
        assert!(
            e.contains(&path.display().to_string()) && e.contains(detail) && e.contains("restore"),
            "{e}"
        );
    }
    // The file of another base in its place: the next base deletes the damaged one.
    w.write_base(&store).unwrap();
    assert!(!path.exists());
    std::fs::write(store.file_path("months-base.2"), &good).unwrap();
    let e = load_error();
    assert!(
        e.contains("generation 1") && e.contains("generation 2"),
        "{e}"
    );
    std::fs::remove_file(store.file_path("months-base.2")).unwrap();
    let e = load_error();
    assert!(e.contains("missing") && e.contains("months-base.2"), "{e}");
}

/// Adds household N1 with a wage this month, committed as one run.
fn commit_one_more_household(w: &mut World, store: &dyn Store) {
    w.begin();
    w.apply("roster", &roster("N1", &[201]), now()).unwrap();
    let month = Month::of(now()).to_string();
    w.apply("wages", &wage("n1", 201, &month, 900), now())
        .unwrap();
    store.commit(w.take_batch().0).unwrap();
}

/// The store as a full disk leaves it: commits, files and their removals go through until
/// `ok` more have, then every one is refused (a file after its first bytes); reads go on.
/// With `applied_anyway`, a refused commit is applied all the same (sled's flush failed
/// after the batch went in), as a failed commit may be.
struct DiskFillsAfter<'a> {
    inner: &'a SledStore,
    ok: std::sync::atomic::AtomicUsize,
    applied_anyway: bool,
}

impl DiskFillsAfter<'_> {
    fn write(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        match self.ok.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Ok(()),
            Err(_) => Err(StoreError::NotWritable {
                dir: "data".into(),
                failure: crate::store::WriteFailure::NoSpace,
                detail: "test: no space left".into(),
            }),
        }
    }
}

impl Store for DiskFillsAfter<'_> {
    fn scan(&self, space: Space) -> Result<crate::store::Entries, StoreError> {
        self.inner.scan(space)
    }
    fn for_each_in(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut crate::store::Visit<'_>,
    ) -> Result<(), StoreError> {
        self.inner.for_each_in(space, from, to, f)
    }
    fn last_key(&self, space: Space) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.last_key(space)
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if let Err(e) = self.write() {
            if self.applied_anyway {
                self.inner.commit(batch)?;
            }
            return Err(e);
        }
        self.inner.commit(batch)
    }
    fn state_stamp(&self) -> Result<Option<u64>, StoreError> {
        self.inner.state_stamp()
    }
    fn renew_state_stamp(&self) -> Result<u64, StoreError> {
        self.write()?;
        self.inner.renew_state_stamp()
    }
    fn commit_unjournaled(&self, batch: Batch) -> Result<(), StoreError> {
        self.write()?;
        self.inner.commit_unjournaled(batch)
    }
    fn write_file(
        &self,
        name: &str,
        fill: &mut crate::store::files::Fill<'_>,
    ) -> Result<u64, StoreError> {
        if self.write().is_ok() {
            return self.inner.write_file(name, fill);
        }
        // The disk fills in the middle of the file.
        self.inner.write_file(name, &mut |out| {
            let mut full = FullAfter {
                inner: out,
                left: 100,
            };
            fill(&mut full)
        })
    }
    fn file_path(&self, name: &str) -> std::path::PathBuf {
        self.inner.file_path(name)
    }
    fn file_names(&self) -> Result<Vec<String>, StoreError> {
        self.inner.file_names()
    }
    fn remove_file(&self, name: &str) -> Result<(), StoreError> {
        self.write()?;
        self.inner.remove_file(name)
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        self.inner.next_id()
    }
    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
}

/// A writer that takes `left` bytes, then answers that the disk is full.
struct FullAfter<'a> {
    inner: &'a mut dyn std::io::Write,
    left: usize,
}

impl std::io::Write for FullAfter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        self.inner.write(&buf[..n])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn a_base_cut_short_by_a_full_disk_changes_nothing_a_start_reads() {
    // The disk fills after 0, 1, … writes of the base: in its file (the temporary file is
    // removed), at the commit that names it (the whole file stays, named by nothing), then
    // at deleting the older base's file (the new base counts; the old file stays). A start
    // reads the same households each time, and once there is room again the next base
    // deletes what was left first, and leaves only its own file and no run.
    let mut cut_short = 0;
    for ok in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (mut w, _) = thousands_of_households(&store);
        w.write_base(&store).unwrap();
        commit_one_more_household(&mut w, &store);
        assert_eq!(store.scan(Space::MonthRun).unwrap().len(), 1);
        let full = DiskFillsAfter {
            inner: &store,
            ok: ok.into(),
            applied_anyway: false,
        };
        let written = w.write_base(&full);
        let mut again = World::load(&store, 24).unwrap();
        assert_same_households(&w, &again);
        let left = base_files(&store);
        if written.is_ok() {
            // The older base's file stayed (its deletion was refused); the next deletes it.
            assert_eq!(left, ["months-base.1", "months-base.2"]);
            assert!(store.scan(Space::MonthRun).unwrap().is_empty());
            w.write_base(&store).unwrap();
            assert_eq!(base_files(&store), ["months-base.3"]);
            assert_same_households(&w, &World::load(&store, 24).unwrap());
            break;
        }
        cut_short += 1;
        assert_eq!(left.len(), ok + 1, "{left:?}");
        assert_eq!(left[0], "months-base.1", "the base the store names");
        assert_eq!(
            store.scan(Space::MonthRun).unwrap().len(),
            1,
            "the run stays"
        );
        // As the engine does after a failed write: memory is read again from the store.
        again.write_base(&store).unwrap();
        assert_eq!(base_files(&store), ["months-base.2"]);
        assert!(store.scan(Space::MonthRun).unwrap().is_empty());
        assert_same_households(&w, &World::load(&store, 24).unwrap());
    }
    assert_eq!(cut_short, 2, "refused in the file, then at the commit");
}

#[test]
fn a_base_whose_failed_commit_was_applied_is_the_one_a_start_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    w.write_base(&store).unwrap();
    commit_one_more_household(&mut w, &store);
    let full = DiskFillsAfter {
        inner: &store,
        ok: 1.into(),
        applied_anyway: true,
    };
    assert!(w.write_base(&full).is_err());
    // The store names the new base, memory still the old one: the next base keeps the one
    // the store names until its own commit, and takes a generation above both.
    assert_eq!(base_files(&store), ["months-base.1", "months-base.2"]);
    assert!(store.scan(Space::MonthRun).unwrap().is_empty());
    assert_same_households(&w, &World::load(&store, 24).unwrap());
    w.write_base(&store).unwrap();
    assert_eq!(base_files(&store), ["months-base.3"]);
    assert_same_households(&w, &World::load(&store, 24).unwrap());
}

#[test]
fn runs_committed_while_a_base_is_written_stay_after_it() {
    // The engine writes a base on a thread of its own from the months as they were, while
    // ingest commits more runs: those stay, a start reads them after the base, and the
    // bytes since the base count from the base's last run.
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    let source = w.base_source();
    commit_one_more_household(&mut w, &store);
    let pending = w.run_bytes();
    let written = write_base_from(&source, &store).unwrap();
    w.base_written(written);
    assert_eq!(store.scan(Space::MonthRun).unwrap().len(), 1);
    assert!(
        0 < w.run_bytes() && w.run_bytes() < pending,
        "{} {pending}",
        w.run_bytes()
    );
    let again = World::load(&store, 24).unwrap();
    assert_eq!(again.n_households(), 5_001);
    assert_same_households(&w, &again);
    assert_eq!(again.run_bytes(), w.run_bytes());
    // One more run counts on from there, in memory and in the store alike.
    w.begin();
    let month = Month::of(now()).to_string();
    w.apply("wages", &wage("n1b", 201, &month, 950), now())
        .unwrap();
    store.commit(w.take_batch().0).unwrap();
    assert_eq!(World::load(&store, 24).unwrap().run_bytes(), w.run_bytes());
    // A base older than the one the world has changes nothing.
    w.write_base(&store).unwrap();
    assert_eq!(w.run_bytes(), 0);
    w.base_written(written);
    assert_eq!(w.run_bytes(), 0);
    assert_same_households(&w, &World::load(&store, 24).unwrap());
}

#[test]
fn months_stored_per_household_are_moved_into_a_base_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (w, keys) = thousands_of_households(&store);
    store_months_per_household(&store, &w);
    assert_eq!(
        store.count_prefix_for_tests(Space::HouseholdMonth.prefix()),
        keys
    );
    // Several threads read ranges of households month by month: as one range does.
    let newest = Month::of(now());
    let whole = load_months(&store, b"", None, newest, 24).unwrap();
    let mut split = load_months(&store, b"", Some(b"H02000"), newest, 24).unwrap();
    split.extend(load_months(&store, b"H02000", None, newest, 24).unwrap());
    assert_eq!(split, whole);
    assert_eq!(whole.len(), 5_000 - 5_000 / 5, "households with months");
    let again = World::load(&store, 24).unwrap();
    assert_same_households(&w, &again);
    assert_eq!(
        store.count_prefix_for_tests(Space::HouseholdMonth.prefix()),
        0,
        "moved and deleted"
    );
    assert_eq!(base_files(&store), ["months-base.1"]);
    assert_same_households(&w, &World::load(&store, 24).unwrap());
    // A move that stopped after the base was written deletes the rest at the next load,
    // and the base is what counts.
    let mut b = Batch::default();
    b.put(
        Space::HouseholdMonth,
        month_key(&"H00003".parse().unwrap(), Month::of(now())),
        codec::encode(HOUSEHOLD_MONTH_VERSION, &MonthBucket::new(Month::of(now()))),
    );
    store.commit(b).unwrap();
    assert_same_households(&w, &World::load(&store, 24).unwrap());
    assert_eq!(
        store.count_prefix_for_tests(Space::HouseholdMonth.prefix()),
        0
    );
}

#[test]
fn a_store_of_schema_version_1_is_migrated_when_opened_and_loads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (w, keys) = thousands_of_households(&SledStore::open(dir.path()).unwrap());
    // The whole store; as if a migration had stopped after moving 2,500 keys; and the same
    // once it had written the new version (which it does first).
    for (keep, version) in [(0, 1), (2_500, 1), (2_500, 2)] {
        let store = SledStore::open(dir.path()).unwrap();
        store_months_per_household(&store, &w);
        assert_eq!(store.downgrade_months_for_tests(keep), keys - keep);
        assert_eq!(store.count_prefix_for_tests(b'H'), keys - keep);
        store.write_schema_version_for_tests(version).unwrap();
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.count_prefix_for_tests(b'H'),
            0,
            "no key of version 1 is left"
        );
        assert_eq!(
            store.count_prefix_for_tests(Space::HouseholdMonth.prefix()),
            keys
        );
        assert_same_households(&w, &World::load(&store, 24).unwrap());
        assert_eq!(
            store.count_prefix_for_tests(Space::HouseholdMonth.prefix()),
            0
        );
    }
}

#[test]
fn touched_entities_of_many_pages_stay_within_twice_the_distinct_ones() {
    let mut pending = Touched::default();
    let ids: Vec<HouseholdId> = (0..10_000)
        .map(|i| format!("H{i}").parse().unwrap())
        .collect();
    for _page in 0..100 {
        pending.absorb(Touched::of_households(ids.clone()));
        assert!(pending.households.len() <= 2 * ids.len().max(1 << 16));
    }
    pending.households.sort_unstable();
    pending.households.dedup();
    assert_eq!(pending.households, {
        let mut s = ids.clone();
        s.sort_unstable();
        s
    });
    // Ids read anew for every page (equal texts at different addresses) are compared as
    // texts, and stay within the same bound.
    let mut pending = Touched::default();
    for _page in 0..100 {
        let fresh: Vec<HouseholdId> = ids.iter().map(|i| i.as_str().parse().unwrap()).collect();
        pending.absorb(Touched::of_households(fresh));
        assert!(pending.households.len() <= 2 * ids.len().max(1 << 16));
    }
}

/// The person index by household id. Checks that each slot it holds is occupied by a
/// household listing the person, and that the table finds each household in its slot.
fn person_index(w: &World) -> BTreeMap<PersonKey, String> {
    for (slot, h) in w.households.slots() {
        assert_eq!(
            w.households.slot_of(&h.id),
            Some(slot),
            "{} found in its slot",
            h.id
        );
    }
    assert_eq!(w.households.values().count(), w.n_households());
    // Every person a household lists is in the index, under a household that lists them,
    // and the index holds nobody else.
    let index: BTreeMap<PersonKey, String> = w
        .households
        .values()
        .flat_map(|h| h.members.iter())
        .map(|p| {
            let slot = w
                .persons
                .get(&w.households, p)
                .expect("a listed person is in the index");
            let h = w
                .households
                .at(slot)
                .expect("the index holds occupied slots");
            assert!(h.members.contains(p), "{} lists the person", h.id);
            (*p, h.id.to_string())
        })
        .collect();
    assert_eq!(
        w.persons.len(),
        index.len(),
        "entries for persons nobody lists"
    );
    index
}

/// The household the person index names for `p`.
fn household_of(w: &World, p: &PersonKey) -> Option<String> {
    person_index(w).remove(p)
}

/// Everything a world holds, derived indexes included.
fn assert_same_world(a: &World, b: &World) {
    assert_same_households(a, b);
    assert_eq!(a.villages, b.villages);
    assert_eq!(a.counties, b.counties);
    assert_eq!(person_index(a), person_index(b));
    assert_eq!(a.shared, b.shared);
    assert_eq!(a.latest, b.latest);
    assert_eq!(a.retention_months, b.retention_months);
}

#[test]
fn a_state_snapshot_loads_the_same_world_as_the_store_and_catches_up_with_later_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    w.begin();
    w.set_village_name("632522100201".parse::<VillageCode>().unwrap(), "村");
    w.set_at_risk(
        CountyCode::new(632_522).unwrap(),
        Month::of(now()),
        RiskSet::ALL,
        7,
    );
    store.commit(w.take_batch().0).unwrap();
    let path = snapshot::path_in(dir.path());
    assert!(snapshot::load(&path, &store, 24).is_none(), "no file yet");

    let from_store = World::load(&store, 24).unwrap();
    assert_same_world(&from_store, &w);
    snapshot::save(&from_store, &store, &path).unwrap();
    let loaded = snapshot::load(&path, &store, 24).expect("a current snapshot is used");
    assert_eq!(loaded.caught_up, 0);
    assert_same_world(&loaded.world, &from_store);
    assert_eq!(loaded.world.n_households(), 5_000);
    assert!(path.exists(), "kept for the next start");

    // Later commits: a village renamed, a county's count, new households, new months, and
    // a month so far ahead that one household's old months leave the retention.
    let mut w = loaded.world;
    for round in 0..3u32 {
        w.begin();
        w.set_village_name(
            "632522100201".parse::<VillageCode>().unwrap(),
            &format!("村{round}"),
        );
        w.set_at_risk(
            CountyCode::new(632_522).unwrap(),
            Month::of(now()),
            RiskSet::ALL,
            round,
        );
        let id = format!("N{round:05}");
        w.apply("roster", &roster(&id, &[200 + round as u8]), now())
            .unwrap();
        let month = Month::of(now()).minus(round).to_string();
        w.apply(
            "wages",
            &wage(&format!("n{round}"), 200 + round as u8, &month, 900),
            now(),
        )
        .unwrap();
        store.commit(w.take_batch().0).unwrap();
    }
    w.begin();
    let far = Month::of(now()).plus(30).to_string();
    let person = PersonKey(2u128.to_le_bytes());
    let far_wage = Record {
        id: "far".into(),
        observation: Observation::Sample {
            subject: Subject::Person(person),
            month: far.parse().unwrap(),
            values: vec![(Indicator::WageIncome, 100)],
        },
    };
    let later = now() + chrono::TimeDelta::days(31 * 30);
    w.apply("wages", &far_wage, later).unwrap();
    let (batch, _) = w.take_batch();
    assert!(
        batch.ops.iter().any(|(s, _, _)| *s == Space::MonthRun),
        "the new month and the old ones it pushed out are a run"
    );
    store.commit(batch).unwrap();

    let loaded = snapshot::load(&path, &store, 24).expect("brought up by the journal");
    // The village, the county and four runs (the three households' roster parts are in
    // theirs): each key once, however often it changed.
    assert_eq!(loaded.caught_up, 6);
    assert_same_world(&loaded.world, &World::load(&store, 24).unwrap());
    assert_same_world(&loaded.world, &w);

    // Commits of other spaces write no journal entry and leave it current.
    snapshot::save(&w, &store, &path).unwrap();
    let mut b = Batch::default();
    b.put(Space::Cursor, b"wages".to_vec(), b"42".to_vec());
    store.commit(b).unwrap();
    assert_eq!(snapshot::load(&path, &store, 24).unwrap().caught_up, 0);
    assert!(
        store.scan(Space::Journal).unwrap().is_empty(),
        "the snapshot covers the journal"
    );
}

/// The journal's changes move persons between households: the index read with the
/// snapshot follows them, as a load of the store would build it.
#[test]
fn catching_up_follows_persons_who_move_between_households() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    // Household H{i} lists person i + 1 (`thousands_of_households`).
    let p = |i: u128| PersonKey((i + 1).to_le_bytes());
    let listing = |id: &str, members: Vec<PersonKey>| roster_record(id, members, 10_000);
    // Before the snapshot: H00010 also lists H00011's person, and H00020 H00021's.
    w.begin();
    w.apply("roster", &listing("H00010", vec![p(10), p(11)]), now())
        .unwrap();
    w.apply("roster", &listing("H00020", vec![p(20), p(21)]), now())
        .unwrap();
    store.commit(w.take_batch().0).unwrap();
    assert_eq!(w.shared.len(), 2);
    let path = snapshot::path_in(dir.path());
    snapshot::save(&w, &store, &path).unwrap();
    // After: H00010 lets go of H00011's person; H00021 of its own (H00020 keeps it); H00012
    // lists nobody; H00013 a new person instead of its own; a new household H99999 lists
    // H00014's person.
    w.begin();
    for (id, members) in [
        ("H00010", vec![p(10)]),
        ("H00021", vec![]),
        ("H00012", vec![]),
        ("H00013", vec![PersonKey([250; 16])]),
        ("H99999", vec![p(14)]),
    ] {
        w.apply("roster", &listing(id, members), now()).unwrap();
    }
    store.commit(w.take_batch().0).unwrap();
    let loaded = snapshot::load(&path, &store, 24).expect("brought up by the journal");
    assert_eq!(
        loaded.caught_up, 2,
        "the run of the five households' roster parts and their county's count"
    );
    assert_same_world(&loaded.world, &World::load(&store, 24).unwrap());
    assert_same_world(&loaded.world, &w);
    let w = loaded.world;
    let of = |i: u128| household_of(&w, &p(i));
    assert_eq!(of(11).as_deref(), Some("H00011"));
    assert_eq!(of(21).as_deref(), Some("H00020"));
    assert_eq!(of(12), None);
    assert_eq!(of(13), None);
    assert_eq!(of(14).as_deref(), Some("H00014"), "the least id of the two");
    assert_eq!(w.shared.keys().collect::<Vec<_>>(), [&p(14)]);
    // The shared persons' listings hold each household's one shared id.
    let h = w.household(&"H00014".parse().unwrap()).unwrap();
    let listed = w.shared[&p(14)].first().unwrap();
    assert_eq!(listed, &h.id);
    assert!(std::ptr::eq(
        listed.as_str().as_ptr(),
        h.id.as_str().as_ptr()
    ));
}

#[test]
fn a_snapshot_taken_before_a_new_base_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    let path = snapshot::path_in(dir.path());
    snapshot::save(&w, &store, &path).unwrap();
    assert_eq!(snapshot::load(&path, &store, 24).unwrap().caught_up, 0);
    // The runs the snapshot was brought up with are gone into the base.
    w.write_base(&store).unwrap();
    assert!(snapshot::load(&path, &store, 24).is_none());
    assert!(!path.exists(), "set aside");
    assert_same_households(&w, &World::load(&store, 24).unwrap());
    // One taken after it serves, and catches up with the runs after the base.
    snapshot::save(&w, &store, &path).unwrap();
    w.begin();
    let month = Month::of(now()).to_string();
    let late = Record {
        id: "late".into(),
        observation: Observation::Sample {
            subject: Subject::Person(PersonKey(2u128.to_le_bytes())),
            month: month.parse().unwrap(),
            values: vec![(Indicator::WageIncome, 77)],
        },
    };
    assert_eq!(w.apply("wages", &late, now()), Ok(Applied::Changed));
    store.commit(w.take_batch().0).unwrap();
    let loaded = snapshot::load(&path, &store, 24).expect("brought up by the journal");
    assert_eq!(loaded.caught_up, 1, "the run");
    assert_same_households(&loaded.world, &w);
}

#[test]
fn a_snapshot_the_journal_cannot_bring_up_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    let path = snapshot::path_in(dir.path());
    snapshot::save(&w, &store, &path).unwrap();
    for round in 0..2 {
        w.begin();
        w.set_village_name(
            "632522100201".parse::<VillageCode>().unwrap(),
            &format!("村{round}"),
        );
        store.commit(w.take_batch().0).unwrap();
    }
    // The entries after the snapshot are gone (as if another snapshot's writing had
    // forgotten them and then been lost).
    let entries = store.scan(Space::Journal).unwrap();
    assert_eq!(entries.len(), 2);
    let mut b = Batch::default();
    b.delete(Space::Journal, entries[0].0.clone());
    store.commit(b).unwrap();
    assert!(snapshot::load(&path, &store, 24).is_none(), "a gap");
    assert!(!path.exists(), "set aside for good");
}

#[test]
fn a_damaged_or_foreign_state_snapshot_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (w, _) = thousands_of_households(&store);
    let path = snapshot::path_in(dir.path());
    snapshot::save(&w, &store, &path).unwrap();
    let good = std::fs::read(&path).unwrap();
    assert!(good.len() > 100_000, "{} bytes", good.len());
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for at in [0, 8, 12, 20, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        cases.push(("one byte flipped", bad));
    }
    cases.push(("cut short", good[..good.len() / 3].to_vec()));
    cases.push(("cut after a frame's length", good[..12].to_vec()));
    cases.push(("empty", Vec::new()));
    cases.push(("bytes after the end", [&good[..], b"x"].concat()));
    cases.push(("not a snapshot", b"[daemon]\nlisten = 1\n".repeat(10)));
    // A header whose count no file could hold (its checksum made to match).
    let header_len = u32::from_le_bytes(good[8..12].try_into().unwrap()) as usize;
    let huge = with_huge_count(&good, 1);
    cases.push(("a household count beyond memory", huge));
    // The file's frames: the header, two pairs of households and their months (5,000
    // households), the villages, the counties.
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut at = 8;
    while at < good.len() {
        let len = u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) as usize;
        frames.push(&good[at..at + 8 + len]);
        at += 8 + len;
    }
    assert_eq!(frames.len(), 7);
    let file = |order: &[usize]| -> Vec<u8> {
        let mut f = good[..8].to_vec();
        for &i in order {
            f.extend_from_slice(frames[i]);
        }
        f
    };
    assert_eq!(file(&[0, 1, 2, 3, 4, 5, 6]), good);
    // The first pair of frames twice, the header's count unchanged.
    cases.push(("a household twice", file(&[0, 1, 2, 1, 2, 3, 4, 5, 6])));
    cases.push((
        "the months of other households",
        file(&[0, 1, 4, 3, 2, 5, 6]),
    ));
    cases.push(("households without their months", file(&[0, 1, 3, 4, 5, 6])));
    // The first household's months under another id ("H…" with its last digit changed).
    let mut renamed = frames[2].to_vec();
    let id_len = u32::from_le_bytes(renamed[8..12].try_into().unwrap()) as usize;
    renamed[12 + id_len - 1] = if renamed[12 + id_len - 1] == b'9' {
        b'8'
    } else {
        b'9'
    };
    let crc = crc32fast::hash(&renamed[8..]);
    renamed[4..8].copy_from_slice(&crc.to_le_bytes());
    let mut f = file(&[0, 1]);
    f.extend_from_slice(&renamed);
    f.extend_from_slice(&file(&[3, 4, 5, 6])[8..]);
    cases.push(("months under another household's id", f));
    // Written in format 1 (the months in postcard, no person count in the header).
    let mut header_1 = good[16..16 + header_len].to_vec();
    assert_eq!(header_1[0], 3, "format 3");
    header_1[0] = 1;
    header_1.pop(); // the person count, 5,000: two bytes
    header_1.pop();
    let mut old = good[..8].to_vec();
    old.extend_from_slice(&(header_1.len() as u32).to_le_bytes());
    old.extend_from_slice(&crc32fast::hash(&header_1).to_le_bytes());
    old.extend_from_slice(&header_1);
    old.extend_from_slice(&good[16 + header_len..]);
    cases.push(("another format", old));
    for (what, bytes) in cases {
        std::fs::write(&path, bytes).unwrap();
        assert!(snapshot::load(&path, &store, 24).is_none(), "{what}");
        assert!(!path.exists(), "{what}: set aside for good");
    }
    // Format 2 (months packed wide only, which `Months::from_le_bytes` packs again) is
    // read: its header is format 3's. A later format is not.
    let with_format = |format: u8| -> Vec<u8> {
        let mut header = good[16..16 + header_len].to_vec();
        header[0] = format;
        let mut f = good[..8].to_vec();
        f.extend_from_slice(&(header.len() as u32).to_le_bytes());
        f.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
        f.extend_from_slice(&header);
        f.extend_from_slice(&good[16 + header_len..]);
        f
    };
    std::fs::write(&path, with_format(2)).unwrap();
    assert_same_world(&snapshot::load(&path, &store, 24).unwrap().world, &w);
    std::fs::write(&path, with_format(4)).unwrap();
    assert!(snapshot::load(&path, &store, 24).is_none(), "format 4");
    assert!(!path.exists(), "format 4: set aside for good");
    // The person count is only what the reader reserves: one beyond memory is not.
    std::fs::write(&path, with_huge_count(&good, 0)).unwrap();
    assert_same_world(&snapshot::load(&path, &store, 24).unwrap().world, &w);
    std::fs::write(&path, &good).unwrap();
    // What a stop cut short leaves goes too.
    let tmp = path.with_extension("snapshot.tmp");
    std::fs::write(&tmp, &good[..100]).unwrap();
    assert!(snapshot::load(&path, &store, 24).is_some());
    assert!(!tmp.exists());
}

/// `snapshot` with a count in its header made 2^64 − 1: the household count (`from_end` 1)
/// or the person count (0), the header's last varints. The checksum is made to match.
fn with_huge_count(snapshot: &[u8], from_end: usize) -> Vec<u8> {
    let header_len = u32::from_le_bytes(snapshot[8..12].try_into().unwrap()) as usize;
    let header = &snapshot[16..16 + header_len];
    // Where each varint starts: after a byte without the top bit.
    let mut starts: Vec<usize> = vec![0];
    starts.extend((1..header.len()).filter(|&i| header[i - 1] & 0x80 == 0));
    let at = starts[starts.len() - 1 - from_end];
    let end = starts
        .get(starts.len() - from_end)
        .copied()
        .unwrap_or(header.len());
    let mut new = header[..at].to_vec();
    new.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    new.extend_from_slice(&header[end..]);
    let mut out = snapshot[..8].to_vec();
    out.extend_from_slice(&(new.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&new).to_le_bytes());
    out.extend_from_slice(&new);
    out.extend_from_slice(&snapshot[16 + header_len..]);
    out
}

#[test]
fn writing_a_snapshot_replaces_the_old_one_which_serves_when_the_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    let path = snapshot::path_in(dir.path());
    std::fs::write(&path, b"an old snapshot").unwrap();
    snapshot::save(&w, &store, &path).unwrap();
    assert!(std::fs::read(&path).unwrap().starts_with(b"GLSTATE"));
    w.begin();
    w.set_village_name("632522100201".parse::<VillageCode>().unwrap(), "新村");
    store.commit(w.take_batch().0).unwrap();
    // The temporary file cannot be created: a folder stands in its way.
    let tmp = path.with_extension("snapshot.tmp");
    std::fs::create_dir(&tmp).unwrap();
    assert!(snapshot::save(&w, &store, &path).is_err());
    std::fs::remove_dir(&tmp).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(files, vec!["state.snapshot", "store", "store-runs"]);
    // The old one, with the journal the failed write did not forget, is still the state.
    let loaded = snapshot::load(&path, &store, 24).expect("the old snapshot");
    assert_eq!(loaded.caught_up, 1);
    assert_same_world(&loaded.world, &w);
}

#[test]
fn forgetting_the_journal_keeps_the_entries_after_the_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (mut w, _) = thousands_of_households(&store);
    let path = snapshot::path_in(dir.path());
    snapshot::save(&w, &store, &path).unwrap();
    let at_snapshot = store.state_stamp().unwrap().unwrap();
    for round in 0..3 {
        w.begin();
        w.set_village_name(
            "632522100201".parse::<VillageCode>().unwrap(),
            &format!("村{round}"),
        );
        store.commit(w.take_batch().0).unwrap();
    }
    let middle = store.state_stamp().unwrap().unwrap();
    w.begin();
    w.set_at_risk(
        CountyCode::new(632_522).unwrap(),
        Month::of(now()),
        RiskSet::ALL,
        3,
    );
    store.commit(w.take_batch().0).unwrap();
    assert_eq!(store.scan(Space::Journal).unwrap().len(), 4);
    // Up to `middle`: three entries go, the last stays; the snapshot taken before them is no
    // longer brought up (its part of the chain is gone), one taken at `middle` would be.
    assert_eq!(store.forget_state_changes_through(middle).unwrap(), 3);
    assert_eq!(store.scan(Space::Journal).unwrap().len(), 1);
    assert!(matches!(
        store.state_changes_since(middle, 100).unwrap(),
        crate::store::journal::StateChanges::Keys(k) if k.len() == 1
    ));
    assert_eq!(
        store.state_changes_since(at_snapshot, 100).unwrap(),
        crate::store::journal::StateChanges::Unknown
    );
    // A stamp no entry wrote and that is not current: nothing goes.
    assert_eq!(store.forget_state_changes_through(at_snapshot).unwrap(), 0);
    assert_eq!(store.scan(Space::Journal).unwrap().len(), 1);
}

/// The frames are postcard of the state's types (and the months' packed words, whose layout
/// `Months` owns), which says nothing of their fields: a
/// change to how one of them serializes must raise the snapshot's format (or a value
/// version), or an old snapshot would be misread. This pins the bytes of a small world.
#[test]
fn the_snapshot_format_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut w = World::new(24);
    w.begin();
    w.apply("roster", &roster("H00001", &[7, 8]), now())
        .unwrap();
    let month = Month::of(now()).minus(1).to_string();
    w.apply("wages", &wage("w1", 7, &month, 3200), now())
        .unwrap();
    w.set_at_risk(
        CountyCode::new(632_522).unwrap(),
        Month::of(now()),
        RiskSet::ALL,
        1,
    );
    store.commit(w.take_batch().0).unwrap();
    let path = snapshot::path_in(dir.path());
    snapshot::save(&w, &store, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // The header holds the store's stamp, which varies: pin what follows it.
    let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let body = &bytes[16 + header_len..];
    // County values went to version 2 (at-risk numbers per set of risk categories), which
    // the header's value versions carry: snapshots of version 1 are set aside. Format 2
    // holds the months' packed words (148 bytes in format 1); format 3 packs the wage month
    // narrow, a word less (172 bytes in format 2).
    assert_eq!(
        (body.len(), crc32fast::hash(body)),
        (164, 4_098_644_564),
        "the snapshot's frames changed: raise FORMAT in state/snapshot.rs, then pin the new bytes here"
    );
}

#[test]
fn a_store_without_a_state_stamp_gets_one_when_its_snapshot_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.state_stamp().unwrap(), None);
    let w = World::new(24);
    let path = snapshot::path_in(dir.path());
    snapshot::save(&w, &store, &path).unwrap();
    let stamp = store.state_stamp().unwrap();
    assert!(stamp.is_some());
    let loaded = snapshot::load(&path, &store, 24).expect("current");
    assert_eq!(loaded.world.n_households(), 0);
    // A renewed stamp is a link of the journal's chain, with no keys.
    assert_ne!(store.renew_state_stamp().unwrap(), stamp.unwrap());
    assert_eq!(snapshot::load(&path, &store, 24).unwrap().caught_up, 0);
}

#[test]
fn a_store_of_schema_version_2_gets_a_new_stamp_so_no_earlier_snapshot_passes_for_current() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (w, _) = thousands_of_households(&store);
    let path = snapshot::path_in(dir.path());
    snapshot::save(&w, &store, &path).unwrap();
    // As if a guardline of schema version 2, which writes state without stamping it, had
    // run on the store since.
    store.write_schema_version_for_tests(2).unwrap();
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert!(snapshot::load(&path, &store, 24).is_none());
    assert_same_world(&World::load(&store, 24).unwrap(), &w);
}

/// A county whose last household with a firing alert resolved is recorded with 0 for the
/// month, not left at its last number: county rules compare with earlier months. Each set
/// of risk categories is recorded on its own.
#[test]
fn a_county_without_firing_households_is_recorded_with_zero() {
    let mut w = World::new(24);
    let (a, b) = (
        CountyCode::new(632_522).unwrap(),
        CountyCode::new(632_523).unwrap(),
    );
    let illness = RiskSet::of([crate::model::RiskCategory::Illness]);
    let sets = [RiskSet::ALL, illness];
    let month = Month::of(now());
    w.begin();
    w.record_at_risk(
        month,
        &sets,
        &BTreeMap::from([
            ((a, RiskSet::ALL), 3),
            ((a, illness), 2),
            ((b, RiskSet::ALL), 2),
        ]),
    );
    let _ = w.take_batch();
    let at = |w: &World, c: CountyCode, set: RiskSet| {
        w.counties()
            .find(|v| v.code == c)
            .unwrap()
            .at_risk_in(month, set)
    };
    assert_eq!((at(&w, a, illness), at(&w, b, illness)), (Some(2), Some(0)));
    w.begin();
    w.record_at_risk(month, &sets, &BTreeMap::from([((a, RiskSet::ALL), 1)]));
    let (batch, _) = w.take_batch();
    assert_eq!(
        (at(&w, a, RiskSet::ALL), at(&w, b, RiskSet::ALL)),
        (Some(1), Some(0))
    );
    assert_eq!(at(&w, a, illness), Some(0));
    assert_eq!(batch.ops.len(), 2, "both counties changed and are written");
    w.begin();
    w.record_at_risk(month, &sets, &BTreeMap::from([((a, RiskSet::ALL), 1)]));
    assert!(
        w.take_batch().0.is_empty(),
        "nothing changed, nothing is written"
    );
}

/// County values stored before sets of risk categories were counted (version 1) are read,
/// their numbers as those of every category.
#[test]
fn a_version_1_county_value_is_read_as_every_category() {
    #[derive(serde::Serialize)]
    struct V1 {
        code: CountyCode,
        households_by_category: [u32; HouseholdCategory::ALL.len()],
        at_risk: Vec<(Month, u32)>,
    }
    let code = CountyCode::new(632_522).unwrap();
    let month = Month::of(now());
    let old = V1 {
        code,
        households_by_category: [5; HouseholdCategory::ALL.len()],
        at_risk: vec![(month.minus(3), 40), (month, 9)],
    };
    let bytes = codec::encode(1, &old);
    let c = decode_county(Space::County, b"632522", &bytes).unwrap();
    assert_eq!(c.households_by_category, old.households_by_category);
    assert_eq!(c.at_risk_in(month.minus(3), RiskSet::ALL), Some(40));
    assert_eq!(c.at_risk_in(month, RiskSet::ALL), Some(9));
    assert_eq!(
        c.at_risk_in(month, RiskSet::of([crate::model::RiskCategory::Other])),
        None
    );
    // Written back, it is version 2.
    let again = codec::encode(COUNTY_VERSION, &c);
    assert_eq!(again[0], 2);
    assert_eq!(decode_county(Space::County, b"632522", &again).unwrap(), c);
}

/// A person listed by two households (a roster error) belongs to the least household id,
/// whatever the order the entries came in, after a rollback and after a start from the
/// store: a person's records must not move to another household at a restart.
#[test]
fn a_person_in_two_households_belongs_to_the_least_id_in_any_order() {
    let month = Month::of(now()).minus(1).to_string();
    let who = |w: &World| household_of(w, &PersonKey([7; 16]));
    for order in [["H2", "H1"], ["H1", "H2"]] {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut w = World::new(24);
        w.begin();
        for id in order {
            w.apply("roster", &roster(id, &[7, 8]), now()).unwrap();
        }
        store.commit(w.take_batch().0).unwrap();
        assert_eq!(
            who(&w).as_deref(),
            Some("H1"),
            "entries in the order {order:?}"
        );
        assert_eq!(w.shared.len(), 2, "persons 7 and 8 are in both");
        assert_same_world(&World::load(&store, 24).unwrap(), &w);
        // A record of the person goes to H1.
        w.begin();
        w.apply("wages", &wage("w1", 7, &month, 3000), now())
            .unwrap();
        let (batch, touched) = w.take_batch();
        store.commit(batch).unwrap();
        assert_eq!(touched.households, vec!["H1".parse().unwrap()]);
        // A rolled-back change rebuilds the index the same way.
        w.begin();
        w.apply("roster", &roster("H3", &[7]), now()).unwrap();
        w.rollback();
        assert_same_world(&World::load(&store, 24).unwrap(), &w);
        // H1's entry drops the person: H2 has them, and nobody is shared any more but 8.
        w.begin();
        w.apply("roster", &roster("H1", &[8]), now()).unwrap();
        store.commit(w.take_batch().0).unwrap();
        assert_eq!(who(&w).as_deref(), Some("H2"));
        assert_eq!(
            w.shared.keys().collect::<Vec<_>>(),
            vec![&PersonKey([8; 16])]
        );
        assert_same_world(&World::load(&store, 24).unwrap(), &w);
        // And H2's too: the person is nobody's.
        w.begin();
        w.apply("roster", &roster("H2", &[8]), now()).unwrap();
        store.commit(w.take_batch().0).unwrap();
        assert_eq!(who(&w), None);
        assert_same_world(&World::load(&store, 24).unwrap(), &w);
    }
}

/// A batch's undo log keeps only the months of a household whose records changed, and the
/// whole household once its roster entry changes too, in either order: the batch written
/// to the store and a rollback must both come out as if the whole household were kept.
#[test]
fn a_batch_of_records_and_roster_changes_to_one_household_commits_and_rolls_back_whole() {
    let month = Month::of(now()).minus(1).to_string();
    let earlier = Month::of(now()).minus(2).to_string();
    let steps: [&[Record]; 3] = [
        &[wage("w2", 1, &month, 100), roster("H1", &[1, 2])],
        &[roster("H1", &[1, 3]), wage("w3", 3, &month, 50)],
        &[wage("w4", 1, &month, 7), wage("w5", 1, &earlier, 9)],
    ];
    for records in steps {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut w = World::new(24);
        w.begin();
        w.apply("roster", &roster("H1", &[1]), now()).unwrap();
        w.apply("wages", &wage("w1", 1, &earlier, 3000), now())
            .unwrap();
        store.commit(w.take_batch().0).unwrap();
        let before = World::load(&store, 24).unwrap();

        // Rolled back, the household is as before, months and roster part.
        w.begin();
        for r in records {
            w.apply("feed", r, now()).unwrap();
        }
        w.rollback();
        assert_same_world(&w, &before);

        // Committed, a start from the store sees what memory holds.
        w.begin();
        for r in records {
            assert_eq!(w.apply("feed", r, now()), Ok(Applied::Changed));
        }
        let (batch, touched) = w.take_batch();
        let roster_written = batch.ops.iter().any(|(s, k, v)| {
            *s == Space::MonthRun
                && !month_log::Run::decode(k, v.as_ref().unwrap())
                    .unwrap()
                    .roster
                    .is_empty()
        });
        let roster_changed = records
            .iter()
            .any(|r| matches!(r.observation, Observation::Roster(_)));
        assert_eq!(
            roster_written, roster_changed,
            "the roster part is written only when it changed"
        );
        assert_eq!(touched.households, vec!["H1".parse().unwrap()]);
        store.commit(batch).unwrap();
        assert_same_world(&World::load(&store, 24).unwrap(), &w);
        assert_ne!(
            w.household(&"H1".parse().unwrap()),
            before.household(&"H1".parse().unwrap())
        );
    }
}

/// A catch-up raises the newest month per indicator from the buckets it puts in place, and
/// walks every household again only when an indicator left a bucket of its newest month:
/// here the only medical month, pushed out of the retention by a wage far ahead.
#[test]
fn catching_up_follows_the_newest_months_down_as_well_as_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut w = World::new(24);
    w.begin();
    w.apply("roster", &roster("H1", &[1]), now()).unwrap();
    w.apply("roster", &roster("H2", &[2]), now()).unwrap();
    let month = Month::of(now()).minus(2);
    let medical = Record {
        id: "m1".into(),
        observation: Observation::Sample {
            subject: Subject::Person(PersonKey([1; 16])),
            month,
            values: vec![(Indicator::MedicalTotal, 5_000)],
        },
    };
    w.apply("medical", &medical, now()).unwrap();
    w.apply("wages", &wage("w2", 2, &month.to_string(), 900), now())
        .unwrap();
    store.commit(w.take_batch().0).unwrap();
    assert_eq!(w.latest_month(Indicator::MedicalTotal), Some(month));
    let path = snapshot::path_in(dir.path());
    snapshot::save(&w, &store, &path).unwrap();

    // Up: a newer wage month for H2, and a second record in H2's newest wage bucket.
    w.begin();
    let newer = Month::of(now()).minus(1);
    w.apply("wages", &wage("w3", 2, &newer.to_string(), 800), now())
        .unwrap();
    w.apply("wages", &wage("w4", 2, &newer.to_string(), 100), now())
        .unwrap();
    store.commit(w.take_batch().0).unwrap();
    let loaded = snapshot::load(&path, &store, 24).expect("brought up by the journal");
    assert_eq!(
        loaded.world.latest_month(Indicator::WageIncome),
        Some(newer)
    );
    assert_eq!(
        loaded.world.latest_month(Indicator::MedicalTotal),
        Some(month)
    );
    assert_same_world(&loaded.world, &World::load(&store, 24).unwrap());

    // Down: a wage of H1 far ahead pushes its medical month out of the retention.
    w.begin();
    let far = Month::of(now()).plus(30);
    let later = now() + chrono::TimeDelta::days(31 * 30);
    w.apply("wages", &wage("w5", 1, &far.to_string(), 700), later)
        .unwrap();
    store.commit(w.take_batch().0).unwrap();
    let loaded = snapshot::load(&path, &store, 24).expect("brought up by the journal");
    assert_eq!(loaded.world.latest_month(Indicator::WageIncome), Some(far));
    assert_eq!(loaded.world.latest_month(Indicator::MedicalTotal), None);
    assert_same_world(&loaded.world, &World::load(&store, 24).unwrap());

    // A village stored without its name takes it from its households again, as a load
    // from the store does.
    w.begin();
    let code: VillageCode = "632522100201".parse().unwrap();
    w.set_village_name(code, "");
    store.commit(w.take_batch().0).unwrap();
    let loaded = snapshot::load(&path, &store, 24).expect("brought up by the journal");
    assert_eq!(loaded.world.village(&code).unwrap().name, "测试村");
    assert_same_world(&loaded.world, &World::load(&store, 24).unwrap());
}

/// Removes household `id` by a run of its own, as a catch-up would in memory.
fn remove_household(w: &mut World, store: &SledStore, id: &str) {
    let id: HouseholdId = id.parse().unwrap();
    let h = w.household(&id).unwrap().clone();
    let mut batch = Batch::default();
    let mut entries = Vec::new();
    month_log::household_entries(&mut entries, &h.id, &h.months, None);
    let gone = [month_log::RosterChangeRef::Gone(h.id.as_str())];
    month_log::put_run(&mut batch, &mut w.log, &gone, &entries);
    store.commit(batch).unwrap();
    let mut newest = Newest {
        months: w.latest,
        walk_again: false,
    };
    w.catch_up_household(
        Space::MonthRun,
        b"",
        &id,
        None,
        &mut Vec::new(),
        &mut newest,
    )
    .unwrap();
}

/// A run may remove a household (the engine does not yet, but a run holds it and a catch-up
/// makes it): a start from the store leaves it out with its months, a household put back
/// under its id keeps none of the base's, and households that take the slots removed ones
/// left get none of their months.
#[test]
fn runs_that_remove_households_load_as_made_whoever_takes_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut w = World::new(24);
    let months: Vec<String> = (0..3)
        .map(|i| Month::of(now()).minus(i).to_string())
        .collect();
    w.begin();
    for (i, id) in ["H1", "H2", "H3"].iter().enumerate() {
        let p = 10 + i as u8;
        w.apply("roster", &roster(id, &[p]), now()).unwrap();
        w.apply("wages", &wage(&format!("b{i}"), p, &months[2], 1000), now())
            .unwrap();
    }
    store.commit(w.take_batch().0).unwrap();
    w.write_base(&store).unwrap();
    // After the base, H1 and H2 get a month more, then go (a run each).
    w.begin();
    w.apply("wages", &wage("a1", 10, &months[1], 500), now())
        .unwrap();
    w.apply("wages", &wage("a2", 11, &months[1], 600), now())
        .unwrap();
    store.commit(w.take_batch().0).unwrap();
    for id in ["H1", "H2"] {
        remove_household(&mut w, &store, id);
    }
    // Two new households take the slots they left; then H1 comes back, in a new slot.
    for part in [&["N1", "N2"][..], &["H1"][..]] {
        w.begin();
        for id in part {
            let p = if *id == "H1" {
                30
            } else {
                20 + id.as_bytes()[1]
            };
            w.apply("roster", &roster(id, &[p]), now()).unwrap();
            w.apply("wages", &wage(&format!("n{id}"), p, &months[0], 700), now())
                .unwrap();
        }
        store.commit(w.take_batch().0).unwrap();
    }
    let loaded = World::load(&store, 24).unwrap();
    assert_same_households(&w, &loaded);
    assert_loads_the_same_a_run_at_a_time(&w, &store);
    assert_eq!(loaded.n_households(), 4);
    for id in ["N1", "N2", "H1"] {
        let h = loaded.household(&id.parse().unwrap()).unwrap();
        assert_eq!(h.months.len(), 1, "{id}: its own month, none before");
    }
    assert!(loaded.household(&"H2".parse().unwrap()).is_none());
}

#[test]
fn persons_looked_up_for_a_page_are_looked_up_again_once_a_roster_record_may_have_moved_them() {
    let h1: HouseholdId = "H1".parse().unwrap();
    let h2: HouseholdId = "H2".parse().unwrap();
    let sept: Month = "2026-09".parse().unwrap();
    let wage_of = |w: &World, h: &HouseholdId| {
        w.household(h)
            .and_then(|h| h.value(Indicator::WageIncome, sept))
    };
    // A page of wages only, looked up before roster records (applied apart from the page)
    // move person 1 from H1 to H2: its wages go where the roster now puts person 1.
    let mut w = World::new(24);
    w.begin();
    w.apply("roster", &roster("H1", &[1]), now()).unwrap();
    w.apply("roster", &roster("H2", &[2]), now()).unwrap();
    let page = [wage("a", 1, "2026-09", 1), wage("b", 2, "2026-09", 2)];
    let looked_up = w.person_slots(page.iter().map(Some));
    w.apply("roster", &roster("H1", &[3]), now()).unwrap();
    w.apply("roster", &roster("H2", &[2, 1]), now()).unwrap();
    for (i, r) in page.iter().enumerate() {
        assert_eq!(
            w.apply_looked_up("wages", r, now(), &looked_up, i),
            Ok(Applied::Changed)
        );
    }
    assert_eq!([wage_of(&w, &h1), wage_of(&w, &h2)], [None, Some(300)]);

    // A page with roster records among its samples: each sample goes to the household the
    // roster lists its person in when the sample is applied.
    let mut w = World::new(24);
    w.begin();
    w.apply("roster", &roster("H1", &[1]), now()).unwrap();
    w.apply("roster", &roster("H2", &[2]), now()).unwrap();
    let page = [
        wage("a", 1, "2026-09", 1),
        roster("H1", &[3]),
        wage("b", 1, "2026-09", 2),
        roster("H2", &[2, 1]),
        wage("c", 1, "2026-09", 4),
    ];
    let looked_up = w.person_slots(page.iter().map(Some));
    let outcomes: Vec<_> = page
        .iter()
        .enumerate()
        .map(|(i, r)| w.apply_looked_up("feed", r, now(), &looked_up, i))
        .collect();
    assert_eq!(
        outcomes,
        [
            Ok(Applied::Changed),
            Ok(Applied::Changed),
            Err(Rejection::UnknownPerson),
            Ok(Applied::Changed),
            Ok(Applied::Changed)
        ]
    );
    assert_eq!([wage_of(&w, &h1), wage_of(&w, &h2)], [Some(100), Some(400)]);

    // Looked up in one batch, good in none after it.
    let looked_up = w.person_slots(page[..1].iter().map(Some));
    w.take_batch();
    w.begin();
    w.apply("roster", &roster("H2", &[2]), now()).unwrap();
    w.take_batch();
    w.begin();
    assert_eq!(
        w.apply_looked_up("feed", &wage("d", 1, "2026-09", 8), now(), &looked_up, 0),
        Err(Rejection::UnknownPerson)
    );
}

/// A run's value, its entries written straight, is what serde writes of the run: roster
/// parts put and gone, months with and without buckets, lengths of two varint bytes.
#[test]
fn a_run_written_straight_is_what_serde_writes_of_it() {
    let mut w = World::new(24);
    w.begin();
    for h in 0..150u32 {
        let id = format!("H{h:05}");
        let mut person = PersonKey([0; 16]);
        person.0[..4].copy_from_slice(&h.to_le_bytes());
        w.apply("roster", &roster_record(&id, vec![person], 10_000), now())
            .unwrap();
        for k in 0..=(h % 3) {
            let month = Month::new(2026, 1 + k).unwrap();
            let r = wage_in_fen(&format!("w{h}-{k}"), person, month, 100 + i64::from(h));
            assert_eq!(w.apply("wages", &r, now()), Ok(Applied::Changed));
        }
    }
    let households: Vec<Household> = w.households().cloned().collect();
    let roster: Vec<month_log::RosterChangeRef<'_>> = households
        .iter()
        .map(month_log::RosterChangeRef::Put)
        .chain([month_log::RosterChangeRef::Gone("H99999")])
        .collect();
    let mut entries = Vec::new();
    for h in &households {
        month_log::household_entries(&mut entries, &h.id, &Months::default(), Some(h));
    }
    let gone = households[0].months.clone();
    month_log::household_entries(&mut entries, &households[0].id, &gone, None);
    assert!(
        roster.len() > 128 && entries.len() > 128,
        "lengths of two varint bytes"
    );
    assert!(entries.iter().any(|e| e.2.is_none()), "a month gone");
    let mut batch = Batch::default();
    month_log::put_run(&mut batch, &mut w.log, &roster, &entries);
    let whole = codec::encode(month_log::RUN_VERSION, &(&roster, &entries));
    assert_eq!(batch.ops.len(), 1);
    assert_eq!(batch.ops[0].2.as_deref(), Some(&whole[..]));
    let run = month_log::Run::decode(&batch.ops[0].1, &whole).unwrap();
    assert_eq!(
        (run.roster.len(), run.months.len()),
        (roster.len(), entries.len())
    );
}

/// A record of a generated page: `None` stands for one that failed to map.
fn page_record(
    (kind, person, month, id, fen, medical): (u8, u8, u8, u8, i64, bool),
) -> Option<Record> {
    let this = Month::of(now());
    let month = match month {
        0 => this.plus(1),
        1 => this.minus(30),
        2..=4 => this.minus(1),
        _ => this.minus(2),
    };
    let id = format!("r{id}");
    let values = if medical {
        vec![
            (Indicator::MedicalOutOfPocket, fen),
            (Indicator::MedicalTotal, 3 * fen),
        ]
    } else {
        vec![(Indicator::WageIncome, fen)]
    };
    let subject = match kind {
        0 => return None,
        1 => {
            let household = format!("H{}", person % 3);
            return Some(roster(&household, &[person, person % 7 + 1]));
        }
        2 => Subject::Household(format!("H{}", person % 4).parse().unwrap()),
        _ => Subject::Person(PersonKey([person; 16])),
    };
    Some(Record {
        id,
        observation: Observation::Sample {
            subject,
            month,
            values,
        },
    })
}

/// Three households (H0: persons 1 to 3, H1: 4 and 5, H2: 6; person 7 on no roster), with
/// wages of last month and the month before already applied and committed.
fn world_for_pages() -> World {
    let mut w = World::new(24);
    w.begin();
    for (h, members) in [("H0", &[1, 2, 3][..]), ("H1", &[4, 5]), ("H2", &[6])] {
        w.apply("roster", &roster(h, members), now()).unwrap();
    }
    let this = Month::of(now());
    for (id, person, back) in [("r1", 1, 1), ("r2", 4, 1), ("r3", 2, 2)] {
        let r = wage_in_fen(id, PersonKey([person; 16]), this.minus(back), 500);
        w.apply("feed", &r, now()).unwrap();
    }
    w.take_batch();
    w
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// A page applied at once, each household's consecutive samples of a month together,
    /// answers each record and leaves the world, its batch and its rollback as the records
    /// applied one at a time do: repeated ids within a run and before it, months in the
    /// future and beyond the retention, persons on no roster, records that failed to map,
    /// and roster records that move persons between the lookup and their samples.
    #[test]
    fn a_page_applied_at_once_is_the_records_applied_one_at_a_time(
        page in proptest::collection::vec(
            (0u8..12, 1u8..8, 0u8..6, 0u8..6, -5i64..50, proptest::bool::ANY),
            0..40,
        )
    ) {
        let page: Vec<Option<Record>> = page.into_iter().map(page_record).collect();
        let refs: Vec<Option<&Record>> = page.iter().map(Option::as_ref).collect();

        let mut at_once = world_for_pages();
        at_once.begin();
        let looked_up = at_once.person_slots(refs.iter().copied());
        let outcomes = at_once.apply_page("feed", &refs, now(), &looked_up);

        let mut one_by_one = world_for_pages();
        one_by_one.begin();
        let looked_up = one_by_one.person_slots(refs.iter().copied());
        let expected: Vec<_> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| r.map(|r| one_by_one.apply_looked_up("feed", r, now(), &looked_up, i)))
            .collect();
        proptest::prop_assert_eq!(&outcomes, &expected);
        assert_same_world(&at_once, &one_by_one);
        let (batch, touched) = at_once.take_batch();
        let (expected_batch, expected_touched) = one_by_one.take_batch();
        proptest::prop_assert_eq!(format!("{:?}", batch.ops), format!("{:?}", expected_batch.ops));
        proptest::prop_assert_eq!(touched.households, expected_touched.households);

        let mut rolled_back = world_for_pages();
        rolled_back.begin();
        let looked_up = rolled_back.person_slots(refs.iter().copied());
        rolled_back.apply_page("feed", &refs, now(), &looked_up);
        rolled_back.rollback();
        assert_same_world(&rolled_back, &world_for_pages());
    }
}
