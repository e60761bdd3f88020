//! The domain model: identifiers, indicators, observations and risk categories.
//!
//! Everything here is plain data. Identifiers are validated when they are built, so the rest
//! of guardline can rely on a `CountyCode` having six digits and a `VillageCode` twelve whose
//! first six are its county. A person is only ever known by a [`PersonKey`], the keyed hash of
//! the ID number: the raw number never leaves the decoder.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate};
use serde::{Deserialize, Serialize};

/// Every time in guardline is in China Standard Time (UTC+8, no daylight saving).
pub fn china_offset() -> FixedOffset {
    // Invariant: 8 hours is within the ±24 h range FixedOffset accepts.
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// The current wall-clock time in China Standard Time.
pub fn now() -> DateTime<FixedOffset> {
    chrono::Utc::now().with_timezone(&china_offset())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("county code {0:?} is not 6 digits (GB/T 2260)")]
    County(String),
    #[error("village code {0:?} is not 12 digits (statistical division code)")]
    Village(String),
    #[error("household id {0:?} is empty or longer than 64 characters")]
    Household(String),
    #[error("month {0:?} is not a month (expected YYYY-MM or YYYYMM)")]
    Month(String),
}

/// A county-level division code (GB/T 2260), e.g. 632522 for 同德县.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CountyCode(u32);

impl CountyCode {
    pub fn new(code: u32) -> Result<Self, IdError> {
        if (100_000..1_000_000).contains(&code) {
            Ok(Self(code))
        } else {
            Err(IdError::County(code.to_string()))
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
    /// The prefecture (市州) code: the first four digits followed by 00.
    pub fn prefecture(self) -> u32 {
        self.0 / 100 * 100
    }
}

impl FromStr for CountyCode {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let s = s.trim();
        if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::County(s.to_string()));
        }
        s.parse::<u32>()
            .map_err(|_| IdError::County(s.to_string()))
            .and_then(Self::new)
    }
}

impl fmt::Display for CountyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

/// A village (行政村) statistical division code: 12 digits, the first six are the county.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VillageCode(u64);

impl VillageCode {
    pub fn county(self) -> CountyCode {
        // Invariant: a VillageCode is 12 digits, so its first six form a valid county code.
        CountyCode((self.0 / 1_000_000) as u32)
    }
    pub fn get(self) -> u64 {
        self.0
    }
    pub fn new(code: u64) -> Result<Self, IdError> {
        if (100_000_000_000..1_000_000_000_000).contains(&code) {
            Ok(Self(code))
        } else {
            Err(IdError::Village(code.to_string()))
        }
    }
}

impl FromStr for VillageCode {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let s = s.trim();
        if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::Village(s.to_string()));
        }
        s.parse::<u64>()
            .map_err(|_| IdError::Village(s.to_string()))
            .and_then(Self::new)
    }
}

impl fmt::Display for VillageCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012}", self.0)
    }
}

/// A household number (户编号) as the roster gives it. Shared, not copied: the household
/// index, the person index and every batch hold the same text (serialised as a string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HouseholdId(std::sync::Arc<str>);

impl HouseholdId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the shared text lives: equal for clones of one id, different for two ids
    /// read separately (whose texts may still be equal).
    pub fn address(&self) -> usize {
        std::sync::Arc::as_ptr(&self.0).cast::<u8>() as usize
    }
}

impl FromStr for HouseholdId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let s = s.trim();
        if s.is_empty() || s.len() > 64 || s.contains('/') {
            return Err(IdError::Household(s.to_string()));
        }
        Ok(Self(s.into()))
    }
}

impl fmt::Display for HouseholdId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The keyed hash of a person's ID number (see `pseudonym`). Never the number itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PersonKey(pub [u8; 16]);

impl PersonKey {
    /// The form a person key takes inside quarantined records: `pk:` and 32 hex digits.
    pub fn token(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("pk:{hex}")
    }

    /// Reads a [`PersonKey::token`].
    pub fn from_token(s: &str) -> Option<Self> {
        let hex = s.trim().strip_prefix("pk:")?;
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for PersonKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A calendar month, counted from year 0 so that consecutive months differ by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Month(u32);

impl Month {
    /// December 9999, the last month [`Month::new`] accepts.
    pub const LAST: u32 = 9999 * 12 + 11;

    pub fn new(year: i32, month: u32) -> Option<Self> {
        if !(1..=12).contains(&month) || !(1900..=9999).contains(&year) {
            return None;
        }
        Some(Self(year as u32 * 12 + month - 1))
    }
    /// The month of a date; dates before 1900 or after 9999 (the years [`Month::new`]
    /// accepts) give its first or last month.
    pub fn of(date: impl Datelike) -> Self {
        match date.year() {
            y if y < 1900 => Self(1900 * 12),
            y if y > 9999 => Self(Self::LAST),
            y => Self(y as u32 * 12 + date.month0()),
        }
    }
    pub fn year(self) -> i32 {
        (self.0 / 12) as i32
    }
    pub fn month(self) -> u32 {
        self.0 % 12 + 1
    }
    /// The month `n` months earlier (saturating at year 0).
    pub fn minus(self, n: u32) -> Self {
        Self(self.0.saturating_sub(n))
    }
    /// The month `n` months later (saturating at December 9999).
    pub fn plus(self, n: u32) -> Self {
        Self(self.0.saturating_add(n).min(Self::LAST))
    }
    /// How many months lie from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Month) -> u32 {
        self.0.saturating_sub(earlier.0)
    }
    /// Months since year 0: consecutive months differ by one (for keys and arithmetic).
    pub fn ordinal(self) -> u32 {
        self.0
    }
    /// The month of an [`ordinal`](Self::ordinal), as stored: not checked, so a damaged key
    /// may give a month past 9999 (which [`Month::first_day`] takes as December 9999).
    pub fn from_ordinal(n: u32) -> Self {
        Self(n)
    }
    /// The start of the month's first day in China Standard Time, as Unix time.
    pub fn start_time(self) -> i64 {
        self.first_day()
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp()
            - i64::from(china_offset().local_minus_utc())
    }

    pub fn first_day(self) -> NaiveDate {
        let m = Self(self.0.min(Self::LAST));
        // Years 0 to 9999 are all dates chrono knows; the fallback is never taken.
        NaiveDate::from_ymd_opt(m.year(), m.month(), 1).unwrap_or(NaiveDate::MAX)
    }
}

impl FromStr for Month {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let t = s.trim();
        let (y, m) = match t.len() {
            7 if t.as_bytes()[4] == b'-' => (&t[..4], &t[5..]),
            6 => (&t[..4], &t[4..]),
            _ => return Err(IdError::Month(s.to_string())),
        };
        match (y.parse::<i32>(), m.parse::<u32>()) {
            (Ok(y), Ok(m)) => Month::new(y, m).ok_or_else(|| IdError::Month(s.to_string())),
            _ => Err(IdError::Month(s.to_string())),
        }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year(), self.month())
    }
}

/// Household categories of the monitoring system (户类型).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HouseholdCategory {
    /// 脱贫户: lifted out of poverty, stable.
    Lifted,
    /// 脱贫不稳定户: lifted out of poverty but unstable (a monitored object).
    UnstableLifted,
    /// 边缘易致贫户: near-poor (a monitored object).
    NearPoor,
    /// 突发严重困难户: hit by a sudden severe shock (a monitored object).
    SuddenHardship,
    /// 一般农户: never registered as poor.
    Ordinary,
}

impl HouseholdCategory {
    pub const ALL: [HouseholdCategory; 5] = [
        Self::Lifted,
        Self::UnstableLifted,
        Self::NearPoor,
        Self::SuddenHardship,
        Self::Ordinary,
    ];
    pub fn name_zh(self) -> &'static str {
        match self {
            Self::Lifted => "脱贫户",
            Self::UnstableLifted => "脱贫不稳定户",
            Self::NearPoor => "边缘易致贫户",
            Self::SuddenHardship => "突发严重困难户",
            Self::Ordinary => "一般农户",
        }
    }
    /// The English slug used in metrics labels and config.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Lifted => "lifted",
            Self::UnstableLifted => "unstable_lifted",
            Self::NearPoor => "near_poor",
            Self::SuddenHardship => "sudden_hardship",
            Self::Ordinary => "ordinary",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for HouseholdCategory {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|c| c.name_zh() == s || c.slug() == s)
            .ok_or_else(|| {
                format!(
                    "unknown household category {s:?} (expected one of {})",
                    Self::ALL.map(|c| c.name_zh()).join(", ")
                )
            })
    }
}

/// The national list of risk categories (风险类型).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RiskCategory {
    Illness,
    Disability,
    Schooling,
    NaturalDisaster,
    Accident,
    IndustryFailure,
    UnstableEmployment,
    LackOfLabour,
    Housing,
    DrinkingWater,
    Other,
}

impl RiskCategory {
    pub const ALL: [RiskCategory; 11] = [
        Self::Illness,
        Self::Disability,
        Self::Schooling,
        Self::NaturalDisaster,
        Self::Accident,
        Self::IndustryFailure,
        Self::UnstableEmployment,
        Self::LackOfLabour,
        Self::Housing,
        Self::DrinkingWater,
        Self::Other,
    ];
    pub fn name_zh(self) -> &'static str {
        match self {
            Self::Illness => "因病",
            Self::Disability => "因残",
            Self::Schooling => "因学",
            Self::NaturalDisaster => "因自然灾害",
            Self::Accident => "因意外事故",
            Self::IndustryFailure => "因产业项目失败",
            Self::UnstableEmployment => "因务工就业不稳",
            Self::LackOfLabour => "缺劳动力",
            Self::Housing => "因安全住房",
            Self::DrinkingWater => "因安全饮水",
            Self::Other => "其他",
        }
    }
    pub fn slug(self) -> &'static str {
        match self {
            Self::Illness => "illness",
            Self::Disability => "disability",
            Self::Schooling => "schooling",
            Self::NaturalDisaster => "natural_disaster",
            Self::Accident => "accident",
            Self::IndustryFailure => "industry_failure",
            Self::UnstableEmployment => "unstable_employment",
            Self::LackOfLabour => "lack_of_labour",
            Self::Housing => "housing",
            Self::DrinkingWater => "drinking_water",
            Self::Other => "other",
        }
    }
}

impl FromStr for RiskCategory {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|c| c.name_zh() == s || c.slug() == s)
            .ok_or_else(|| {
                format!(
                    "unknown risk category {s:?} (expected one of {})",
                    Self::ALL.map(|c| c.name_zh()).join(", ")
                )
            })
    }
}

/// A set of risk categories, one bit per category: what a county rule watches, and what a
/// county's recorded at-risk numbers count. Stored (county values), so a category's bit never
/// changes: a new category takes the next free bit, and [`RiskSet::ALL`] has every bit set,
/// so that it still means every category then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RiskSet(u16);

impl RiskSet {
    pub const EMPTY: RiskSet = RiskSet(0);
    /// Every category, including any added later.
    pub const ALL: RiskSet = RiskSet(u16::MAX);

    pub fn of(categories: impl IntoIterator<Item = RiskCategory>) -> Self {
        categories
            .into_iter()
            .fold(Self::EMPTY, |s, c| s.with(c, true))
    }

    /// The category's bit, fixed: stored sets depend on it.
    fn bit(c: RiskCategory) -> u16 {
        1 << match c {
            RiskCategory::Illness => 0,
            RiskCategory::Disability => 1,
            RiskCategory::Schooling => 2,
            RiskCategory::NaturalDisaster => 3,
            RiskCategory::Accident => 4,
            RiskCategory::IndustryFailure => 5,
            RiskCategory::UnstableEmployment => 6,
            RiskCategory::LackOfLabour => 7,
            RiskCategory::Housing => 8,
            RiskCategory::DrinkingWater => 9,
            RiskCategory::Other => 10,
        }
    }

    /// This set with `c` added (`true`) or taken out.
    #[must_use]
    pub fn with(self, c: RiskCategory, present: bool) -> Self {
        if present {
            Self(self.0 | Self::bit(c))
        } else {
            Self(self.0 & !Self::bit(c))
        }
    }

    pub fn contains(self, c: RiskCategory) -> bool {
        self.0 & Self::bit(c) != 0
    }

    pub fn intersects(self, o: RiskSet) -> bool {
        self.0 & o.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A monthly numeric indicator kept per household in monthly buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Indicator {
    /// 工资性收入: wages of all members in the month (人社).
    WageIncome,
    /// 个人自付: out-of-pocket medical cost settled in the month (医保).
    MedicalOutOfPocket,
    /// 医疗总费用: total medical cost settled in the month (医保).
    MedicalTotal,
}

impl Indicator {
    pub const ALL: [Indicator; 3] = [
        Self::WageIncome,
        Self::MedicalOutOfPocket,
        Self::MedicalTotal,
    ];
    pub const COUNT: usize = Self::ALL.len();
    pub fn name(self) -> &'static str {
        match self {
            Self::WageIncome => "wage_income",
            Self::MedicalOutOfPocket => "medical_oop",
            Self::MedicalTotal => "medical_total",
        }
    }
    pub fn name_zh(self) -> &'static str {
        match self {
            Self::WageIncome => "工资性收入",
            Self::MedicalOutOfPocket => "医疗个人自付",
            Self::MedicalTotal => "医疗总费用",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for Indicator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|i| i.name() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown indicator {s:?} (expected one of {})",
                    Self::ALL.map(|i| i.name()).join(", ")
                )
            })
    }
}

/// Amounts are kept in fen (1/100 yuan) as integers, so sums are exact.
pub type Fen = i64;

pub fn fen_to_yuan(fen: Fen) -> f64 {
    fen as f64 / 100.0
}

/// Formats an amount as whole yuan with thousands separators: 3,010.
pub fn format_yuan(fen: Fen) -> String {
    let yuan = (fen as f64 / 100.0).round() as i64;
    let digits = yuan.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if yuan < 0 { format!("-{out}") } else { out }
}

/// Who an observation belongs to, as the feed gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subject {
    Person(PersonKey),
    Household(HouseholdId),
    Village(VillageCode),
}

/// Events reported by departments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    /// 民政: household admitted to 低保 (minimum living allowance).
    SubsistenceGranted,
    /// 民政: 低保 cancelled.
    SubsistenceCancelled,
    /// 民政: household admitted to 特困 support.
    ExtremePovertyGranted,
    /// 民政: 特困 support cancelled.
    ExtremePovertyCancelled,
    /// 民政: 临时救助 temporary assistance paid.
    TemporaryAssistance,
    /// 水利: drinking-water quality failing GB 5749-2022 at a village.
    WaterQualityExceedance,
    /// 教育: suspected dropout of a pupil (控辍保学).
    SuspectedDropout,
    /// 住建: house graded C or D (unsafe).
    HouseUnsafe,
    /// 住建: house graded A or B (safe).
    HouseSafe,
    /// 残联: new disability certificate.
    DisabilityCertificate,
    /// 应急: disaster loss of a household or village.
    DisasterLoss,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        Self::SubsistenceGranted,
        Self::SubsistenceCancelled,
        Self::ExtremePovertyGranted,
        Self::ExtremePovertyCancelled,
        Self::TemporaryAssistance,
        Self::WaterQualityExceedance,
        Self::SuspectedDropout,
        Self::HouseUnsafe,
        Self::HouseSafe,
        Self::DisabilityCertificate,
        Self::DisasterLoss,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Self::SubsistenceGranted => "subsistence_granted",
            Self::SubsistenceCancelled => "subsistence_cancelled",
            Self::ExtremePovertyGranted => "extreme_poverty_granted",
            Self::ExtremePovertyCancelled => "extreme_poverty_cancelled",
            Self::TemporaryAssistance => "temporary_assistance",
            Self::WaterQualityExceedance => "water_quality_exceedance",
            Self::SuspectedDropout => "suspected_dropout",
            Self::HouseUnsafe => "house_unsafe",
            Self::HouseSafe => "house_safe",
            Self::DisabilityCertificate => "disability_certificate",
            Self::DisasterLoss => "disaster_loss",
        }
    }
    pub fn name_zh(self) -> &'static str {
        match self {
            Self::SubsistenceGranted => "纳入低保",
            Self::SubsistenceCancelled => "取消低保",
            Self::ExtremePovertyGranted => "纳入特困供养",
            Self::ExtremePovertyCancelled => "取消特困供养",
            Self::TemporaryAssistance => "临时救助",
            Self::WaterQualityExceedance => "饮水水质超标",
            Self::SuspectedDropout => "疑似辍学",
            Self::HouseUnsafe => "住房鉴定为C/D级",
            Self::HouseSafe => "住房鉴定为A/B级",
            Self::DisabilityCertificate => "新办残疾证",
            Self::DisasterLoss => "灾害损失",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown event kind {s:?} (expected one of {})",
                    Self::ALL.map(|k| k.name()).join(", ")
                )
            })
    }
}

/// A household as the roster describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub household: HouseholdId,
    pub village: VillageCode,
    pub village_name: String,
    pub category: HouseholdCategory,
    /// Masked head-of-household name (张*), never the full name.
    pub head_masked: String,
    pub members: Vec<PersonKey>,
    /// Annual per-capita net income (人均纯收入) in fen.
    pub income_per_capita: Fen,
}

/// Kinds of interval kept per village.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IntervalKind {
    /// 停水: drinking-water supply interruption.
    WaterOutage,
}

impl IntervalKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::WaterOutage => "water_outage",
        }
    }
}

impl FromStr for IntervalKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "water_outage" => Ok(Self::WaterOutage),
            other => Err(format!(
                "unknown interval kind {other:?} (expected water_outage)"
            )),
        }
    }
}

/// One observation decoded and mapped from a feed record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Observation {
    /// A numeric sample for a month (wages, a medical claim's amounts).
    Sample {
        subject: Subject,
        month: Month,
        values: Vec<(Indicator, Fen)>,
    },
    /// An interval at a village such as a water outage; `end` is `None` while it lasts.
    /// A later record with the same id replaces the earlier one.
    Interval {
        village: VillageCode,
        id: String,
        kind: IntervalKind,
        start: DateTime<FixedOffset>,
        end: Option<DateTime<FixedOffset>>,
    },
    /// The roster's description of a household (replaces the previous one).
    Roster(RosterEntry),
    /// An event of a person, household or village on a day, with an optional amount.
    Event {
        subject: Subject,
        kind: EventKind,
        time: DateTime<FixedOffset>,
        amount: Option<Fen>,
    },
}

impl Observation {
    /// When the observation holds, as Unix time: the first day of a sample's month, the
    /// end (or start) of an interval, an event's time; `None` for the roster, which
    /// describes the present.
    pub fn time(&self) -> Option<i64> {
        match self {
            Self::Sample { month, .. } => Some(month.start_time()),
            Self::Interval { start, end, .. } => Some(end.unwrap_or(*start).timestamp()),
            Self::Roster(_) => None,
            Self::Event { time, .. } => Some(time.timestamp()),
        }
    }
}

/// An observation with the id of the record it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub observation: Observation,
}

/// Masks a name for operators: the surname stays, every other character becomes `*`.
pub fn mask_name(name: &str) -> String {
    let mut chars = name.trim().chars();
    match chars.next() {
        None => String::new(),
        Some(first) => {
            let rest = chars.count().max(1);
            format!("{first}{}", "*".repeat(rest))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_validate_and_join() {
        let v: VillageCode = "632522100201".parse().unwrap();
        assert_eq!(v.county().to_string(), "632522");
        assert_eq!(v.county().prefecture(), 632500);
        assert!("63252210020".parse::<VillageCode>().is_err());
        assert!("63252a".parse::<CountyCode>().is_err());
        assert!("032522".parse::<CountyCode>().is_err());
    }

    #[test]
    fn months_count_and_print() {
        let m: Month = "2026-09".parse().unwrap();
        assert_eq!(m.to_string(), "2026-09");
        assert_eq!("202609".parse::<Month>().unwrap(), m);
        assert_eq!(m.minus(9).to_string(), "2025-12");
        assert_eq!(m.plus(4).to_string(), "2027-01");
        assert_eq!(m.since(m.minus(6)), 6);
        assert!("2026-13".parse::<Month>().is_err());
    }

    #[test]
    fn months_stay_within_the_years_new_accepts_and_first_day_never_panics() {
        let far = chrono::NaiveDate::from_ymd_opt(12_000, 5, 1).unwrap();
        assert_eq!(Month::of(far).to_string(), "9999-12");
        let early = chrono::NaiveDate::from_ymd_opt(1200, 5, 1).unwrap();
        assert_eq!(Month::of(early).to_string(), "1900-01");
        let m: Month = "2026-09".parse().unwrap();
        assert_eq!(m.plus(u32::MAX).to_string(), "9999-12");
        // A month read from damaged bytes.
        let damaged = Month::from_ordinal(u32::MAX);
        assert_eq!(damaged.first_day().to_string(), "9999-12-01");
        assert_eq!(Month::from_ordinal(0).first_day().to_string(), "0000-01-01");
    }

    #[test]
    fn a_months_start_time_is_midnight_of_its_first_day_in_china() {
        let m: Month = "2026-09".parse().unwrap();
        // 2026-09-01T00:00:00+08:00 is 2026-08-31T16:00:00Z.
        assert_eq!(m.start_time(), 1_788_192_000);
        for m in [Month::from_ordinal(0), m, Month::from_ordinal(u32::MAX)] {
            let midnight = m
                .first_day()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_local_timezone(china_offset())
                .unwrap();
            assert_eq!(m.start_time(), midnight.timestamp(), "{m}");
        }
    }

    #[test]
    fn names_are_masked() {
        assert_eq!(mask_name("张三"), "张*");
        assert_eq!(mask_name("欧阳娜娜"), "欧***");
        assert_eq!(mask_name("李"), "李*");
        assert_eq!(mask_name(""), "");
    }

    #[test]
    fn yuan_format() {
        assert_eq!(format_yuan(301_000), "3,010");
        assert_eq!(format_yuan(90_000), "900");
        assert_eq!(format_yuan(123_456_789), "1,234,568");
        assert_eq!(format_yuan(-250_000), "-2,500");
    }

    #[test]
    fn categories_parse_in_both_languages() {
        assert_eq!(
            "边缘易致贫户".parse::<HouseholdCategory>().unwrap(),
            HouseholdCategory::NearPoor
        );
        assert_eq!(
            "因务工就业不稳".parse::<RiskCategory>().unwrap(),
            RiskCategory::UnstableEmployment
        );
        assert!("穷".parse::<RiskCategory>().is_err());
    }

    /// County values store sets of risk categories as bits: each category's bit is pinned.
    #[test]
    fn risk_set_bits_are_pinned() {
        let bits: Vec<u16> = RiskCategory::ALL
            .iter()
            .map(|c| postcard_u16(RiskSet::of([*c])))
            .collect();
        assert_eq!(
            bits,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
            "a category's bit changed: stored county values would mean other categories"
        );
        assert_eq!(postcard_u16(RiskSet::ALL), u16::MAX);
        for c in RiskCategory::ALL {
            assert!(RiskSet::ALL.contains(c));
            assert!(!RiskSet::EMPTY.contains(c));
            assert_eq!(RiskSet::of([c]).with(c, false), RiskSet::EMPTY);
        }
        let water = RiskSet::of([RiskCategory::DrinkingWater]);
        assert!(water.intersects(RiskSet::of([
            RiskCategory::DrinkingWater,
            RiskCategory::Other
        ])));
        assert!(!water.intersects(RiskSet::of([RiskCategory::Other])));
    }

    /// The stored number of a set.
    fn postcard_u16(s: RiskSet) -> u16 {
        let bytes = postcard::to_allocvec(&s).unwrap();
        postcard::from_bytes(&bytes).unwrap()
    }
}
