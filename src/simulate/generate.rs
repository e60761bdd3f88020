//! Generating the synthetic province.

use chrono::{Datelike, Duration, NaiveDate, TimeZone};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;

use super::records::{Records, RecordsBuilder};

use super::names::{GIVEN, SURNAMES, VILLAGE_SYLLABLES};
use crate::model::{HouseholdCategory, Month, china_offset};
use crate::regions::counties;

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub households: u32,
    /// The day the simulated data is published: wages and claims run to the month before.
    pub as_of: NaiveDate,
    /// A folder for the feeds' records; `None` keeps them in memory. Worlds of millions of
    /// households (`guardline bench`) do not fit in memory.
    pub spill: Option<PathBuf>,
}

/// A case the simulator planted on purpose, or a near miss that must not fire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planted {
    /// The rule that must fire (for a case) or stay silent (for a decoy).
    pub rule: String,
    /// `household/<id>` or `village/<code>`, as alert entities are named.
    pub entity: String,
    pub county: String,
    pub note: String,
}

/// The generated feeds, each a list of records in publication order.
pub struct SimWorld {
    pub roster: Records,
    pub wages: Records,
    pub medical: Records,
    pub water: Records,
    /// 民政: 低保, 特困 and 临时救助 changes per household.
    pub civil: Records,
    /// 水利: water-quality exceedances per village.
    pub water_quality: Records,
    /// 教育: suspected dropouts per pupil.
    pub education: Records,
    /// 住建: house safety grades per household (served as GBK CSV too).
    pub housing: Records,
    /// 残联: new disability certificates per person (served as NDJSON too).
    pub disability: Records,
    /// 应急: disaster losses per household.
    pub disaster: Records,
    /// How many villages the households live in.
    pub villages: usize,
    pub cases: Vec<Planted>,
    pub decoys: Vec<Planted>,
    /// The as-of date, and the matching HTTP `Last-Modified` value.
    pub as_of: NaiveDate,
    pub last_modified: String,
}

impl SimWorld {
    pub fn feed(&self, name: &str) -> Option<&Records> {
        match name {
            "roster" => Some(&self.roster),
            "wages" => Some(&self.wages),
            "medical" => Some(&self.medical),
            "water" => Some(&self.water),
            "civil" => Some(&self.civil),
            "water_quality" => Some(&self.water_quality),
            "education" => Some(&self.education),
            "housing" => Some(&self.housing),
            "disability" => Some(&self.disability),
            "disaster" => Some(&self.disaster),
            _ => None,
        }
    }
}

/// Thresholds the planted cases and decoys are placed around. They mirror the shipped
/// default rules in alerts/ (a test checks that every case fires and no decoy does).
const DROP_PERCENT: f64 = 50.0;
const MEDICAL_FIXED: f64 = 20_000.0;
const MEDICAL_SHARE: f64 = 0.5;
const OUTAGE_DAYS: i64 = 30;
const SPREAD_VILLAGES: usize = 3;
const MONTHS: u32 = 24;

/// The example lines of alerts/lines.toml for Qinghai, by year (yuan).
fn monitoring_line(year: i32) -> f64 {
    match year {
        ..=2024 => 7_300.0,
        2025 => 7_500.0,
        _ => 7_800.0,
    }
}
fn rural_income(year: i32) -> f64 {
    match year {
        ..=2024 => 16_600.0,
        _ => 17_600.0,
    }
}

/// Event windows of the default rules, in months ending with the current month.
const WINDOW_WATER_QUALITY: u32 = 2;
const WINDOW_DROPOUT: u32 = 3;
const WINDOW_HOUSING: u32 = 24;
const WINDOW_DISABILITY: u32 = 3;
const WINDOW_DISASTER: u32 = 3;
const DISASTER_MIN: f64 = 10_000.0;
const WINDOW_CIVIL: u32 = 3;

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn round10(x: f64) -> f64 {
    (x / 10.0).round() * 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Issues the persons' 18-digit ID numbers as the registry does: a county's 6 digits, the
/// birth date's 8, a sequence of 3 counted per county and birth date, and the check digit,
/// so no two persons share one. A birth date whose 999 sequence numbers are all taken lends
/// the person the next day's.
#[derive(Default)]
struct IdNumbers {
    issued: std::collections::HashMap<(u32, NaiveDate), u16>,
}

impl IdNumbers {
    fn issue(&mut self, county: u32, birth: NaiveDate) -> String {
        let mut date = birth;
        loop {
            let seq = self.issued.entry((county, date)).or_insert(0);
            if *seq < 999 {
                *seq += 1;
                return id_number(county, date, *seq);
            }
            date = date.succ_opt().unwrap_or(NaiveDate::MIN);
        }
    }
}

fn id_number(county: u32, birth: NaiveDate, seq: u16) -> String {
    let body = format!("{county:06}{}{seq:03}", birth.format("%Y%m%d"));
    let weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .bytes()
        .zip(weights)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

/// The households of a generated village, on average: a county has as many villages as its
/// share of the households needs.
const HOUSEHOLDS_PER_VILLAGE: u32 = 146;

/// The villages a county can have: townships 100 to 999, ten villages each.
const MAX_VILLAGES_PER_COUNTY: u32 = 9_000;

/// The 12-digit code of a county's village number `v` (below [`MAX_VILLAGES_PER_COUNTY`]):
/// the county's 6 digits, a township of 3 (ten villages to a township) and a village of 3.
/// The village digits are `200 + v` for the first 800 villages, as in every world generated
/// before 10,000,000 households needed more, and `200 + v % 800` after: townships from 180 on
/// hold only those, so no code repeats, and no part grows past 3 digits.
fn village_code(county: impl std::fmt::Display, v: u32) -> String {
    format!("{county}{:03}{:03}", 100 + v / 10, 200 + v % 800)
}

fn name(rng: &mut ChaCha8Rng) -> String {
    let mut n = SURNAMES[rng.gen_range(0..SURNAMES.len())].to_string();
    for _ in 0..rng.gen_range(1..=2) {
        n.push_str(GIVEN[rng.gen_range(0..GIVEN.len())]);
    }
    n
}

struct Person {
    id: String,
    age: i32,
    wage: Option<f64>,
}

struct Hh {
    id: String,
    county: String,
    category: HouseholdCategory,
    persons: Vec<Person>,
    /// Annual per-capita net income and household income, yuan.
    per_capita: f64,
    income: f64,
}

/// Generates the province. Fails only when the spill folder cannot be written.
pub fn generate(opts: &SimOptions) -> std::io::Result<SimWorld> {
    let spill = opts.spill.as_deref();
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let last = Month::of(opts.as_of).minus(1);
    let first = last.minus(MONTHS - 1);
    let n = opts.households.max(1);
    let county_count = counties().len() as u32;
    let per_county = n.div_ceil(HOUSEHOLDS_PER_VILLAGE * county_count).max(2);
    if per_county > MAX_VILLAGES_PER_COUNTY {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{n} households need {per_county} villages per county, and 12-digit village codes \
                 number at most {MAX_VILLAGES_PER_COUNTY}: generate at most {} households",
                u64::from(MAX_VILLAGES_PER_COUNTY * HOUSEHOLDS_PER_VILLAGE * county_count)
            ),
        ));
    }

    let mut villages: Vec<(String, String, String)> = Vec::new(); // (code, name, county)
    for c in counties() {
        for v in 0..per_county {
            let code = village_code(c.code, v);
            let vname = format!(
                "{}{}村",
                VILLAGE_SYLLABLES[rng.gen_range(0..VILLAGE_SYLLABLES.len())],
                VILLAGE_SYLLABLES[rng.gen_range(0..VILLAGE_SYLLABLES.len())]
            );
            villages.push((code, vname, c.code.to_string()));
        }
    }

    let mut roster = RecordsBuilder::new(spill, "roster")?;
    let mut households = Vec::new();
    let mut per_village = vec![0u32; villages.len()];
    let mut id_numbers = IdNumbers::default();
    for i in 0..n {
        let vi = if (i as usize) < villages.len() {
            i as usize
        } else {
            rng.gen_range(0..villages.len())
        };
        per_village[vi] += 1;
        let (vcode, vname, county) = &villages[vi];
        let hh_id = format!("{vcode}{:04}", per_village[vi]);
        let size = match rng.gen_range(0..100) {
            0..8 => 1,
            8..25 => 2,
            25..47 => 3,
            47..72 => 4,
            72..90 => 5,
            _ => 6,
        };
        let category = match rng.gen_range(0..100) {
            0..68 => HouseholdCategory::Ordinary,
            68..93 => HouseholdCategory::Lifted,
            93..96 => HouseholdCategory::UnstableLifted,
            96..99 => HouseholdCategory::NearPoor,
            _ => HouseholdCategory::SuddenHardship,
        };
        let base = match category {
            HouseholdCategory::Ordinary => 14_000.0,
            HouseholdCategory::Lifted => 11_000.0,
            _ => 7_500.0,
        };
        let line = monitoring_line(opts.as_of.year());
        // Background incomes stay 15 % above the monitoring line; some are planted below it.
        let mut per_capita = round10((base * (0.35 * normal(&mut rng)).exp()).max(line * 1.15));
        match i % 150 {
            41 => per_capita = round10(line * rng.gen_range(0.6..0.9)),
            71 => per_capita = round10(line * rng.gen_range(1.02..1.08)),
            _ => {}
        }
        let county_num: u32 = county.parse().unwrap_or(630000);
        let mut members = Vec::new();
        let mut persons = Vec::new();
        for k in 0..size {
            let age = if k == 0 {
                rng.gen_range(30..75)
            } else {
                rng.gen_range(1..80)
            };
            let birth = NaiveDate::from_ymd_opt(
                opts.as_of.year() - age,
                rng.gen_range(1..=12),
                rng.gen_range(1..=28),
            )
            .unwrap_or(opts.as_of);
            let pid = id_numbers.issue(county_num, birth);
            let pname = name(&mut rng);
            let works = (18..60).contains(&age) && rng.gen_bool(0.45);
            let wage = works.then(|| {
                round10((3_200.0 * (0.3 * normal(&mut rng)).exp()).clamp(1_200.0, 9_000.0))
            });
            members.push(json!({"id_number": pid, "name": pname, "relation": if k == 0 { "户主" } else { "家庭成员" }}));
            persons.push(Person { id: pid, age, wage });
        }
        let head_name = members[0]["name"].clone();
        roster.push(json!({
            "record_id": format!("R{:07}", i + 1),
            "hh_id": hh_id,
            "county_code": county,
            "village_code": vcode,
            "village_name": vname,
            "category": category.name_zh(),
            "head_name": head_name,
            "members": members,
            "income_per_capita": per_capita,
            "updated_at": opts.as_of.to_string(),
        }))?;
        households.push(Hh {
            id: hh_id,
            county: county.clone(),
            category,
            persons,
            per_capita,
            income: per_capita * size as f64,
        });
    }

    let mut cases = Vec::new();
    let mut decoys = Vec::new();
    let planted = |rule: &str, h: &Hh, note: String| Planted {
        rule: rule.into(),
        entity: format!("household/{}", h.id),
        county: h.county.clone(),
        note,
    };

    // Income below the monitoring line: exactly the households planted there.
    let line = monitoring_line(opts.as_of.year());
    for (i, h) in households.iter().enumerate() {
        if h.per_capita < line {
            cases.push(planted(
                "income_below_line",
                h,
                format!("人均纯收入{:.0}元，低于监测标准{line:.0}元", h.per_capita),
            ));
        } else if i % 150 == 71 {
            decoys.push(planted(
                "income_below_line",
                h,
                format!("人均纯收入{:.0}元，略高于监测标准", h.per_capita),
            ));
        }
    }

    // Wages: stable ±10 % around each earner's base; plant drops and near misses.
    // Rows by month, each (household, member, amount): publication order is by month, then
    // household, then member.
    let mut wage_rows: Vec<Vec<(u32, u8, f64)>> = vec![Vec::new(); MONTHS as usize];
    let mut earning_seen = 0usize;
    for (hi, h) in households.iter().enumerate() {
        let earners: Vec<(usize, &Person)> = h
            .persons
            .iter()
            .enumerate()
            .filter(|(_, p)| p.wage.is_some())
            .collect();
        if earners.is_empty() {
            continue;
        }
        earning_seen += 1;
        let mut table: Vec<Vec<f64>> = earners
            .iter()
            .map(|(_, p)| {
                (0..MONTHS)
                    .map(|_| round10(p.wage.unwrap_or(0.0) * rng.gen_range(0.9..1.1)))
                    .collect()
            })
            .collect();
        let total = |t: &Vec<Vec<f64>>, m: usize| t.iter().map(|r| r[m]).sum::<f64>();
        let lastm = (MONTHS - 1) as usize;
        let baseline: f64 = (lastm - 6..lastm).map(|m| total(&table, m)).sum::<f64>() / 6.0;
        let role = earning_seen % 100; // one case and one decoy per 100 earning households
        if role == 7 && baseline >= 1_500.0 {
            if earners.len() == 1 && rng.gen_bool(0.5) {
                table[0][lastm] = -1.0; // lost the job: no record this month
                cases.push(planted(
                    "wage_income_drop",
                    h,
                    "唯一务工成员失业，本月无工资记录".into(),
                ));
            } else {
                let target = baseline * rng.gen_range(0.1..0.35);
                let f = target / total(&table, lastm);
                for r in table.iter_mut() {
                    r[lastm] = round10(r[lastm] * f);
                }
                let pct = 100.0 - total(&table, lastm) / baseline * 100.0;
                cases.push(planted(
                    "wage_income_drop",
                    h,
                    format!("工资下降约{pct:.0}%"),
                ));
            }
        } else if role == 37 && baseline >= 1_500.0 {
            let target = baseline * rng.gen_range(0.62..0.72);
            let f = target / total(&table, lastm);
            for r in table.iter_mut() {
                r[lastm] = round10(r[lastm] * f);
            }
            let pct = 100.0 - total(&table, lastm) / baseline * 100.0;
            decoys.push(planted(
                "wage_income_drop",
                h,
                format!("工资仅下降约{pct:.0}%（低于{DROP_PERCENT}%阈值）"),
            ));
        }
        for ((k, _), row) in earners.iter().zip(&table) {
            for (m, v) in row.iter().enumerate() {
                if *v >= 0.0 {
                    wage_rows[m].push((hi as u32, *k as u8, *v));
                }
            }
        }
    }
    let mut wages = RecordsBuilder::new(spill, "wages")?;
    for (m, rows) in wage_rows.into_iter().enumerate() {
        let month = first.plus(m as u32).to_string();
        for (hi, k, v) in rows {
            let pid = &households[hi as usize].persons[usize::from(k)].id;
            wages.push(json!({"record_id": format!("RS{:09}", wages.pushed() + 1), "id_number": pid, "month": month, "amount": v}))?;
        }
    }

    // Medical claims: rare, modest claims; background households stay well below the lines.
    let mut claims: Vec<(NaiveDate, String, f64, f64)> = Vec::new(); // (date, person, total, oop)
    let window_first = last.minus(11);
    let rural = rural_income(opts.as_of.year() - 1);
    for (hi, h) in households.iter().enumerate() {
        let ordinary = h.category == HouseholdCategory::Ordinary;
        // The default medical rules: fixed, share of income, and the policy line by category.
        let policy = if ordinary { rural } else { 0.5 * rural };
        let limit = MEDICAL_FIXED.min(MEDICAL_SHARE * h.income).min(policy);
        let role = hi % 150;
        let mut mine: Vec<(NaiveDate, String, f64, f64)> = Vec::new();
        for p in &h.persons {
            for m in 0..MONTHS {
                if rng.gen_bool(0.02) {
                    let month = first.plus(m);
                    let total = round2(1_500.0 * (0.8 * normal(&mut rng)).exp());
                    let oop = round2(total * rng.gen_range(0.15..0.4));
                    mine.push((day_in(&mut rng, month), p.id.clone(), total, oop));
                }
            }
        }
        // Keep any 12 months of the background below 60 % of the household's line.
        let sum: f64 = mine.iter().map(|c| c.3).sum();
        if sum > 0.6 * limit {
            let f = 0.6 * limit / sum;
            for c in mine.iter_mut() {
                c.3 = round2(c.3 * f * 0.99);
                c.2 = c.2.max(c.3);
            }
        }
        let patient = h.persons[0].id.clone();
        type Claim = (NaiveDate, String, f64, f64);
        let heavy = |rng: &mut ChaCha8Rng,
                     mine: &mut Vec<Claim>,
                     months_back: std::ops::Range<u32>,
                     oop_total: f64| {
            let parts = rng.gen_range(2..=4);
            for _ in 0..parts {
                let month = last.minus(rng.gen_range(months_back.clone()));
                let oop = round2(oop_total / f64::from(parts));
                let total = round2(oop / rng.gen_range(0.3..0.5));
                mine.push((day_in(rng, month), patient.clone(), total, oop));
            }
        };
        match role {
            11 => {
                let oop = rng.gen_range(25_000.0..60_000.0);
                heavy(&mut rng, &mut mine, 0..11, oop);
            }
            61 if h.income < 2.0 * MEDICAL_FIXED => {
                let oop = h.income * rng.gen_range(0.6..0.9);
                heavy(&mut rng, &mut mine, 0..11, oop);
            }
            91 => {
                // Near miss: high costs, but under the line in the window.
                let in_window: f64 = mine
                    .iter()
                    .filter(|c| Month::of(c.0) >= window_first)
                    .map(|c| c.3)
                    .sum();
                let oop = (limit * rng.gen_range(0.75..0.9) - in_window).max(0.0);
                heavy(&mut rng, &mut mine, 0..11, oop);
                decoys.push(planted(
                    "medical_burden",
                    h,
                    format!("自付接近但低于标准{limit:.0}元"),
                ));
            }
            121 => {
                // Near miss: very heavy costs, but 14-20 months ago, outside the 12-month window.
                heavy(&mut rng, &mut mine, 14..20, 40_000.0);
                decoys.push(planted(
                    "medical_burden",
                    h,
                    "大额自付发生在12个月之前".into(),
                ));
            }
            _ => {}
        }
        // Which medical rules the household's 12 months of costs cross, in fen as guardline
        // counts them.
        let window_fen: i64 = mine
            .iter()
            .filter(|c| Month::of(c.0) >= window_first && Month::of(c.0) <= last)
            .map(|c| (c.3 * 100.0).round() as i64)
            .sum();
        let income_fen = (h.per_capita * 100.0).round() as i64 * h.persons.len() as i64;
        let note = format!("12个月自付{:.0}元", window_fen as f64 / 100.0);
        if window_fen > (MEDICAL_FIXED * 100.0) as i64
            || window_fen > (income_fen as f64 * MEDICAL_SHARE).round() as i64
        {
            cases.push(planted("medical_burden", h, note.clone()));
        }
        if window_fen > (policy * 100.0).round() as i64 {
            let rule = if ordinary {
                "medical_burden_policy_ordinary"
            } else {
                "medical_burden_policy_lifted"
            };
            cases.push(planted(rule, h, note));
        }
        claims.extend(mine);
    }
    claims.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut medical = RecordsBuilder::new(spill, "medical")?;
    for (i, (d, pid, total, oop)) in claims.into_iter().enumerate() {
        medical.push(json!({"claim_id": format!("YB{:09}", i + 1), "id_number": pid, "settle_date": d.to_string(),
               "total_cost": total, "fund_paid": round2(total - oop), "out_of_pocket": oop}))?;
    }

    // Water: short repaired interruptions everywhere; a few long open ones and near misses.
    let tz = china_offset();
    let at = |days_ago: i64, hour: u32| {
        let d = opts.as_of - Duration::days(days_ago);
        tz.from_local_datetime(&d.and_hms_opt(hour, 0, 0).unwrap_or_default())
            .single()
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    };
    let mut events = Vec::new();
    for (vi, (vcode, _, county)) in villages.iter().enumerate() {
        let village = |note: String| Planted {
            rule: "water_outage_long".into(),
            entity: format!("village/{vcode}"),
            county: county.clone(),
            note,
        };
        for _ in 0..rng.gen_range(0..3) {
            let start = rng.gen_range(30..600);
            let len = rng.gen_range(1..6);
            events.push((start, vcode.clone(), Some(start - len), "管网维修"));
        }
        match vi % 29 {
            3 => {
                let d = rng.gen_range(OUTAGE_DAYS + 5..OUTAGE_DAYS + 50);
                events.push((d, vcode.clone(), None, "水源枯竭"));
                cases.push(village(format!("停水{d}天未恢复")));
            }
            13 => {
                let d = rng.gen_range(3..OUTAGE_DAYS - 8);
                events.push((d, vcode.clone(), None, "管道冻裂"));
                decoys.push(village(format!("停水{d}天，未到阈值")));
            }
            23 => {
                let d = rng.gen_range(OUTAGE_DAYS + 10..OUTAGE_DAYS + 40);
                events.push((d, vcode.clone(), Some(rng.gen_range(2..8)), "水厂检修"));
                decoys.push(village(format!("曾停水约{d}天，已恢复")));
            }
            _ => {}
        }
        // Contiguous outages: the first villages of one township out of water for days
        // (one county in 15), and a near miss with one village fewer (another county in 15).
        let (ci, v) = (vi / per_county as usize, vi % per_county as usize);
        if per_county as usize >= SPREAD_VILLAGES
            && ((ci % 15 == 7 && v < SPREAD_VILLAGES) || (ci % 15 == 11 && v + 1 < SPREAD_VILLAGES))
        {
            events.push((rng.gen_range(2..6), vcode.clone(), None, "供水管网冻裂"));
        }
    }
    // Which townships have 3 or more villages with an open outage (all are 2 days or older).
    let mut open_by_township: std::collections::BTreeMap<String, std::collections::BTreeSet<&str>> =
        Default::default();
    for (_, vcode, end, _) in &events {
        if end.is_none() {
            open_by_township
                .entry(vcode[..9].to_string())
                .or_default()
                .insert(vcode.as_str());
        }
    }
    for (township, open) in &open_by_township {
        let spread = |note: String| Planted {
            rule: "water_outage_spread".into(),
            entity: format!("township/{township}"),
            county: township[..6].to_string(),
            note,
        };
        if open.len() >= SPREAD_VILLAGES {
            cases.push(spread(format!("{}个村同时停水", open.len())));
        } else if open.len() + 1 == SPREAD_VILLAGES {
            decoys.push(spread(format!("{}个村同时停水，未到阈值", open.len())));
        }
    }
    events.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut water = RecordsBuilder::new(spill, "water")?;
    for (i, (start, vcode, end, cause)) in events.into_iter().enumerate() {
        water.push(
            json!({"event_id": format!("SL{:07}", i + 1), "village_code": vcode,
               "start_time": at(start, 8), "end_time": end.map(|e| at(e, 18)), "cause": cause}),
        )?;
    }

    let depts = departments(&mut rng, opts, &households, &villages);
    cases.extend(depts.cases.iter().cloned());

    let records = |name: &str, v: Vec<Value>| -> std::io::Result<Records> {
        let mut b = RecordsBuilder::new(spill, name)?;
        for r in v {
            b.push(r)?;
        }
        b.finish()
    };
    Ok(SimWorld {
        roster: roster.finish()?,
        wages: wages.finish()?,
        medical: medical.finish()?,
        water: water.finish()?,
        civil: records("civil", depts.civil)?,
        water_quality: records("water_quality", depts.water_quality)?,
        education: records("education", depts.education)?,
        housing: records("housing", depts.housing)?,
        disability: records("disability", depts.disability)?,
        disaster: records("disaster", depts.disaster)?,
        villages: villages.len(),
        cases,
        decoys,
        as_of: opts.as_of,
        last_modified: opts
            .as_of
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().format("%a, %d %b %Y %H:%M:%S GMT").to_string())
            .unwrap_or_default(),
    })
}

struct Departments {
    /// The households and villages the default event rules must warn about.
    cases: Vec<Planted>,
    civil: Vec<Value>,
    water_quality: Vec<Value>,
    education: Vec<Value>,
    housing: Vec<Value>,
    disability: Vec<Value>,
    disaster: Vec<Value>,
}

/// The event feeds of the other departments, with realistic rates over the 24 months.
fn departments(
    rng: &mut ChaCha8Rng,
    opts: &SimOptions,
    households: &[Hh],
    villages: &[(String, String, String)],
) -> Departments {
    let span_days = 730;
    let day = |rng: &mut ChaCha8Rng| opts.as_of - Duration::days(rng.gen_range(1..span_days));
    let mut civil = Vec::new();
    let mut education = Vec::new();
    let mut housing = Vec::new();
    let mut disability = Vec::new();
    let mut disaster = Vec::new();
    for h in households {
        let monitored = !matches!(h.category, HouseholdCategory::Ordinary);
        if monitored && rng.gen_bool(0.06) {
            civil.push((
                day(rng),
                json!({"hh_id": h.id, "event": "纳入低保", "amount": 0}),
            ));
        }
        if monitored && rng.gen_bool(0.01) {
            civil.push((
                day(rng),
                json!({"hh_id": h.id, "event": "取消低保", "amount": 0}),
            ));
        }
        if rng.gen_bool(0.004) {
            civil.push((
                day(rng),
                json!({"hh_id": h.id, "event": "纳入特困", "amount": 0}),
            ));
        }
        if rng.gen_bool(0.03) {
            civil.push((day(rng), json!({"hh_id": h.id, "event": "临时救助", "amount": round10(rng.gen_range(500.0..3000.0))})));
        }
        for p in &h.persons {
            if (6..16).contains(&p.age) && rng.gen_bool(0.004) {
                education.push((
                    day(rng),
                    json!({"student_id_number": p.id, "status": "疑似辍学", "school": "中心学校"}),
                ));
            }
            if rng.gen_bool(0.003) {
                let level = ["一级", "二级", "三级", "四级"][rng.gen_range(0..4)];
                let kind = ["肢体", "视力", "听力", "智力"][rng.gen_range(0..4)];
                disability.push((
                    day(rng),
                    json!({"id_number": p.id, "level": level, "type": kind}),
                ));
            }
        }
        if rng.gen_bool(0.08) {
            let grade = match rng.gen_range(0..100) {
                0..60 => "A",
                60..90 => "B",
                90..98 => "C",
                _ => "D",
            };
            housing.push((day(rng), json!({"hh_id": h.id, "grade": grade})));
        }
        if rng.gen_bool(0.01) {
            let kind = ["冰雹", "洪涝", "雪灾", "地震", "干旱"][rng.gen_range(0..5)];
            disaster.push((day(rng), json!({"hh_id": h.id, "disaster": kind, "loss": round10(rng.gen_range(1000.0..40000.0))})));
        }
    }
    let mut water_quality = Vec::new();
    for (code, _, _) in villages {
        if rng.gen_bool(0.05) {
            let item = ["菌落总数", "浑浊度", "氟化物", "砷"][rng.gen_range(0..4)];
            water_quality.push((
                day(rng),
                json!({"village_code": code, "item": item, "standard": "GB 5749-2022"}),
            ));
        }
    }
    // The cases of the default event rules, from the events generated above.
    let now = Month::of(opts.as_of);
    let within = |d: &NaiveDate, months: u32| Month::of(*d) >= now.minus(months - 1);
    let person_household: std::collections::HashMap<&str, &Hh> = households
        .iter()
        .flat_map(|h| h.persons.iter().map(move |p| (p.id.as_str(), h)))
        .collect();
    let by_id: std::collections::HashMap<&str, &Hh> =
        households.iter().map(|h| (h.id.as_str(), h)).collect();
    let mut found: std::collections::BTreeMap<(&str, String), (String, String)> =
        Default::default();
    let mut add = |rule: &'static str, h: &Hh, note: &str| {
        found
            .entry((rule, format!("household/{}", h.id)))
            .or_insert((h.county.clone(), note.to_string()));
    };
    for (d, r) in &civil {
        if r["event"] == "取消低保"
            && within(d, WINDOW_CIVIL)
            && let Some(h) = r["hh_id"].as_str().and_then(|id| by_id.get(id))
        {
            add("subsistence_cancelled", h, "近期取消低保");
        }
    }
    for (d, r) in &education {
        if within(d, WINDOW_DROPOUT)
            && let Some(h) = r["student_id_number"]
                .as_str()
                .and_then(|id| person_household.get(id))
        {
            add("dropout", h, "子女疑似辍学");
        }
    }
    for (d, r) in &disability {
        if within(d, WINDOW_DISABILITY)
            && let Some(h) = r["id_number"]
                .as_str()
                .and_then(|id| person_household.get(id))
        {
            add("new_disability", h, "新办残疾证");
        }
    }
    for (d, r) in &housing {
        if within(d, WINDOW_HOUSING)
            && matches!(r["grade"].as_str(), Some("C" | "D"))
            && let Some(h) = r["hh_id"].as_str().and_then(|id| by_id.get(id))
        {
            add("unsafe_housing", h, "住房鉴定为C/D级");
        }
    }
    let mut losses: std::collections::BTreeMap<&str, f64> = Default::default();
    for (d, r) in &disaster {
        if within(d, WINDOW_DISASTER) {
            *losses
                .entry(r["hh_id"].as_str().unwrap_or_default())
                .or_default() += r["loss"].as_f64().unwrap_or(0.0);
        }
    }
    for (id, loss) in losses {
        if loss >= DISASTER_MIN
            && let Some(h) = by_id.get(id)
        {
            add("disaster_loss", h, "近期灾害损失超过1万元");
        }
    }
    let mut cases: Vec<Planted> = found
        .into_iter()
        .map(|((rule, entity), (county, note))| Planted {
            rule: rule.into(),
            entity,
            county,
            note,
        })
        .collect();
    let mut exceeding: std::collections::BTreeSet<&str> = Default::default();
    for (d, r) in &water_quality {
        if within(d, WINDOW_WATER_QUALITY) {
            exceeding.extend(r["village_code"].as_str());
        }
    }
    for v in exceeding {
        cases.push(Planted {
            rule: "water_quality".into(),
            entity: format!("village/{v}"),
            county: v[..6].to_string(),
            note: "近期水质超标".into(),
        });
    }
    let finish = |mut v: Vec<(NaiveDate, Value)>, prefix: &str, date_field: &str| -> Vec<Value> {
        v.sort_by_key(|a| a.0);
        v.into_iter()
            .enumerate()
            .map(|(i, (d, mut r))| {
                if let Some(o) = r.as_object_mut() {
                    o.insert("record_id".into(), json!(format!("{prefix}{:08}", i + 1)));
                    o.insert(date_field.into(), json!(d.to_string()));
                }
                r
            })
            .collect()
    };
    Departments {
        cases,
        civil: finish(civil, "MZ", "date"),
        water_quality: finish(water_quality, "SZ", "sample_date"),
        education: finish(education, "JY", "date"),
        housing: finish(housing, "ZJ", "assessed_on"),
        disability: finish(disability, "CL", "issued_on"),
        disaster: finish(disaster, "YJ", "date"),
    }
}

fn day_in(rng: &mut ChaCha8Rng, m: Month) -> NaiveDate {
    m.first_day() + Duration::days(rng.gen_range(0..28))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            households: 3000,
            as_of: NaiveDate::from_ymd_opt(2026, 11, 28).unwrap(),
            spill: None,
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = generate(&opts(7)).unwrap();
        let b = generate(&opts(7)).unwrap();
        let all = |r: &Records| r.lines(0..r.len()).unwrap();
        assert_eq!(all(&a.wages), all(&b.wages));
        assert_eq!(a.cases, b.cases);
        let c = generate(&opts(8)).unwrap();
        assert_ne!(all(&a.roster), all(&c.roster));
    }

    #[test]
    fn village_codes_are_12_digits_and_unique_up_to_the_limit() {
        let codes: Vec<String> = (0..MAX_VILLAGES_PER_COUNTY)
            .map(|v| village_code("522701", v))
            .collect();
        assert!(codes.iter().all(|c| c.len() == 12
            && c.bytes().all(|b| b.is_ascii_digit())
            && c.starts_with("522701")));
        let unique: std::collections::BTreeSet<&String> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
        // The first 800 keep the codes of the worlds generated before.
        assert_eq!(village_code("522701", 0), "522701100200");
        assert_eq!(village_code("522701", 799), "522701179999");
        // 10,000,000 households need 1,523 villages per county (68,535 in all).
        assert_eq!(village_code("522701", 1521), "522701252921");
        // And every code the validator accepts.
        for code in [&codes[0], &codes[800], &codes[8999]] {
            assert!(code.parse::<crate::model::VillageCode>().is_ok(), "{code}");
        }
    }

    #[test]
    fn a_world_with_more_villages_than_codes_is_refused_before_it_is_generated() {
        let mut o = opts(1);
        o.households = 60_000_000;
        let e = generate(&o).err().expect("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("59130000 households"), "{e}");
    }

    /// ISO 7064 MOD 11-2 over all 18 characters, computed apart from the generator's way.
    fn id_number_is_valid(id: &str) -> bool {
        id.len() == 18
            && id
                .char_indices()
                .all(|(i, c)| c.is_ascii_digit() || (i == 17 && c == 'X'))
            && id
                .chars()
                .enumerate()
                .map(|(i, c)| c.to_digit(10).unwrap_or(10) * (1 << (17 - i)) % 11)
                .sum::<u32>()
                % 11
                == 1
    }

    #[test]
    fn id_numbers_count_per_county_and_birth_date_and_lend_the_next_day_when_full() {
        let mut ids = IdNumbers::default();
        let birth = NaiveDate::from_ymd_opt(1980, 2, 28).unwrap();
        let issued: Vec<String> = (0..1_001).map(|_| ids.issue(522701, birth)).collect();
        assert!(issued[0].starts_with("52270119800228001"), "{}", issued[0]);
        assert!(
            issued[998].starts_with("52270119800228999"),
            "{}",
            issued[998]
        );
        // The 1,000th and 1,001st born that day take the next day's first numbers.
        assert!(
            issued[999].starts_with("52270119800229001"),
            "{}",
            issued[999]
        );
        assert!(
            issued[1000].starts_with("52270119800229002"),
            "{}",
            issued[1000]
        );
        assert!(
            issued.iter().all(|id| id_number_is_valid(id)),
            "a bad check digit"
        );
        let unique: std::collections::BTreeSet<&String> = issued.iter().collect();
        assert_eq!(unique.len(), issued.len());
        // Another county counts on its own.
        assert!(ids.issue(522702, birth).starts_with("52270219800228001"));
        // The check is a real one: any other last character fails it.
        let body = &issued[0][..17];
        let others = "0123456789X".chars().filter(|c| !issued[0].ends_with(*c));
        assert!(
            others
                .map(|c| format!("{body}{c}"))
                .all(|id| !id_number_is_valid(&id))
        );
    }

    #[test]
    fn no_two_persons_of_a_world_share_an_id_number() {
        // 30,000 households, about 2,400 persons per county: the sequence taken from the
        // household's index modulo 1,000, as before, gave some of them the same number.
        let mut o = opts(3);
        o.households = 30_000;
        let w = generate(&o).unwrap();
        let roster = w.roster.values(0..w.roster.len()).unwrap();
        let ids: Vec<&str> = roster
            .iter()
            .flat_map(|r| r["members"].as_array().into_iter().flatten())
            .filter_map(|m| m["id_number"].as_str())
            .collect();
        assert!(ids.len() > 90_000, "{} persons", ids.len());
        assert!(ids.iter().all(|id| id_number_is_valid(id)));
        let unique: std::collections::HashSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn plants_every_kind_and_covers_all_counties() {
        let w = generate(&opts(1)).unwrap();
        for rule in ["wage_income_drop", "medical_burden", "water_outage_long"] {
            assert!(w.cases.iter().any(|c| c.rule == rule), "no case for {rule}");
            assert!(
                w.decoys.iter().any(|c| c.rule == rule),
                "no decoy for {rule}"
            );
        }
        let roster = w.roster.values(0..w.roster.len()).unwrap();
        let counties: std::collections::BTreeSet<&str> = roster
            .iter()
            .filter_map(|r| r["county_code"].as_str())
            .collect();
        assert_eq!(counties.len(), 45);
        let id = roster[0]["members"][0]["id_number"].as_str().unwrap();
        assert_eq!(id.len(), 18);
        assert_eq!(w.wages.get(w.wages.len() - 1).unwrap()["month"], "2026-10");
    }
}
